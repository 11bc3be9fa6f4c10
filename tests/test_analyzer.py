"""The analysis API on the tiny models: result shapes, consistency, determinism, the real loading path,
and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FAMILY_NAMES
from PIL import Image

from d2pruner.analysis import Analyzer, keep_count, load, to_rgb
from d2pruner.pruning import prune

METHODS = ("fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di")


@pytest.fixture(scope="module")
def results(tiny_analyzers, test_image):
    return {
        name: tiny_analyzers.get(name).analyze(
            test_image, "What is red?", methods=METHODS, max_new_tokens=3, prior="uniform"
        )
        for name in FAMILY_NAMES
    }


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_result_fields(results, test_image, name):
    r = results[name]
    num = r.num_candidates
    assert sum(g.size for g in r.grids) == num
    assert [g.offset for g in r.grids] == list(np.cumsum([0] + [g.size for g in r.grids])[:-1])
    assert r.n == max(1, round(0.25 * num))
    assert r.regions.shape == (num, 4) and r.candidate_tokens.shape == (num,)
    w, h = test_image.size
    finite = np.isfinite(r.regions).all(axis=1)
    assert finite.any()
    reg = r.regions[finite]
    assert (reg[:, 0] >= 0).all() and (reg[:, 2] <= w + 1e-9).all() and (reg[:, 1] >= 0).all()
    assert (reg[:, 3] <= h + 1e-9).all() and (reg[:, 2] > reg[:, 0]).all() and (reg[:, 3] > reg[:, 1]).all()
    for maps in (r.attention, r.prior, r.relative_attention):
        assert [m.shape for m in maps] == [(g.rows, g.cols) for g in r.grids]
    assert r.attention_flat.shape == r.relative_flat.shape == (num,)
    assert np.allclose(np.concatenate([a.ravel() for a in r.attention]), r.attention_flat)
    assert (r.attention_flat >= 0).all() and r.attention_flat.sum() <= 1 + 1e-5
    assert r.prior_source == "uniform" and any("uniform prior" in note for note in r.notes)
    assert all(np.allclose(p, 1.0) for p in r.prior)
    assert np.allclose(r.relative_flat, r.attention_flat, rtol=1e-5)
    e = r.graph_edges
    assert e.ndim == 2 and e.shape[1] == 2 and len(r.graph_edge_kinds) == e.shape[0]
    assert ((e[:, 0] < e[:, 1]) & (e[:, 1] < num)).all() if e.size else True
    assert list(r.methods) == list(METHODS)
    for m in r.methods.values():
        assert m.num_kept == r.n == len(m.kept)
        assert (np.diff(m.kept) > 0).all() and m.kept.min() >= 0 and m.kept.max() < num
        assert isinstance(m.answer, str) and m.box is None
        assert m.prefill_seconds > 0 and m.select_seconds >= 0
    # FastV keeps the n largest attentions of the shared vanilla run
    top = np.sort(np.argsort(-r.attention_flat, kind="stable")[: r.n])
    assert np.array_equal(r.methods["fastv"].kept, top)
    assert r.vanilla_prefill_seconds > 0 and r.vision_seconds > 0


def test_method_answer_equals_direct_pruned_generation(tiny_analyzers, tiny_models, results, test_image):
    """The shared prefix (pre-encoded vision features) changes nothing: a plain pruned generate from
    pixel_values gives the analyzer's answer."""
    name = "tiny-qwen2.5-vl"
    r = results[name]
    analyzer = tiny_analyzers.get(name)
    model, family = analyzer.model, analyzer.model_family
    inputs = family.build_inputs(model, analyzer.processor, test_image, r.question)
    tokens = family.tokens_for(model, analyzer.processor, test_image.size, inputs)
    for method in ("fastv", "d2pruner"):
        with torch.no_grad(), prune(model, tokens, layer=r.layer, keep=torch.as_tensor(r.methods[method].kept)):
            ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        text = family.tokenizer(analyzer.processor).decode(ids[0, tokens.seq_len :], skip_special_tokens=True)
        assert text.strip() == r.methods[method].answer


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_keep_all_answers_equal_vanilla(tiny_analyzers, test_image, name):
    r = tiny_analyzers.get(name).analyze(
        test_image, "Describe.", methods=("fastv", "d2pruner"), keep_ratio=1.0, max_new_tokens=4
    )
    assert r.n == r.num_candidates
    for m in r.methods.values():
        assert m.answer == r.vanilla_answer
        assert m.num_kept == r.num_candidates


def test_deterministic(tiny_analyzers, test_image):
    a = tiny_analyzers.get("tiny-llava-next")
    r1 = a.analyze(test_image, "Where?", layer=1, keep_ratio=0.1, max_new_tokens=3)
    r2 = a.analyze(test_image, "Where?", layer=1, keep_ratio=0.1, max_new_tokens=3)
    assert np.array_equal(r1.attention_flat, r2.attention_flat)
    assert np.array_equal(r1.graph_edges, r2.graph_edges)
    assert r1.vanilla_answer == r2.vanilla_answer
    for m in r1.methods:
        assert np.array_equal(r1.methods[m].kept, r2.methods[m].kept)
        assert r1.methods[m].answer == r2.methods[m].answer
    r3 = a.analyze(test_image, "Where?", layer=2, keep_ratio=0.1, max_new_tokens=3)
    assert not np.array_equal(r1.attention_flat, r3.attention_flat)


def test_method_params_and_grounding(tiny_analyzers, test_image):
    a = tiny_analyzers.get("tiny-internvl")
    r = a.analyze(
        test_image,
        "the red box",
        methods=("d2pruner", "mmr"),
        alpha=1.0,
        theta=0.9,
        lam=0.3,
        grounding=True,
        max_new_tokens=3,
    )
    assert r.methods["d2pruner"].params == {"alpha": 1.0, "theta": 0.9}
    assert r.methods["mmr"].params == {"lam": 0.3}
    assert r.graph_params == {"alpha": 1.0, "theta": 0.9}
    assert r.question != r.prompt and "the red box" in r.question
    w, h = test_image.size
    for box in [r.vanilla_box, *(m.box for m in r.methods.values())]:
        assert box is None or (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h)


def test_given_prior_changes_relative_attention(tiny_analyzers, test_image):
    a = tiny_analyzers.get("tiny-llava")
    prior = torch.linspace(0.1, 1.0, 16).reshape(4, 4)
    r = a.analyze(test_image, "What?", methods=("d2pruner-di",), prior=prior, max_new_tokens=1)
    assert r.prior_source == "given" and r.prior[0].shape == (8, 8)
    expected = r.attention_flat / (r.prior[0].ravel() + 1e-7)
    assert np.allclose(r.relative_flat, expected, rtol=1e-5)
    top = np.sort(np.argsort(-expected, kind="stable")[: r.n])
    assert np.array_equal(r.methods["d2pruner-di"].kept, top)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK", "I;16", "I", "F", "P", "1", "YCbCr"])
def test_to_rgb_any_mode(test_image, mode):
    src = test_image.convert(mode) if mode not in ("I;16", "I", "F") else _gray(test_image, mode)
    out = to_rgb(src)
    assert out.mode == "RGB" and out.size == test_image.size
    assert np.asarray(out).std() > 0


def _gray(image, mode):
    arr = np.asarray(image.convert("L"), dtype=np.float64) * 200.0
    if mode == "I;16":
        image = Image.fromarray(arr.astype(np.uint16))
    elif mode == "I":
        image = Image.fromarray(arr.astype(np.int32))
    else:
        image = Image.fromarray(arr.astype(np.float32))
    assert image.mode == mode
    return image


def test_odd_images_are_normalised(tiny_analyzers, test_image):
    a = tiny_analyzers.get("tiny-llava")
    rgba = test_image.convert("RGBA")
    r = a.analyze(rgba, "What?", methods=("fastv",), max_new_tokens=1)
    assert r.image_size == test_image.size
    tiny = Image.new("I;16", (1, 1))
    r = a.analyze(tiny, "What?", methods=("fastv",), max_new_tokens=1)
    assert r.image_size == (1, 1) and any("upscaled" in note for note in r.notes)
    assert np.nanmax(r.regions[:, 2]) <= 1 + 1e-9
    big = Image.new("RGB", (4000, 3000), (10, 200, 30))
    r = a.analyze(big, "What?", methods=("fastv",), max_new_tokens=1)
    assert any("downscaled" in note for note in r.notes)
    assert r.image_size == (4000, 3000) and r.processed_size[0] * r.processed_size[1] <= 2048 * 2048
    assert math.isclose(float(np.nanmax(r.regions[:, 2])), 4000 - 500, rel_tol=0.01)  # centre crop of 4:3
    arr = np.asarray(test_image)
    r = a.analyze(arr, "What?", methods=("fastv",), max_new_tokens=1)
    assert r.image_size == test_image.size


def test_bad_inputs(tiny_analyzers, test_image):
    a = tiny_analyzers.get("tiny-llava")
    for prompt in ("", "   \n\t", None, 3):
        with pytest.raises(ValueError, match="prompt"):
            a.analyze(test_image, prompt)
    for ratio in (0, 0.0, -0.1, 1.01, 2, float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="keep_ratio"):
            a.analyze(test_image, "What?", keep_ratio=ratio)
    for layer in (0, 4, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="layer"):
            a.analyze(test_image, "What?", layer=layer)
    with pytest.raises(ValueError, match="unknown method"):
        a.analyze(test_image, "What?", methods=("fastv", "magic"))
    with pytest.raises(ValueError, match="methods is empty"):
        a.analyze(test_image, "What?", methods=())
    with pytest.raises(ValueError, match="no requested method has a parameter 'beta'"):
        a.analyze(test_image, "What?", beta=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        a.analyze(test_image, "What?", max_new_tokens=0)
    with pytest.raises(ValueError, match="aspect ratio"):
        a.analyze(Image.new("RGB", (1, 300)), "What?")
    with pytest.raises(ValueError, match="image"):
        a.analyze("not an image", "What?")
    with pytest.raises(ValueError, match="image"):
        a.analyze(np.zeros((0, 5, 3), dtype=np.uint8), "What?")


def test_keep_count():
    assert keep_count(0.25, 576) == 144
    assert keep_count(1e-9, 576) == 1
    assert keep_count(1.0, 7) == 7
    assert keep_count(0.5, 5) == 2  # round half to even, as Python's round


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="tiny-llava"):
        load("tiny-nothing")
    with pytest.raises(ValueError, match="non-empty"):
        load("  ")
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8, num_attention_heads=1)
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"unsupported model type 'llama'.*LlavaForConditionalGeneration.*InternVL"):
        load(str(tmp_path))


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_real_from_pretrained_path(tiny_models, tiny_analyzers, tmp_path, test_image, name):
    """A saved checkpoint loads through AutoConfig + the family class + AutoProcessor (with the
    tokenizer + image-processor fallback for Qwen2.5-VL here) and gives the same analysis."""
    tm = tiny_models.get(name)
    tm.model.save_pretrained(tmp_path)
    if hasattr(tm.processor, "save_pretrained"):
        tm.processor.save_pretrained(tmp_path)
    else:
        tm.processor.tokenizer.save_pretrained(tmp_path)
        tm.processor.image_processor.save_pretrained(tmp_path)
    loaded = load(str(tmp_path), device="cpu")
    loaded.prior_dirs = [tmp_path / "priors"]
    assert type(loaded.model).__name__ == type(tm.model).__name__
    a = loaded.analyze(test_image, "What?", methods=("fastv", "d2pruner"), max_new_tokens=3, prior="uniform")
    # the reference: the in-memory model with the processor as loaded (with torchvision installed, AutoProcessor
    # picks the torchvision image-processor backend, whose pixels differ slightly from the PIL one's)
    reference = Analyzer(tm.model, loaded.processor, name=name, prior_dirs=[tmp_path / "priors"])
    b = reference.analyze(test_image, "What?", methods=("fastv", "d2pruner"), max_new_tokens=3, prior="uniform")
    assert a.vanilla_answer == b.vanilla_answer
    assert np.allclose(a.attention_flat, b.attention_flat, atol=1e-6)
    for m in a.methods:
        assert np.array_equal(a.methods[m].kept, b.methods[m].kept)


def test_broadcast_parameters_skip_a_method_that_fixes_them(tiny_analyzers, test_image):
    r = tiny_analyzers.get("tiny-llava").analyze(
        test_image, "What?", methods=("d2pruner", "d2pruner-nospatial"), alpha=0.3, theta=0.7, max_new_tokens=1
    )
    assert r.methods["d2pruner"].params == {"alpha": 0.3, "theta": 0.7}
    assert r.methods["d2pruner-nospatial"].params == {"theta": 0.7}
