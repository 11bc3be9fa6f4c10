"""The language-model shape of a multimodal LLM: what prefill FLOPs and the KV cache depend on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelArch:
    """Language-model shape of a multimodal LLM, i.e. what prefill FLOPs and the KV cache depend on.

    Arguments:
        name: hub id (registry entries) or ``name_or_path`` / ``model_type`` of a loaded config.
        num_layers: decoder layers L.
        hidden_size: d.
        intermediate_size: FFN intermediate size m.
        num_heads: query heads H.
        num_kv_heads: key/value heads (H for multi-head attention, fewer under GQA).
        head_dim: per-head dimension.
        vocab_size: LM vocabulary (informational; the LM head is not counted).
        nominal_visual_tokens: visual tokens of one typical image, the default for ``efficiency_report``;
            None when unknown.
    """

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    nominal_visual_tokens: int | None = None

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                      "head_dim", "vocab_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelArch {self.name!r}: {field} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelArch {self.name!r}: num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.nominal_visual_tokens is not None and self.nominal_visual_tokens < 1:
            raise ValueError(f"ModelArch {self.name!r}: nominal_visual_tokens must be positive or None, "
                             f"got {self.nominal_visual_tokens!r}")
