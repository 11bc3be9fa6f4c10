"""Model families: one file each (everything that family knows), and the registry that maps ``model_type`` to them.

Adding a family is one file with a :class:`~d2pruner.families.base.Family` subclass, plus one line in
:data:`FAMILIES` below.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from d2pruner.architecture import ModelArch
from d2pruner.families.base import Checkpoint, Family, ProcessorParts
from d2pruner.families.internvl import InternVL
from d2pruner.families.llava import Llava
from d2pruner.families.llava_next import LlavaNext
from d2pruner.families.llava_onevision import LlavaOnevision
from d2pruner.families.qwen2_5_vl import Qwen2_5_VL
from d2pruner.families.qwen3_vl import Qwen3VL
from d2pruner.families.tiny import TinyModel

#: family name → family (one stateless instance each), in the order the app lists them
FAMILIES: Mapping[str, Family] = MappingProxyType(
    {f.name: f for f in (Llava(), LlavaNext(), Qwen2_5_VL(), InternVL(), Qwen3VL(), LlavaOnevision())}
)
#: the tiny random models, one per family
TINY_NAMES: tuple[str, ...] = tuple(f.tiny_name for f in FAMILIES.values())
#: hub id → language-model architecture of every supported checkpoint (the efficiency arithmetic)
ARCHITECTURES: Mapping[str, ModelArch] = MappingProxyType(
    {c.hub_id: c.arch for f in FAMILIES.values() for c in f.checkpoints}
)

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "TINY_NAMES",
    "Checkpoint",
    "Family",
    "ProcessorParts",
    "TinyModel",
    "build_tiny",
    "checkpoint_of",
    "family_for",
    "family_for_model_type",
    "family_named",
    "get_arch",
    "guess_family",
]


def family_for_model_type(model_type: object) -> Family:
    """The family of a config ``model_type``; a clear error names the supported ones otherwise."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{f.model_class} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ValueError(f"unsupported model type {model_type!r}; supported families: {supported}")


def family_for(model) -> Family:
    """The family of a loaded model (by its config's ``model_type``)."""
    return family_for_model_type(getattr(model.config, "model_type", None))


def family_named(name: str) -> Family:
    """The family called ``name`` (``"llava"``, …) or whose tiny model is ``name`` (``"tiny-llava"``, …)."""
    for family in FAMILIES.values():
        if name in (family.name, family.tiny_name):
            return family
    raise ValueError(f"unknown family {name!r}; expected one of {list(FAMILIES)} or {list(TINY_NAMES)}")


def checkpoint_of(hub_id: str) -> Checkpoint | None:
    """The registered checkpoint of a hub id (case-insensitive), or None."""
    for family in FAMILIES.values():
        found = family.checkpoint(hub_id)
        if found is not None:
            return found
    return None


def get_arch(name: str) -> ModelArch:
    """The language-model architecture of a supported hub id (exact, or case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    found = checkpoint_of(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return found.arch


def guess_family(name: str) -> Family:
    """The family a hub id most likely belongs to, from its registered checkpoint or the hints in its name
    (for a stand-in when the checkpoint's config cannot be read); LLaVA-1.5 when nothing matches."""
    for family in FAMILIES.values():
        if family.checkpoint(name) is not None or name in (family.name, family.tiny_name):
            return family
    low = name.lower()
    hinted = [(len(h), f) for f in FAMILIES.values() for h in f.name_hints if h in low]
    return max(hinted, key=lambda item: item[0])[1] if hinted else FAMILIES["llava"]


def build_tiny(name: str, *, attn_implementation: str = "sdpa") -> TinyModel:
    """Build a tiny random model of a real class by name (see :data:`TINY_NAMES`).

    Arguments:
        name: ``tiny-llava``, ``tiny-llava-next``, ``tiny-qwen2.5-vl``, ``tiny-internvl``, ….
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.

    Returns:
        A :class:`TinyModel`; the weights are identical on every call (seed 0).
    """
    family = next((f for f in FAMILIES.values() if f.tiny_name == name), None)
    if family is None:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_NAMES)}")
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
    model, processor = family.tiny_model(attn_implementation)
    return TinyModel(name=name, model=model, processor=processor)
