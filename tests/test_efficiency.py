"""Prefill FLOPs / KV-cache arithmetic: the D²Pruner paper's Table 4, invariants, configs, bad input."""

from __future__ import annotations

from itertools import pairwise
from types import SimpleNamespace

import pytest
from transformers import LlavaConfig, LlavaNextConfig, Qwen2_5_VLConfig

from d2pruner.efficiency import (
    ARCHITECTURES,
    EfficiencyReport,
    ModelArch,
    arch_from_config,
    efficiency_report,
    get_arch,
    kv_cache_bytes,
    prefill_flops,
)

NEXT_7B = "llava-hf/llava-v1.6-vicuna-7b-hf"
V, K, T = 2880, 2, 51  # Table 4 setting; T = 51 is the fitted text-token count (module docstring)
KEPT = {0.334: round(0.334 * V), 0.112: round(0.112 * V)}  # 962, 323
# Table 4 of the D²Pruner paper (LLaVA-NeXT-7B): (TFLOPs, FLOPs reduction, KV MB, KV reduction)
PAPER = {1.0: (16.9, 1.0, 1512.0, 1.0), 0.334: (6.0, 2.82, 526.0, 2.87), 0.112: (2.8, 6.10, 198.0, 7.63)}


def rel_err(value: float, reference: float) -> float:
    return abs(value / reference - 1)


def test_table4_unpruned() -> None:
    report = efficiency_report(NEXT_7B, text_tokens=T)
    assert report.visual_tokens == V  # nominal LLaVA-NeXT count
    tflops, _, kv_mb, _ = PAPER[1.0]
    assert rel_err(report.tflops, tflops) < 0.10
    assert rel_err(report.kv_megabytes, kv_mb) < 0.10
    assert report.flops_reduction == report.kv_reduction == 1.0


@pytest.mark.parametrize("fraction", [0.334, 0.112])
def test_table4_pruned(fraction: float) -> None:
    report = efficiency_report(NEXT_7B, text_tokens=T, visual_tokens=V, layer=K, kept=KEPT[fraction])
    tflops, flops_x, kv_mb, kv_x = PAPER[fraction]
    assert rel_err(report.tflops, tflops) < 0.10
    assert rel_err(report.flops_reduction, flops_x) < 0.10
    assert rel_err(report.kv_megabytes, kv_mb) < 0.10
    assert rel_err(report.kv_reduction, kv_x) < 0.10
    # the documented fit is much closer than 10 %: every figure within 3 %
    assert max(rel_err(report.tflops, tflops), rel_err(report.flops_reduction, flops_x),
               rel_err(report.kv_megabytes, kv_mb), rel_err(report.kv_reduction, kv_x)) < 0.03


def test_table4_docstring_figures() -> None:
    """The numbers printed in the module docstring's table."""
    got = [efficiency_report(NEXT_7B, text_tokens=T, layer=K, kept=k) for k in (None, 962, 323)]
    assert [round(r.tflops, 2) for r in got] == [17.00, 6.09, 2.86]
    assert [round(r.flops_reduction, 2) for r in got[1:]] == [2.79, 5.94]
    assert [round(r.kv_megabytes, 1) for r in got] == [1536.7, 531.1, 196.1]
    assert [round(r.kv_reduction, 2) for r in got[1:]] == [2.89, 7.84]


def test_paper_formula_by_hand() -> None:
    """FastV's 4nd² + 2n²d + 2ndm, K layers at N = V + T and L − K layers at n = kept + T."""
    d, m, layers = 4096, 11008, 32

    def layer_flops(n: int) -> int:
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    expected = K * layer_flops(V + T) + (layers - K) * layer_flops(962 + T)
    assert prefill_flops(NEXT_7B, visual_tokens=V, text_tokens=T, layer=K, kept=962) == expected
    # paper KV: every layer at the pruned length; 2 (K, V) · 32 layers · 32 heads · 128 · 2 bytes per token
    assert kv_cache_bytes(NEXT_7B, visual_tokens=V, text_tokens=T, layer=K, kept=962) == (
        2 * layers * (962 + T) * 32 * 128 * 2)


def test_exact_kv_keeps_full_cache_below_layer() -> None:
    per_token_layer = 2 * 32 * 128 * 2
    got = kv_cache_bytes(NEXT_7B, visual_tokens=V, text_tokens=T, layer=K, kept=323, convention="exact")
    assert got == per_token_layer * (K * (V + T) + (32 - K) * (323 + T))
    # below the pruning layer the cache is full, so "exact" holds more than the paper's count
    assert got > kv_cache_bytes(NEXT_7B, visual_tokens=V, text_tokens=T, layer=K, kept=323)


@pytest.mark.parametrize("convention", ["paper", "exact"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_keep_all_equals_unpruned(name: str, convention: str) -> None:
    visual = 576
    kwargs = {"visual_tokens": visual, "text_tokens": 40, "convention": convention}
    assert prefill_flops(name, layer=3, kept=visual, **kwargs) == prefill_flops(name, **kwargs)
    assert kv_cache_bytes(name, layer=3, kept=visual, **kwargs) == kv_cache_bytes(name, **kwargs)
    report = efficiency_report(name, layer=3, kept=visual, **kwargs)
    assert report.flops == report.flops_unpruned and report.kv_bytes == report.kv_bytes_unpruned
    assert report.flops_reduction == report.kv_reduction == report.kept_fraction == 1.0


@pytest.mark.parametrize("convention", ["paper", "exact"])
def test_monotonic_in_kept_and_layer(convention: str) -> None:
    kwargs = {"visual_tokens": V, "text_tokens": T, "convention": convention}
    kept_values = [1, 64, 320, 962, 2000, V]
    flops = [prefill_flops(NEXT_7B, layer=K, kept=k, **kwargs) for k in kept_values]
    kv = [kv_cache_bytes(NEXT_7B, layer=K, kept=k, **kwargs) for k in kept_values]
    assert all(a < b for a, b in pairwise(flops))
    assert all(a < b for a, b in pairwise(kv))
    # pruning later costs more FLOPs
    by_layer = [prefill_flops(NEXT_7B, layer=layer, kept=320, **kwargs) for layer in (1, 2, 8, 16, 31)]
    assert all(a < b for a, b in pairwise(by_layer))


def test_gqa_shrinks_kv_cache() -> None:
    kwargs = {"visual_tokens": V, "text_tokens": T}
    mistral = kv_cache_bytes("llava-hf/llava-v1.6-mistral-7b-hf", **kwargs)
    vicuna = kv_cache_bytes(NEXT_7B, **kwargs)
    assert mistral * 4 == vicuna  # 8 vs 32 KV heads, same layers and head_dim
    # the paper convention ignores GQA in FLOPs; "exact" counts the smaller K/V projections
    gqa = get_arch("llava-hf/llava-v1.6-mistral-7b-hf")
    mha = ModelArch("mistral-as-mha", 32, 4096, 14336, 32, 32, 128, 32064)
    assert prefill_flops(gqa, **kwargs) == prefill_flops(mha, **kwargs)
    saved = 2 * 32 * (V + T) * 4096 * 2 * (32 - 8) * 128  # 2 FLOPs · layers · n · d · (k+v) · fewer dims
    assert prefill_flops(mha, **kwargs, convention="exact") - prefill_flops(gqa, **kwargs,
                                                                             convention="exact") == saved


def test_tiny_llava_config_matches_hand_formula() -> None:
    config = LlavaConfig(text_config={
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100})
    arch = arch_from_config(config)
    assert (arch.num_layers, arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.num_kv_heads,
            arch.head_dim, arch.vocab_size, arch.nominal_visual_tokens) == (4, 64, 96, 4, 2, 16, 100, None)
    v, t, layer, kept = 64, 10, 2, 16
    d, m, layers, heads, kv_heads, head_dim = 64, 96, 4, 4, 2, 16

    def paper(n: int) -> int:
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    def exact(n: int) -> int:
        projections = n * d * heads * head_dim * 2 + n * d * kv_heads * head_dim * 2
        return 2 * (projections + 2 * n * n * heads * head_dim + 3 * n * d * m)

    kwargs = {"visual_tokens": v, "text_tokens": t, "layer": layer, "kept": kept}
    for convention, per_layer in (("paper", paper), ("exact", exact)):
        expected = layer * per_layer(v + t) + (layers - layer) * per_layer(kept + t)
        assert prefill_flops(config, **kwargs, convention=convention) == expected
        assert prefill_flops(arch, **kwargs, convention=convention) == expected
    per_token_layer = 2 * kv_heads * head_dim * 4
    assert kv_cache_bytes(config, **kwargs, bytes_per_value=4) == per_token_layer * layers * (kept + t)
    assert kv_cache_bytes(config, **kwargs, bytes_per_value=4, convention="exact") == per_token_layer * (
        layer * (v + t) + (layers - layer) * (kept + t))


def test_qwen_config_defaults_head_dim_and_reads_text_config() -> None:
    config = Qwen2_5_VLConfig(text_config={
        "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 6,
        "num_key_value_heads": 3, "vocab_size": 50})
    arch = arch_from_config(config)
    assert (arch.num_layers, arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.num_kv_heads,
            arch.head_dim) == (3, 48, 80, 6, 3, 8)


def test_explicit_head_dim_is_used() -> None:
    """head_dim · heads need not equal hidden_size (e.g. Gemma-style configs): the config's value wins."""
    config = LlavaConfig(text_config={
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100})
    arch = arch_from_config(config)
    assert arch.head_dim == 32
    assert kv_cache_bytes(arch, visual_tokens=8, text_tokens=2) == 2 * 2 * 10 * 1 * 32 * 2
    n, d, q_dim, kv_dim = 10, 64, 4 * 32, 32
    per_layer = 2 * (n * d * (2 * q_dim + 2 * kv_dim) + 2 * n * n * q_dim + 3 * n * d * 96)
    assert prefill_flops(arch, visual_tokens=8, text_tokens=2, convention="exact") == 2 * per_layer


def test_real_config_shape_matches_registry() -> None:
    """A LLaVA-NeXT config built with Vicuna-7B's shape and the hub id resolves to the registry entry."""
    config = LlavaNextConfig(text_config={
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064})
    config._name_or_path = NEXT_7B
    assert arch_from_config(config) == get_arch(NEXT_7B)


def test_registry_shapes() -> None:
    expected = {
        "llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf",
        "llava-hf/llava-v1.6-mistral-7b-hf", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
        "OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-2B-hf", "OpenGVLab/InternVL3-8B-hf"}
    assert expected <= set(ARCHITECTURES)
    for name, arch in ARCHITECTURES.items():
        assert arch.name == name
        if name != "Qwen/Qwen3-VL-4B-Instruct":  # its attention projects 2560 → 32 heads × 128
            assert arch.num_heads * arch.head_dim == arch.hidden_size
    assert get_arch(NEXT_7B).nominal_visual_tokens == 2880
    assert get_arch("llava-hf/llava-1.5-7b-hf").nominal_visual_tokens == 576
    assert get_arch("LLAVA-HF/LLAVA-V1.6-VICUNA-7B-HF") is get_arch(NEXT_7B)  # case-insensitive lookup
    with pytest.raises(TypeError):
        ARCHITECTURES["x"] = get_arch(NEXT_7B)  # type: ignore[index]


def test_report_fields() -> None:
    report = efficiency_report(NEXT_7B, text_tokens=T, layer=K, kept=962)
    assert isinstance(report, EfficiencyReport)
    assert (report.arch, report.convention, report.visual_tokens, report.text_tokens, report.layer,
            report.kept) == (NEXT_7B, "paper", V, T, K, 962)
    assert report.kept_fraction == pytest.approx(0.334, abs=1e-3)
    assert report.flops == prefill_flops(NEXT_7B, visual_tokens=V, text_tokens=T, layer=K, kept=962)
    assert report.kv_bytes_unpruned == kv_cache_bytes(NEXT_7B, visual_tokens=V, text_tokens=T)


BASE = {"visual_tokens": V, "text_tokens": T}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: get_arch("llava-hf/llava-9b"), r"unknown architecture 'llava-hf/llava-9b'; known: .*"
                                            r"OpenGVLab/InternVL3-1B-hf.*llava-hf/llava-v1.6-vicuna-7b-hf"),
    (lambda: prefill_flops("nope", **BASE), r"unknown architecture 'nope'"),
    (lambda: prefill_flops(NEXT_7B, visual_tokens=0, text_tokens=T), r"visual_tokens must be >= 1, got 0"),
    (lambda: kv_cache_bytes(NEXT_7B, visual_tokens=-5, text_tokens=T), r"visual_tokens must be >= 1, got -5"),
    (lambda: prefill_flops(NEXT_7B, visual_tokens=V, text_tokens=-1), r"text_tokens must be >= 0, got -1"),
    (lambda: prefill_flops(NEXT_7B, **BASE, layer=K, kept=0), r"kept must be >= 1, got 0"),
    (lambda: kv_cache_bytes(NEXT_7B, **BASE, layer=K, kept=-3), r"kept must be >= 1, got -3"),
    (lambda: prefill_flops(NEXT_7B, **BASE, layer=K, kept=V + 1),
     r"kept \(2881\) must not exceed visual_tokens \(2880\)"),
    (lambda: prefill_flops(NEXT_7B, **BASE, layer=0, kept=10), r"layer must be in \[1, 32\).*got 0"),
    (lambda: kv_cache_bytes(NEXT_7B, **BASE, layer=32, kept=10), r"layer must be in \[1, 32\).*got 32"),
    (lambda: prefill_flops(NEXT_7B, **BASE, layer=-1, kept=10), r"layer must be in \[1, 32\).*got -1"),
    (lambda: prefill_flops(NEXT_7B, **BASE, kept=10), r"layer is required when kept is given"),
    (lambda: prefill_flops(NEXT_7B, **BASE, convention="fastv"), r"unknown convention 'fastv'; known: paper"),
    (lambda: kv_cache_bytes(NEXT_7B, **BASE, bytes_per_value=0), r"bytes_per_value must be >= 1, got 0"),
    (lambda: efficiency_report(NEXT_7B, text_tokens=T, layer=K, kept=V + 1), r"must not exceed"),
    (lambda: efficiency_report(ModelArch("tiny", 2, 8, 16, 2, 2, 4, 10), text_tokens=3),
     r"visual_tokens is required: 'tiny' has no nominal"),
    (lambda: ModelArch("bad", 0, 8, 16, 2, 2, 4, 10), r"num_layers must be a positive int, got 0"),
    (lambda: ModelArch("bad", 2, 8, 16, 3, 2, 4, 10), r"num_heads \(3\) must be a multiple of num_kv_heads"),
    (lambda: arch_from_config(SimpleNamespace(model_type="toy", hidden_size=8, num_hidden_layers=2,
                                              num_attention_heads=2, vocab_size=10)),
     r"config 'toy' has no 'intermediate_size'"),
])
def test_bad_input_raises(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("value", [2.5, "10", True])
def test_non_integer_counts_raise_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="visual_tokens must be an int"):
        prefill_flops(NEXT_7B, visual_tokens=value, text_tokens=T)  # type: ignore[arg-type]
