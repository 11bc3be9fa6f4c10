"""Adapters: the only code that touches transformers internals.

``base.py`` holds the shared mechanism (:func:`prune`, an ``AttentionInterface`` wrapper and decoder-layer
pre-hooks inside a context manager); one file per family holds only what differs (where the image tokens are,
their grids, how to build inputs).
"""

from __future__ import annotations

from d2pruner.adapters.base import (
    FamilyAdapter,
    Prefix,
    ProcessorParts,
    PruneInputs,
    PruneState,
    VisualTokens,
    capture,
    prune,
)
from d2pruner.adapters.internvl import InternVLAdapter
from d2pruner.adapters.llava import LlavaAdapter
from d2pruner.adapters.llava_next import LlavaNextAdapter
from d2pruner.adapters.qwen2_5_vl import Qwen2_5_VLAdapter

#: family name → adapter (one instance each; adapters are stateless)
FAMILIES: dict[str, FamilyAdapter] = {
    a.name: a for a in (LlavaAdapter(), LlavaNextAdapter(), Qwen2_5_VLAdapter(), InternVLAdapter())
}


def adapter_for_model_type(model_type: str) -> FamilyAdapter:
    """The adapter for a config ``model_type``; a clear error names the supported ones otherwise."""
    for adapter in FAMILIES.values():
        if model_type in adapter.model_types:
            return adapter
    supported = ", ".join(f"{a.model_class} ({'/'.join(a.model_types)})" for a in FAMILIES.values())
    raise ValueError(f"unsupported model type {model_type!r}; supported families: {supported}")


def adapter_for(model) -> FamilyAdapter:
    """The adapter for a loaded model (by its config's ``model_type``)."""
    return adapter_for_model_type(getattr(model.config, "model_type", None))


__all__ = [
    "FAMILIES",
    "FamilyAdapter",
    "Prefix",
    "ProcessorParts",
    "PruneInputs",
    "PruneState",
    "VisualTokens",
    "adapter_for",
    "adapter_for_model_type",
    "capture",
    "prune",
]
