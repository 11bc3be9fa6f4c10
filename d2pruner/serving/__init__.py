"""What a hosted app needs beyond the analysis, unit-tested without Gradio:

* :mod:`~d2pruner.serving.host` — the model host: each request names its model; loaded on demand within a memory
  budget (LRU, idle models first out, never one in use), an allow-list, a tiny stand-in when a checkpoint cannot be
  loaded here (with the reason);
* :mod:`~d2pruner.serving.uploads` — only uploaded or bundled files are read (paths resolved, symlinks included),
  pixels bounded before a full decode;
* :mod:`~d2pruner.serving.requests` — raw request values → the package's arguments (the package's message wins);
* :mod:`~d2pruner.serving.limits` — per-request and per-process bounds (environment-configurable);
* :mod:`~d2pruner.serving.store` — bounded caches (analyses, photos) and a janitor for old files;
* :mod:`~d2pruner.serving.asgi` — an ASGI middleware bounding upload and request sizes;
* :mod:`~d2pruner.serving.catalog` — the offered models, from the family registry.

Importing it imports neither torch nor Gradio.
"""
