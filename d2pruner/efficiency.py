"""Prefill FLOPs and KV-cache bytes of a multimodal LLM's language model, unpruned and pruned.

Pruning model: the prompt holds ``V`` visual and ``T`` text tokens. Decoder layers ``< K`` process all
``V + T`` tokens; from layer ``K`` on only ``kept`` visual tokens remain, so layers ``≥ K`` process
``kept + T`` tokens (FastV, Chen et al. 2024, §4; D²Pruner prunes the same way). Only the language
model's decoder layers are counted: the vision tower, the projector, embeddings, norms, RoPE, softmax and
the LM head are left out, as in FastV and the D²Pruner paper.

Two counting conventions (``convention=``):

``"paper"`` (default) — the convention of the D²Pruner paper's Table 4, which follows FastV:

* FLOPs per layer = ``4·n·d² + 2·n²·d + 2·n·d·m`` (n tokens, d hidden size, m FFN intermediate size),
  FastV's formula verbatim. One multiply-accumulate counts as one FLOP; all four attention projections
  are counted as d×d (GQA is ignored) and the FFN as two d×m matrices (LLaMA/Qwen's gate matrix is
  ignored). Counting the gate (3·n·d·m) would give 20.8–21.2 T (T = 0–51) for the unpruned
  LLaVA-NeXT-7B, not the paper's 16.9 T; GQA changes nothing for that (MHA) model.
* KV cache = ``2 · L · (kept + T) · kv_heads · head_dim · bytes_per_value``: every layer is counted at
  the pruned length. This is what reproduces Table 4's reduction ratios; a cache that keeps the full
  length in the K layers below the pruning layer cannot reach the paper's 7.63× at 11.2 % kept
  (with K = 2 the ratio is at most 5.97×, at T = 0, and 5.49× at T = 51).

``"exact"`` — what the pruned model actually computes and stores (as this package's hooks prune it):

* FLOPs = 2 per multiply-accumulate; Q and O projections d×(H·head_dim), K and V projections
  d×(KV·head_dim) (GQA), attention scores and weighted sum over the dense n×n matrix
  (``2·2·n²·H·head_dim``, no causal halving), gated FFN with three d×m matrices.
* KV cache: layers ``< K`` hold ``V + T`` tokens, layers ``≥ K`` hold ``kept + T``.

Reproducing Table 4 (LLaVA-NeXT-7B, V = 2880, K = 2, kept = round(33.4 % · 2880) = 962 and
round(11.2 % · 2880) = 323, MB = 10⁶ bytes, fp16): the paper does not state its text-token count, and no
single count matches all its numbers exactly. The unpruned FLOPs (16.9 T) imply T ≈ 36 (28–42 within
rounding), while the unpruned KV cache (1512 MB) implies T ≈ 4 and the KV reduction ratios (2.87×,
7.63×) imply T ≈ 61. With ``T = 51`` (the value minimising the worst relative error) every one of the
ten numbers is within 2.8 %:

=========================  ==============  ================  ================
LLaVA-NeXT-7B, T = 51      100 % (2880)    33.4 % (962)      11.2 % (323)
=========================  ==============  ================  ================
FLOPs, paper               16.9 T          6.0 T (2.82×)     2.8 T (6.10×)
FLOPs, this module         17.00 T         6.09 T (2.79×)    2.86 T (5.94×)
KV cache, paper            1512 MB         526 MB (2.87×)    198 MB (7.63×)
KV cache, this module      1536.7 MB       531.1 MB (2.89×)  196.1 MB (7.84×)
=========================  ==============  ================  ================

With T = 33 the FLOPs row matches to the printed digit (16.88 / 5.99 / 2.76 T, 2.82× / 6.11×) but the KV
ratio at 11.2 % becomes 8.2× (7 % high).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

from d2pruner.architecture import ModelArch
from d2pruner.families import ARCHITECTURES, checkpoint_of, get_arch

__all__ = [
    "ARCHITECTURES",
    "Convention",
    "EfficiencyReport",
    "ModelArch",
    "arch_from_config",
    "efficiency_report",
    "get_arch",
    "kv_cache_bytes",
    "prefill_flops",
]

Convention = Literal["paper", "exact"]
_CONVENTIONS: tuple[str, ...] = ("paper", "exact")


def arch_from_config(config: Any, *, nominal_visual_tokens: int | None = None) -> ModelArch:
    """Build a ``ModelArch`` from a transformers config (composite or text-only), e.g. a loaded model's.

    Reads the text config (``config.get_text_config()``, else ``config.text_config``, else ``config``):
    ``num_hidden_layers``, ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads`` (default: the head count), ``head_dim`` (default: hidden / heads) and
    ``vocab_size``. Works for tiny random configs as well as real ones; transformers is not imported.

    Arguments:
        config: a ``PretrainedConfig`` (``LlavaConfig``, ``LlavaNextConfig``, ``Qwen2_5_VLConfig``,
            ``InternVLConfig``, or a text config such as ``LlamaConfig``).
        nominal_visual_tokens: overrides the default visual count. Otherwise the checkpoint table's count
            (``d2pruner/families``) is used when the config's ``name_or_path`` is a supported hub id, else None.

    Raises:
        ValueError: a required field is missing or not a positive int.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else getattr(
        config, "text_config", config)
    name = str(getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "")
               or getattr(config, "model_type", "") or type(config).__name__)

    def need(field: str) -> int:
        value = getattr(text, field, None)
        if value is None:
            raise ValueError(f"config {name!r} has no {field!r} in its text config")
        return value

    if nominal_visual_tokens is None:
        found = checkpoint_of(name)
        nominal_visual_tokens = found.arch.nominal_visual_tokens if found is not None else None
    heads = need("num_attention_heads")
    hidden = need("hidden_size")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return ModelArch(name, need("num_hidden_layers"), hidden, need("intermediate_size"), heads, kv_heads,
                     head_dim, need("vocab_size"), nominal_visual_tokens)


ArchLike = ModelArch | str | Any  # a ModelArch, a supported hub id, or a transformers config


def _resolve(arch: ArchLike) -> ModelArch:
    if isinstance(arch, ModelArch):
        return arch
    if isinstance(arch, str):
        return get_arch(arch)
    return arch_from_config(arch)


def _count(name: str, value: Any, minimum: int | None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if minimum is not None and count < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {count}")
    return count


def _schedule(arch: ModelArch, visual_tokens: int, text_tokens: int, layer: int | None,
              kept: int | None) -> tuple[int, int, int]:
    """Validate the inputs; return (full length, pruned length, number of layers at full length)."""
    visual = _count("visual_tokens", visual_tokens, 1)
    text = _count("text_tokens", text_tokens, 0)
    if layer is not None:
        layer = _count("layer", layer, None)
        if not 1 <= layer < arch.num_layers:
            raise ValueError(f"layer must be in [1, {arch.num_layers}) for {arch.name!r} "
                             f"({arch.num_layers} layers), got {layer}")
    if kept is None:
        return visual + text, visual + text, arch.num_layers
    kept = _count("kept", kept, 1)
    if kept > visual:
        raise ValueError(f"kept ({kept}) must not exceed visual_tokens ({visual})")
    if layer is None:
        raise ValueError("layer is required when kept is given (the first decoder layer that sees only the "
                         "kept tokens)")
    return visual + text, kept + text, layer


def _check_convention(convention: str) -> None:
    if convention not in _CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; known: {', '.join(_CONVENTIONS)}")


def _layer_flops(arch: ModelArch, n: int, convention: str) -> int:
    d, m = arch.hidden_size, arch.intermediate_size
    if convention == "paper":
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    q_dim, kv_dim = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    macs = n * d * (2 * q_dim + 2 * kv_dim) + 2 * n * n * q_dim + 3 * n * d * m
    return 2 * macs


def prefill_flops(arch: ArchLike, *, visual_tokens: int, text_tokens: int, layer: int | None = None,
                  kept: int | None = None, convention: Convention = "paper") -> int:
    """FLOPs of the language model's decoder layers for one prefill of the prompt.

    Layers ``< layer`` process ``visual_tokens + text_tokens`` tokens, layers ``≥ layer`` process
    ``kept + text_tokens``. ``"paper"``: per layer ``4·n·d² + 2·n²·d + 2·n·d·m`` (FastV's formula, one
    FLOP per multiply-accumulate, no GQA, no FFN gate). ``"exact"``: 2 FLOPs per multiply-accumulate with
    GQA projections, dense n×n attention and the gated (3-matrix) FFN. See the module docstring.

    Arguments:
        arch: a ``ModelArch``, a registered hub id, or a transformers config.
        visual_tokens: V ≥ 1, visual tokens of the unpruned prompt.
        text_tokens: T ≥ 0, all other prompt tokens (system prompt, template, question).
        layer: pruning layer K in [1, num_layers); required when ``kept`` is given.
        kept: visual tokens kept from layer K on, 1 ≤ kept ≤ V; None = unpruned.
        convention: ``"paper"`` or ``"exact"``.

    Returns:
        FLOPs as an int.

    Raises:
        ValueError: unknown architecture or convention, counts out of range, K outside [1, num_layers).
    """
    _check_convention(convention)
    spec = _resolve(arch)
    full, pruned, full_layers = _schedule(spec, visual_tokens, text_tokens, layer, kept)
    return (full_layers * _layer_flops(spec, full, convention)
            + (spec.num_layers - full_layers) * _layer_flops(spec, pruned, convention))


def kv_cache_bytes(arch: ArchLike, *, visual_tokens: int, text_tokens: int, layer: int | None = None,
                   kept: int | None = None, bytes_per_value: int = 2,
                   convention: Convention = "paper") -> int:
    """Bytes of the KV cache after prefilling the prompt:
    ``2 (K and V) · Σ_layers tokens · kv_heads · head_dim · bytes_per_value``.

    ``"paper"``: every layer holds ``kept + text_tokens`` tokens (the D²Pruner Table 4 convention).
    ``"exact"``: layers ``< layer`` hold ``visual_tokens + text_tokens``, layers ``≥ layer`` hold
    ``kept + text_tokens`` (what a pruned ``DynamicCache`` holds). Unpruned (``kept`` None), both agree.

    Arguments:
        arch, visual_tokens, text_tokens, layer, kept, convention: as in ``prefill_flops``.
        bytes_per_value: 2 for fp16/bf16 (default), 4 for fp32, 1 for 8-bit caches.

    Returns:
        Bytes as an int (the paper's MB are 10⁶ bytes).

    Raises:
        ValueError: as in ``prefill_flops``, or ``bytes_per_value`` < 1.
    """
    _check_convention(convention)
    spec = _resolve(arch)
    full, pruned, full_layers = _schedule(spec, visual_tokens, text_tokens, layer, kept)
    bytes_per_value = _count("bytes_per_value", bytes_per_value, 1)
    if convention == "paper":
        full_layers = 0 if kept is not None else spec.num_layers
    token_slots = full_layers * full + (spec.num_layers - full_layers) * pruned
    return 2 * token_slots * spec.num_kv_heads * spec.head_dim * bytes_per_value


@dataclass(frozen=True)
class EfficiencyReport:
    """Prefill FLOPs and KV-cache bytes of one pruning setting and of the unpruned model.

    Fields are in FLOPs and bytes; ``*_reduction`` is unpruned / pruned (≥ 1, "×" in the paper).
    """

    arch: str
    convention: str
    visual_tokens: int
    text_tokens: int
    layer: int | None
    kept: int
    flops: int
    flops_unpruned: int
    kv_bytes: int
    kv_bytes_unpruned: int

    @property
    def kept_fraction(self) -> float:
        """kept / visual_tokens."""
        return self.kept / self.visual_tokens

    @property
    def flops_reduction(self) -> float:
        """Unpruned FLOPs / pruned FLOPs."""
        return self.flops_unpruned / self.flops

    @property
    def kv_reduction(self) -> float:
        """Unpruned KV bytes / pruned KV bytes."""
        return self.kv_bytes_unpruned / self.kv_bytes

    @property
    def tflops(self) -> float:
        """Pruned FLOPs in units of 10¹²."""
        return self.flops / 1e12

    @property
    def kv_megabytes(self) -> float:
        """Pruned KV cache in MB of 10⁶ bytes (the paper's unit)."""
        return self.kv_bytes / 1e6


def efficiency_report(arch: ArchLike, *, text_tokens: int, visual_tokens: int | None = None,
                      layer: int | None = None, kept: int | None = None, bytes_per_value: int = 2,
                      convention: Convention = "paper") -> EfficiencyReport:
    """FLOPs and KV cache of the pruned and the unpruned model, and their ratios, for display.

    Arguments:
        arch: a ``ModelArch``, a registered hub id, or a transformers config.
        text_tokens: T ≥ 0.
        visual_tokens: V ≥ 1; default the architecture's ``nominal_visual_tokens``.
        layer, kept, bytes_per_value, convention: as in ``prefill_flops`` / ``kv_cache_bytes``;
            ``kept`` None reports the unpruned model (ratios 1).

    Raises:
        ValueError: as in ``prefill_flops``, or no ``visual_tokens`` and no nominal count.
    """
    spec = _resolve(arch)
    if visual_tokens is None:
        if spec.nominal_visual_tokens is None:
            raise ValueError(f"visual_tokens is required: {spec.name!r} has no nominal visual token count")
        visual_tokens = spec.nominal_visual_tokens
    common = {"visual_tokens": visual_tokens, "text_tokens": text_tokens, "convention": convention}
    flops = prefill_flops(spec, layer=layer, kept=kept, **common)
    kv = kv_cache_bytes(spec, layer=layer, kept=kept, bytes_per_value=bytes_per_value, **common)
    return EfficiencyReport(
        arch=spec.name,
        convention=convention,
        visual_tokens=visual_tokens,
        text_tokens=text_tokens,
        layer=layer,
        kept=visual_tokens if kept is None else kept,
        flops=flops,
        flops_unpruned=prefill_flops(spec, **common),
        kv_bytes=kv,
        kv_bytes_unpruned=kv_cache_bytes(spec, bytes_per_value=bytes_per_value, **common),
    )
