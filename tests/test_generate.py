"""Analyzer.generate: the evaluation entry point (several prompts, one method or unpruned)."""

from __future__ import annotations

import pytest
import torch


def test_unpruned_and_pruned_generations_equal_the_analysis(tiny_analyzers, test_image):
    analyzer = tiny_analyzers.get("tiny-llava")
    ref = analyzer.analyze(test_image, "What?", methods=("fastv", "d2pruner"), keep_ratio=0.25, max_new_tokens=6,
                           prior="uniform", alpha=0.5)
    (vanilla,) = analyzer.generate([test_image], ["What?"], max_new_tokens=6)
    assert vanilla.answer == ref.vanilla_answer and vanilla.num_kept is None
    assert vanilla.num_candidates == ref.num_candidates
    for method in ("fastv", "d2pruner"):
        params = {"alpha": 0.5} if method == "d2pruner" else {}
        by_ratio, by_count = (
            analyzer.generate([test_image], ["What?"], method=method, max_new_tokens=6, prior="uniform", **budget,
                              **params)[0]
            for budget in ({"keep_ratio": 0.25}, {"keep": ref.n})
        )
        assert by_ratio.answer == by_count.answer == ref.methods[method].answer
        assert by_ratio.num_kept == by_count.num_kept == ref.n


def test_several_prompts_keep_their_order(tiny_analyzers, test_image):
    analyzer = tiny_analyzers.get("tiny-qwen2.5-vl")
    prompts = ["What?", "Why is it red?"]
    together = analyzer.generate([test_image, test_image], prompts, method="fastv", keep=5, max_new_tokens=4)
    alone = [analyzer.generate([test_image], [p], method="fastv", keep=5, max_new_tokens=4)[0] for p in prompts]
    assert [g.answer for g in together] == [g.answer for g in alone]
    assert [g.num_kept for g in together] == [5, 5]


def test_preset_sets_layer_and_alpha(tiny_analyzers, test_image):
    analyzer = tiny_analyzers.get("tiny-qwen2.5-vl")
    (gen,) = analyzer.generate([test_image], ["the red block"], method="d2pruner", keep_ratio=0.5,
                               preset="localization", grounding=True, max_new_tokens=4)
    assert gen.settings["layer"] == 2 and gen.settings["alpha"] == 0.5 and gen.settings["r_pivot"] == 0.7
    assert "the red block" in gen.question and gen.question != "the red block"
    (understanding,) = analyzer.generate([test_image], ["What?"], method="d2pruner", keep_ratio=0.5,
                                         preset="understanding", alpha=0.3, max_new_tokens=2)
    assert understanding.settings["alpha"] == 0.3  # an explicit parameter wins over the preset


def test_grounding_box_is_normalised_to_the_original_image(tiny_analyzers, test_image, monkeypatch):
    analyzer = tiny_analyzers.get("tiny-llava")
    monkeypatch.setattr(analyzer, "_decode", lambda ids, prompt_len: "[0.25, 0.5, 0.75, 1.0]")
    (gen,) = analyzer.generate([test_image], ["the red block"], method="fastv", keep=8, grounding=True,
                               max_new_tokens=2)
    width, height = test_image.size
    assert gen.box is not None
    assert gen.box_normalized == pytest.approx(
        (gen.box[0] / width, gen.box[1] / height, gen.box[2] / width, gen.box[3] / height)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": [], "prompts": []}, "equally long and non-empty"),
        ({"prompts": ["a", "b"]}, "equally long"),
        ({"method": "fastv"}, "exactly one of keep_ratio"),
        ({"method": "fastv", "keep_ratio": 0.5, "keep": 3}, "exactly one of keep_ratio"),
        ({"keep_ratio": 0.5}, "need a method"),
        ({"method": "fastv", "keep": 0}, "keep must be an integer >= 1"),
        ({"method": "fastv", "keep_ratio": 1.5}, r"keep_ratio must be in \(0, 1\]"),
        ({"method": "nope", "keep": 3}, "unknown method"),
        ({"method": "fastv", "keep": 3, "preset": "grounding"}, "task must be one of"),
        ({"method": "fastv", "keep": 3, "alpha": 0.5}, "no requested method has a parameter 'alpha'"),
        ({"method": "fastv", "keep": 3, "max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_arguments_name_what_was_expected(tiny_analyzers, test_image, kwargs, message):
    analyzer = tiny_analyzers.get("tiny-llava")
    call = {"images": [test_image], "prompts": ["What?"], **kwargs}
    with pytest.raises(ValueError, match=message):
        analyzer.generate(call.pop("images"), call.pop("prompts"), **call)


def test_generation_leaves_the_model_unmodified(tiny_analyzers, test_image):
    analyzer = tiny_analyzers.get("tiny-llava")
    before = analyzer.model.config.text_config._attn_implementation
    analyzer.generate([test_image], ["What?"], method="dart", keep=4, max_new_tokens=2)
    assert analyzer.model.config.text_config._attn_implementation == before
    assert all(not m._forward_pre_hooks for m in analyzer.model.modules())
    assert torch.is_grad_enabled()
