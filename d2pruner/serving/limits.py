"""The bounds a hosted app keeps per request and per process, in one place (each can be set by an environment
variable, e.g. on a Space). Gradio-free and torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


def _env_number(environ, name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or not str(raw).strip():
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"environment variable {name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """Per-request and per-process bounds.

    Attributes:
        upload_bytes: largest uploaded file.
        files_per_upload: files in one upload request.
        request_bytes: largest body of any other POST (an event's JSON: the prompt and the settings).
        image_pixels: largest image decoded at full size (pixels); JPEGs up to 64× that are decoded at 1/2, 1/4 or
            1/8 scale (JPEG draft mode) so that the decoded copy stays below it; anything larger is refused from its
            header, before a decode.
        queue_size: events waiting in the queue; beyond it a visitor is told "busy".
        concurrency: model jobs at once (one per GPU is right: they share it).
        render_concurrency: display-only jobs at once (re-rendering cached results).
        result_entries / result_bytes: the in-memory cache of analyses (count and estimated bytes).
        file_age_seconds: uploads and result files older than this are deleted (checked every
            ``cleanup_seconds``).
        sweep_ratios: keep ratios per sweep.
        sessions: visitor sessions whose state the server keeps (least recently used first out). Gradio keeps a
            copy of the page's configuration and last outputs per session — about 0.3 MB here — so this bounds
            memory; an evicted visitor's next step or layer view asks them to press Analyze again.
    """

    upload_bytes: int = 20 * 1024 * 1024
    files_per_upload: int = 2
    request_bytes: int = 256 * 1024
    image_pixels: int = 24_000_000
    queue_size: int = 128
    concurrency: int = 1
    render_concurrency: int = 4
    result_entries: int = 16
    result_bytes: int = 768 * 1024 * 1024
    file_age_seconds: int = 900
    cleanup_seconds: int = 120
    sweep_ratios: int = 8
    sessions: int = 500

    @property
    def jpeg_header_pixels(self) -> int:
        """Largest JPEG (by its header) still decoded, at 1/8 scale."""
        return 64 * self.image_pixels

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Limits:
        """Defaults, overridden by ``D2PRUNER_<FIELD>`` variables (e.g. ``D2PRUNER_QUEUE_SIZE=256``)."""
        environ = os.environ if environ is None else environ
        return cls(**{f.name: _env_number(environ, f"D2PRUNER_{f.name.upper()}", f.default) for f in fields(cls)})
