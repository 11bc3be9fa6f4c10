"""Analysis options: methods batched or one by one (same results), the peers' newline budget, dart-official's own
count, every layer's attention row from the same forward, the selection step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2pruner.analysis import Analyzer
from d2pruner.families import build_tiny, family_for
from d2pruner.pruning import prune

SIX = ("fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_one_batched_generation_equals_methods_one_by_one(tiny_analyzers, test_image, name):
    analyzer = tiny_analyzers.get(name)
    common = dict(methods=SIX, keep_ratio=0.3, max_new_tokens=6, prior="uniform")
    batched = analyzer.analyze(test_image, "What?", **common)
    one_by_one = analyzer.analyze(test_image, "What?", method_batch=1, **common)
    assert batched.generation_chunks == 1 and one_by_one.generation_chunks == len(SIX)
    assert any("as asked" in note for note in one_by_one.notes)
    for m in SIX:
        assert np.array_equal(batched.methods[m].kept, one_by_one.methods[m].kept)
        assert batched.methods[m].answer == one_by_one.methods[m].answer
    assert batched.vanilla_answer == one_by_one.vanilla_answer


def test_newline_budget_counted_as_the_peers_count_it(tiny_analyzers, test_image):
    analyzer = tiny_analyzers.get("tiny-llava-next")
    ours = analyzer.analyze(test_image, "What?", methods=("fastv",), keep_ratio=0.25, max_new_tokens=1,
                            prior="uniform")
    peers = analyzer.analyze(test_image, "What?", methods=("fastv",), keep_ratio=0.25, max_new_tokens=1,
                             prior="uniform", newline_budget="counted")
    newlines = ours.layout.num_tokens - ours.num_candidates
    assert newlines > 0
    assert ours.n == round(0.25 * ours.num_candidates)
    assert peers.n == round(0.25 * (ours.num_candidates + newlines)) - newlines
    assert peers.methods["fastv"].num_kept == peers.n
    llava = tiny_analyzers.get("tiny-llava")  # no newline tokens: both conventions agree
    a, b = (llava.analyze(test_image, "What?", methods=("fastv",), keep_ratio=0.25, max_new_tokens=1, prior="uniform",
                          newline_budget=nb) for nb in ("excluded", "counted"))
    assert a.n == b.n
    with pytest.raises(ValueError, match="newline_budget must be one of"):
        llava.analyze(test_image, "What?", newline_budget="all")


def test_dart_official_keeps_its_own_count_beside_exact_n_methods(tiny_analyzers, test_image):
    from d2pruner.methods.dart_official import official_keep_count

    analyzer = tiny_analyzers.get("tiny-llava")
    result = analyzer.analyze(test_image, "What is it?", methods=("dart-official", "fastv"), keep_ratio=0.3,
                              max_new_tokens=4, prior="uniform")
    n = result.n
    official = result.methods["dart-official"]
    # the byte-level prompt after the image ("\nWhat is it? ASSISTANT:") holds more than the 4 text pivots
    assert official.num_kept == official_keep_count(n, result.num_candidates, 4) == 4 + 8 * (n // 8)
    assert official.num_kept != n and result.methods["fastv"].num_kept == n
    # each row of the batched generation equals that kept set run alone (the shorter row had filler slots)
    model, processor = analyzer.model, analyzer.processor
    family = family_for(model)
    inputs = family.build_inputs(model, processor, test_image, "What is it?")
    tokens = family.tokens_for(model, processor, test_image.size, inputs)
    for method, res in result.methods.items():
        with torch.no_grad(), prune(model, tokens, layer=result.layer, keep=torch.as_tensor(res.kept)):
            ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        text = family.tokenizer(processor).decode(ids[0, tokens.seq_len :], skip_special_tokens=True).strip()
        assert text == res.answer, method


def test_every_layers_attention_comes_from_the_same_forward_and_equals_eager(test_image):
    tiny = build_tiny("tiny-llava", attn_implementation="eager")
    analyzer = Analyzer(tiny.model, tiny.processor, name="tiny-llava")
    result = analyzer.analyze(test_image, "What?", methods=("fastv",), layer=2, max_new_tokens=1, prior="uniform",
                              heads=True)
    layers = analyzer.num_layers
    assert result.layer_attention.shape == (layers, result.num_candidates)
    assert result.layer_attention_heads.shape[:2] == (layers, tiny.model.config.text_config.num_attention_heads)
    np.testing.assert_allclose(result.layer_attention[result.layer - 1], result.attention_flat, rtol=1e-6)
    np.testing.assert_allclose(result.layer_attention_heads.mean(1), result.layer_attention, rtol=1e-6)
    family = family_for(tiny.model)
    inputs = family.build_inputs(tiny.model, tiny.processor, test_image, "What?")
    tokens = family.tokens_for(tiny.model, tiny.processor, test_image.size, inputs)
    with torch.no_grad():
        eager = tiny.model(**inputs, output_attentions=True).attentions
    positions = tokens.positions
    for i, probs in enumerate(eager):
        np.testing.assert_allclose(result.layer_attention_heads[i], probs[0, :, -1, positions].numpy(), atol=1e-6)


def test_steps_cover_exactly_the_kept_tokens(tiny_analyzers, test_image):
    result = tiny_analyzers.get("tiny-internvl").analyze(test_image, "What?", methods=SIX, keep_ratio=0.3,
                                                         max_new_tokens=1, prior="uniform", steps=True)
    for method, res in result.methods.items():
        assert len(res.steps) == res.num_kept, method
        assert sorted(step.token for step in res.steps) == sorted(int(i) for i in res.kept), method
    phases = {step.phase for step in result.methods["d2pruner"].steps}
    assert "pivot" in phases
    plain = tiny_analyzers.get("tiny-internvl").analyze(test_image, "What?", methods=("fastv",), max_new_tokens=1,
                                                        prior="uniform")
    assert plain.methods["fastv"].steps == ()
