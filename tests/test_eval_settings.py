"""The lmms-eval plugin's pure parts (no lmms-eval needed): model args, task generation options, box strings."""

from __future__ import annotations

import pytest

from d2pruner.eval.box_text import NO_BOX, format_box, parse_box_text
from d2pruner.eval.settings import EvalSettings, parse_model_args
from d2pruner.eval.task_generation import DEFAULT_MAX_NEW_TOKENS, cut_at_stop, task_generation


def test_model_args_become_generate_arguments():
    settings = parse_model_args({"pretrained": "tiny-llava", "method": "d2pruner", "keep_ratio": 0.111, "layer": 5,
                                 "preset": "localization", "alpha": 0.5, "theta": 0.8, "r_pivot": 0.7,
                                 "prior": "content-free", "batch_size": "4", "max_new_tokens": 16, "dtype": "bfloat16"})
    assert settings.batch_size == 4 and settings.max_new_tokens == 16 and settings.torch_dtype is not None
    assert settings.generate_kwargs() == {
        "method": "d2pruner", "layer": 5, "preset": "localization", "prior": "content-free", "keep_ratio": 0.111,
        "keep": None, "alpha": 0.5, "theta": 0.8, "r_pivot": 0.7,
    }


def test_unpruned_is_the_same_call_without_a_method():
    for method in (None, "none", "None"):
        args = {"pretrained": "tiny-llava"} if method is None else {"pretrained": "tiny-llava", "method": method}
        settings = parse_model_args(args)
        assert settings == EvalSettings(pretrained="tiny-llava")
        assert settings.generate_kwargs() == {"method": None, "layer": None, "preset": None, "prior": "auto"}


def test_keep_count_and_every_method_parameter_by_name():
    settings = parse_model_args({"pretrained": "x", "method": "mmr", "keep": 64, "lam": 0.3})
    assert settings.keep == 64 and settings.keep_ratio is None and settings.method_params == {"lam": 0.3}
    assert parse_model_args({"pretrained": "x", "method": "dart", "keep": 8, "num_pivots": 4}).method_params == {
        "num_pivots": 4}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "pretrained is required"),
        ({"pretrained": " "}, "pretrained is required"),
        ({"method": "fastvv"}, "method must be one of none, "),
        ({"method": "fastv"}, "needs exactly one of keep_ratio"),
        ({"method": "fastv", "keep_ratio": 0.5, "keep": 4}, "needs exactly one of keep_ratio"),
        ({"method": "fastv", "keep_ratio": 0}, r"keep_ratio must be a number in \(0, 1\]"),
        ({"method": "fastv", "keep_ratio": 1.5}, r"keep_ratio must be a number in \(0, 1\]"),
        ({"method": "fastv", "keep_ratio": float("nan")}, "keep_ratio must be"),
        ({"method": "fastv", "keep_ratio": "half"}, "keep_ratio must be"),
        ({"method": "fastv", "keep": 0}, "keep must be an integer >= 1"),
        ({"method": "fastv", "keep": 2.5}, "keep must be an integer >= 1"),
        ({"keep_ratio": 0.5}, "keep_ratio needs a method"),
        ({"keep": 3}, "keep needs a method"),
        ({"alpha": 0.5}, "alpha need"),
        ({"method": "fastv", "keep": 4, "alpha": 0.5}, r"unknown model_args \['alpha'\].*fastv takes no hyperparam"),
        ({"method": "d2pruner", "keep": 4, "alpah": 0.5}, r"unknown model_args \['alpah'\].*alpha, theta, r_pivot"),
        ({"method": "d2pruner", "keep": 4, "alpha": True}, "alpha must be a finite number"),
        ({"layer": 0}, "layer must be an integer >= 1"),
        ({"layer": "two"}, "layer must be an integer >= 1"),
        ({"preset": "grounding"}, "preset must be one of understanding, localization"),
        ({"prior": "flat"}, "prior must be one of auto, natural, content-free, uniform"),
        ({"batch_size": "auto"}, "batch_size=auto is not supported"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"dtype": "half"}, "dtype must be one of auto, float32, float16, bfloat16"),
        ({"device": "gpu0"}, "device must be a torch device"),
        ({"flash": True}, r"unknown model_args \['flash'\]"),
    ],
)
def test_every_bad_model_arg_is_named(args, message):
    args = {"pretrained": "tiny-llava", **args} if "pretrained" not in args and args != {} else args
    with pytest.raises(ValueError, match=message):
        parse_model_args(args)


def test_task_generation_options():
    strict = task_generation({"grounding": "native", "max_new_tokens": 128, "do_sample": False, "until": []})
    assert strict.grounding and strict.max_new_tokens == 128 and strict.until == ()
    plain = task_generation({"until": "ASSISTANT:", "temperature": 0, "top_p": 1.0, "num_beams": 1}, 16)
    assert not plain.grounding and plain.max_new_tokens == 16 and plain.until == ("ASSISTANT:",)
    assert plain.ignored == ("top_p",)
    assert task_generation(None).max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert task_generation({"max_new_tokens": 64}, 8).max_new_tokens == 8  # the model args win


@pytest.mark.parametrize(
    ("gen_kwargs", "message"),
    [
        ({"temperature": 0.7}, "temperature=0.7: d2pruner decodes greedily"),
        ({"do_sample": True}, "do_sample=True"),
        ({"num_beams": 4}, "num_beams=4"),
        ({"grounding": "qwen"}, "grounding must be 'native'"),
        ({"until": [1]}, "until must be a string or a list of strings"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ],
)
def test_bad_generation_kwargs_are_named(gen_kwargs, message):
    with pytest.raises(ValueError, match=message):
        task_generation(gen_kwargs)


def test_stop_strings_cut_the_answer():
    assert cut_at_stop("a cat\n\nUSER: more", ("\n\n", "USER:")) == "a cat"
    assert cut_at_stop("a cat", ("ASSISTANT:",)) == "a cat"
    assert cut_at_stop("a cat", ()) == "a cat"


def test_box_strings_round_trip_and_anything_else_is_no_box():
    text = format_box((0.1, 0.25, 0.5, 1.0))
    assert text == "[0.1000, 0.2500, 0.5000, 1.0000]"
    assert parse_box_text(text) == [0.1, 0.25, 0.5, 1.0]
    assert parse_box_text(f"  {text}\n") == [0.1, 0.25, 0.5, 1.0]
    missing = format_box(None, "I see [0.1, 0.2, 0.3, 0.4] maybe")
    assert missing.startswith(NO_BOX) and parse_box_text(missing) is None
    for text in ("", None, "[0.5, 0.2, 0.1, 0.4]", "[0.1, 0.2, 0.1, 0.4]", "box: [0.1, 0.2, 0.3, 0.4]",
                 "[0.1, 0.2, 0.3]", "[1e-1, 0.2, 0.3, 0.4]"):
        assert parse_box_text(text) is None, text
