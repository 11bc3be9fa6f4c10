"""Qwen3-VL (one family file, d2pruner/families/qwen3_vl.py): layout against the real processor, DeepStack under
pruning, grounding on 0–1000, the checkpoints' numbers. The whole equivalence matrix (keep-all == unmodified, pruned
prefill == hand reference with the DeepStack injections, cached == no-cache, captured attention == eager, batched
rows == alone, sdpa / eager, K ∈ {1, 2}) runs through ``FAMILY_NAMES`` in the shared test files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_layout import PIXEL_SIZES, RAW, assert_inside, coded_image

from d2pruner.families import FAMILIES, checkpoint_of, family_named, guess_family
from d2pruner.families.qwen3_vl import MAX_PIXELS, MIN_PIXELS, Qwen3VL
from d2pruner.pruning import prune

SPEC = family_named("qwen3_vl")


def _processor(**kwargs):
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=MIN_PIXELS,
                                    max_pixels=MAX_PIXELS, **kwargs)


CHECKPOINT_MODEL = type("Model", (), {"config": None})  # the layout reads only the processor


@pytest.mark.parametrize("size", PIXEL_SIZES)
def test_layout_is_the_real_processors_pixel_for_pixel(size):
    """Every real pixel of each 2×2 merged 16-px patch block lies in its token's region (the checkpoints' processor
    settings: patch 16, merge 2, 65 536 … 16 777 216 pixels)."""
    processor = _processor(**RAW)
    out = processor(coded_image(*size), return_tensors="np")
    t_, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    layout = SPEC.layout(size, processor, CHECKPOINT_MODEL)
    assert t_ == 1 and (gw * 16, gh * 16) == layout.frame_size == layout.processed_size
    (grid,) = layout.grids
    assert (grid.rows, grid.cols) == (gh // 2, gw // 2) and layout.family == "qwen3_vl"
    patches = out["pixel_values"].reshape(gh * gw, 3, 2, 16, 16)[:, :, 0]
    blocks = patches.reshape(layout.num_tokens, 4, 3, 256).transpose(0, 2, 1, 3).reshape(layout.num_tokens, 3, 1024)
    assert assert_inside(layout, np.arange(layout.num_tokens), blocks) == 1024 * layout.num_tokens


@pytest.mark.parametrize("size", [(640, 480), (37, 500), (4000, 3000), (10, 1000), (3000, 4500)])
def test_token_counts_equal_the_real_processors(size):
    processor = _processor()
    expected = processor.get_number_of_image_patches(size[1], size[0]) // 4
    assert SPEC.layout(size, processor, CHECKPOINT_MODEL).num_tokens == expected


def test_deepstack_wrapper_lives_only_inside_the_context(tiny_models, test_image):
    model = tiny_models.get("tiny-qwen3-vl").model
    decoder = SPEC.language_model(model)
    assert SPEC.injected_layers(model) == 3
    inputs = SPEC.build_inputs(model, tiny_models.get("tiny-qwen3-vl").processor, test_image, "What?")
    tokens = SPEC.tokens_for(model, tiny_models.get("tiny-qwen3-vl").processor, test_image.size, inputs)
    assert "_deepstack_process" not in vars(decoder)
    calls = []
    original = type(decoder)._deepstack_process

    def spy(self, hidden, mask, features):
        calls.append((hidden.shape[1], int(mask.sum()), features.shape[0]))
        return original(self, hidden, mask, features)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(decoder), "_deepstack_process", spy)
        with torch.no_grad(), prune(model, tokens, layer=1, keep=torch.arange(0, tokens.num_candidates, 4)):
            assert "_deepstack_process" in vars(decoder)
            model(**inputs)
    assert "_deepstack_process" not in vars(decoder)
    kept = len(range(0, tokens.num_candidates, 4))
    pruned_length = tokens.seq_len - tokens.num_candidates + kept
    # after layer 0: the full sequence; after layers 1 and 2 (≥ K = 1): only the kept tokens, with their features
    assert calls == [(tokens.seq_len, tokens.num_candidates, tokens.num_candidates),
                     (pruned_length, kept, kept), (pruned_length, kept, kept)]


def test_a_missing_injection_method_fails_loudly(tiny_models, test_image, monkeypatch):
    """If a release renamed the DeepStack method, pruning must refuse rather than run without the features."""
    import transformers

    model = tiny_models.get("tiny-qwen3-vl").model
    decoder_class = type(SPEC.language_model(model))
    processor = tiny_models.get("tiny-qwen3-vl").processor
    inputs = SPEC.build_inputs(model, processor, test_image, "What?")
    tokens = SPEC.tokens_for(model, processor, test_image.size, inputs)
    monkeypatch.delattr(decoder_class, "_deepstack_process")
    with pytest.raises(RuntimeError, match=rf"_deepstack_process.*transformers {transformers.__version__}"):
        prune(model, tokens, layer=2, keep=torch.arange(3)).__enter__()


def test_replayed_layers_below_k_skip_the_injection_and_match(tiny_models, test_image):
    """An analysis replays layers < K from the unpruned run: the one-token stand-in gets no injection, and the
    answers equal a plain pruned generation."""
    from d2pruner import load

    analyzer = load("tiny-qwen3-vl")
    result = analyzer.analyze(test_image, "What?", methods=("fastv", "d2pruner"), keep_ratio=0.3, layer=2,
                              max_new_tokens=4, prior="uniform")
    inputs = SPEC.build_inputs(analyzer.model, analyzer.processor, test_image, "What?")
    tokens = SPEC.tokens_for(analyzer.model, analyzer.processor, test_image.size, inputs)
    for method, res in result.methods.items():
        with torch.no_grad(), prune(analyzer.model, tokens, layer=2, keep=torch.as_tensor(res.kept)):
            ids = analyzer.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        text = analyzer.processor.tokenizer.decode(ids[0, tokens.seq_len :], skip_special_tokens=True).strip()
        assert text == res.answer, method


def test_grounding_reads_relative_thousandths(tiny_models):
    layout = SPEC.layout((640, 480), _processor(), CHECKPOINT_MODEL)
    answer = '```json\n[{"bbox_2d": [250, 500, 750, 1000], "label": "cat"}]\n```'
    assert SPEC.parse_box(answer, layout) == pytest.approx((160.0, 240.0, 480.0, 480.0), abs=1e-6)
    box = (100.0, 50.0, 300.0, 400.0)
    assert SPEC.parse_box(SPEC.format_answer(SPEC.to_model_units(box, layout)), layout) == pytest.approx(box, abs=1.0)
    assert "Locate the cat in the image" in SPEC.grounding_prompt("the cat")


def test_checkpoints_and_registry():
    assert isinstance(FAMILIES["qwen3_vl"], Qwen3VL)
    arch = checkpoint_of("Qwen/Qwen3-VL-8B-Instruct").arch
    assert (arch.num_layers, arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.num_kv_heads) == (
        36, 4096, 12288, 32, 8)
    assert guess_family("someone/Qwen3-VL-4B-Instruct-AWQ").name == "qwen3_vl"
    assert guess_family("Qwen/Qwen2.5-VL-7B-Instruct").name == "qwen2_5_vl"
