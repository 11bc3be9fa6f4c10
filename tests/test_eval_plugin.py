"""The lmms-eval model ``d2pruner`` in process: arguments, requests → Analyzer.generate, responses, counts."""

from __future__ import annotations

import pytest
from eval_helpers import require_lmms_eval

import d2pruner
from d2pruner.eval.box_text import NO_BOX

pytestmark = pytest.mark.newest_stack
TASK, SPLIT = "toy_task", "test"
STRICT = {"grounding": "native", "max_new_tokens": 128, "do_sample": False, "until": []}


@pytest.fixture(scope="module")
def plugin_class():
    require_lmms_eval()
    from d2pruner.eval.lmms import D2PrunerLMM

    return D2PrunerLMM


def _build(plugin_class, args: str, docs, **extra):
    lm = plugin_class.create_from_arg_string(args, extra)
    lm.task_dict = {TASK: {SPLIT: docs}}
    return lm


def _requests(docs, gen_kwargs, contexts=None):
    from lmms_eval.api.instance import Instance

    contexts = contexts or [doc["answer"] for doc in docs]

    def to_visual(doc):
        return [doc["image"]]

    return [
        Instance(request_type="generate_until", arguments=(ctx, dict(gen_kwargs), to_visual, i, TASK, SPLIT), idx=0,
                 metadata={"task": TASK, "doc_id": i, "repeats": 1})
        for i, ctx in enumerate(contexts)
    ]


@pytest.fixture(scope="module")
def docs(test_image):
    return [{"image": test_image, "answer": expr} for expr in ("the red block", "the noise", "the corner")]


def test_unpruned_and_pruned_answers_are_analyzer_generate_answers(plugin_class, docs, test_image):
    for args, expected in (
        ("pretrained=tiny-llava,method=none,max_new_tokens=3", {}),
        ("pretrained=tiny-llava,method=fastv,keep=8,layer=2,max_new_tokens=3", {"method": "fastv", "keep": 8,
                                                                                 "layer": 2}),
    ):
        lm = _build(plugin_class, args, docs)
        plain = {"until": ["\n\n"], "do_sample": False}
        answers = lm.generate_until(_requests(docs, plain, contexts=["What?", "Why?", "Where?"]))
        direct = lm.analyzer.generate([test_image] * 3, ["What?", "Why?", "Where?"], max_new_tokens=3, **expected)
        assert answers == [g.answer.split("\n\n")[0] for g in direct]


def test_grounding_requests_get_the_normalised_box_or_the_no_box_marker(plugin_class, docs, monkeypatch):
    lm = _build(plugin_class, "pretrained=tiny-llava,method=d2pruner,keep_ratio=0.25,layer=2,alpha=0.5,batch_size=2",
                docs)
    calls = []

    def fake_generate(images, prompts, **kwargs):
        calls.append((len(images), list(prompts), kwargs))
        boxes = [(0.1, 0.2, 0.3, 0.4), None][: len(prompts)]
        return [d2pruner.Generation(answer=f"answer {p}", box=None if b is None else (1, 2, 3, 4), box_normalized=b,
                                    num_kept=16, num_candidates=64, question=p, settings={}) for p, b in
                zip(prompts, boxes, strict=False)]

    monkeypatch.setattr(lm.analyzer, "generate", fake_generate)
    answers = lm.generate_until(_requests(docs, STRICT))
    box = "[0.1000, 0.2000, 0.3000, 0.4000]"
    assert answers == [box, f"{NO_BOX} answer the noise", box]
    assert [c[0] for c in calls] == [2, 1]  # batch_size requests per generate call
    assert calls[0][1] == ["the red block", "the noise"]  # the raw expressions: generate applies the family prompt
    assert calls[0][2] == {"grounding": True, "max_new_tokens": 128, "method": "d2pruner", "layer": 2, "preset": None,
                           "prior": "auto", "keep_ratio": 0.25, "keep": None, "alpha": 0.5}


def test_real_grounding_generation_answers_a_box_or_the_marker(plugin_class, docs):
    lm = _build(plugin_class, "pretrained=tiny-llava,method=dart,keep=8,layer=2,max_new_tokens=4", docs)
    answers = lm.generate_until(_requests(docs, STRICT))
    assert len(answers) == 3 and all(a.startswith(NO_BOX) or a.startswith("[") for a in answers)


def test_each_process_logs_its_request_count(plugin_class, docs, monkeypatch):
    from loguru import logger

    lm = _build(plugin_class, "pretrained=tiny-llava,method=fastv,keep=8,layer=2,max_new_tokens=2", docs)
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    try:
        lm.generate_until(_requests(docs, STRICT))
    finally:
        logger.remove(sink)
    (line,) = [line for line in lines if line.startswith("d2pruner rank")]
    assert line.startswith("d2pruner rank 0/1 [method=fastv, keep=8, layer=2, preset=None]: 3 generate_until requests "
                           f"({TASK}: 3); ")
    assert line.rstrip().endswith("grounding answers without a box")


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        ("pretrained=tiny-llava,method=fastv", {}, "needs exactly one of keep_ratio"),
        ("pretrained=tiny-llava,fastv", {}, "key=value pairs.*'fastv'"),
        ("pretrained=tiny-llava,batch_size=4", {"batch_size": "2"}, "batch_size given twice"),
        ("pretrained=tiny-llava,device=cpu", {"device": "cuda"}, "device given twice"),
        ("pretrained=tiny-llava", {"max_batch_size": 8}, "max_batch_size is not supported"),
        ("pretrained=tiny-lava", {}, "unknown tiny model"),
    ],
)
def test_bad_arguments_are_named_before_any_request(plugin_class, args, extra, message):
    with pytest.raises(ValueError, match=message):
        plugin_class.create_from_arg_string(args, extra)


def test_batch_size_from_the_model_args_wins_over_the_default(plugin_class, docs):
    lm = plugin_class.create_from_arg_string("pretrained=tiny-llava,batch_size=4", {"batch_size": 1, "device": None})
    assert lm.batch_size == 4 and str(lm.device) == "cpu" and lm.rank == 0 and lm.world_size == 1


def test_clean_releases_the_model(plugin_class, docs):
    lm = _build(plugin_class, "pretrained=tiny-llava", docs)
    lm.clean()
    assert lm.analyzer is None


def test_unsupported_requests_fail_clearly(plugin_class, docs):
    lm = _build(plugin_class, "pretrained=tiny-llava", docs)
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        lm.loglikelihood([])
    two_images = _requests(docs, STRICT)[:1]
    two_images[0].arguments = (*two_images[0].arguments[:2], lambda d: [d["image"], d["image"]],
                               *two_images[0].arguments[3:])
    with pytest.raises(ValueError, match="one image per request; task toy_task doc 0 has 2 visuals"):
        lm.generate_until(two_images)
    with pytest.raises(ValueError, match="temperature=0.7"):
        lm.generate_until(_requests(docs, {"temperature": 0.7}))
