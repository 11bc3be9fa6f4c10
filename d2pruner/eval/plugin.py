"""The ``lmms_eval.models`` entry point (see ``pyproject.toml``): registers the model ``d2pruner``.

Kept apart from :mod:`d2pruner.eval.lmms` so that lmms-eval, which loads every entry point when it starts,
imports the plugin class only when ``--model d2pruner`` is asked for.
"""

from __future__ import annotations

MODEL_NAME = "d2pruner"
CLASS_PATH = "d2pruner.eval.lmms.D2PrunerLMM"


def manifest():
    """lmms-eval's ``ModelManifest`` for the model ``d2pruner`` (the entry point's payload, called by lmms-eval)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)
