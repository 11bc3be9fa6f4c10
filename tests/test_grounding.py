"""Grounding prompts, answer parsing, model-frame ↔ original mapping and IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from d2pruner.families import family_named
from d2pruner.families.internvl import internvl_layout
from d2pruner.families.llava import llava_layout
from d2pruner.families.llava_next import llava_next_layout
from d2pruner.families.qwen2_5_vl import qwen2_5_vl_layout
from d2pruner.grounding import box_iou, clip_box

FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "internvl")


# Each family's grounding lives in its file; these name-keyed shorthands keep the checks below readable.
def grounding_prompt(family, expression):
    return family_named(family).grounding_prompt(expression)


def parse_model_box(family, text):
    return family_named(family).parse_model_box(text)


def parse_box(text, layout):
    return family_named(layout.family).parse_box(text, layout)


def model_to_original(family, box, layout):
    return family_named(family).box_to_original(box, layout)


def original_to_model(family, box, layout):
    return family_named(family).to_model_units(box, layout)


def format_answer(family, box, label="object"):
    return family_named(family).format_answer(box, label)


SIZE = (640, 480)  # width, height
LAYOUTS = {
    "llava": llava_layout(SIZE),
    "llava_next": llava_next_layout(SIZE),
    "qwen2_5_vl": qwen2_5_vl_layout(SIZE),
    "internvl": internvl_layout(SIZE),
}


# ---------------------------------------------------------------------------------------------------
# prompts


def test_prompts():
    assert grounding_prompt("llava", " the red car ") == (
        "Please provide the bounding box coordinate of the region this sentence describes: the red car"
    )
    assert grounding_prompt("llava_next", "x") == grounding_prompt("llava", "x")
    assert grounding_prompt("internvl", "the red car").endswith("describes: <ref>the red car</ref>")
    q = grounding_prompt("qwen2_5_vl", "the red car")
    assert "the red car" in q and "JSON" in q
    with pytest.raises(ValueError):
        grounding_prompt("blip", "x")


# ---------------------------------------------------------------------------------------------------
# parsing, model units

GOOD = [
    ("llava", "[0.61, 0.36, 0.92, 0.83]", (0.61, 0.36, 0.92, 0.83)),
    ("llava", "The man on the left is at [0.1,0.2,0.3,0.4]. Another one: [0.5, 0.5, 0.6, 0.6]", (0.1, 0.2, 0.3, 0.4)),
    ("llava", "Sure! (0.25, 0.3, 0.75, 0.9)", (0.25, 0.3, 0.75, 0.9)),
    ("llava", "[0, 0, 1, 1]", (0.0, 0.0, 1.0, 1.0)),
    ("llava", "[.5, .25, 1., 1e0]", (0.5, 0.25, 1.0, 1.0)),
    ("llava_next", "[0.61, 0.36, 0.92, 0.83]</s>", (0.61, 0.36, 0.92, 0.83)),
    (
        "qwen2_5_vl",
        '```json\n[\n\t{"bbox_2d": [135, 114, 516, 372], "label": "red car"}\n]\n```',
        (135.0, 114.0, 516.0, 372.0),
    ),
    ("qwen2_5_vl", '{"bbox_2d": [10.5, 20, 30, 40.25], "label": "x"}', (10.5, 20.0, 30.0, 40.25)),
    (
        "qwen2_5_vl",
        'Here it is:\n```json\n[{"label": "a", "bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]\n```',
        (1.0, 2.0, 3.0, 4.0),
    ),
    ("qwen2_5_vl", '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "a"},\n\t{"bbox_2d": [5, 6', (1.0, 2.0, 3.0, 4.0)),
    ("qwen2_5_vl", "{'bbox_2d': [1, 2, 3, 4]}", (1.0, 2.0, 3.0, 4.0)),
    ("qwen2_5_vl", "The car is at [100, 120, 300, 240].", (100.0, 120.0, 300.0, 240.0)),
    ("internvl", "<ref>the red car</ref><box>[[311, 199, 650, 700]]</box>", (311.0, 199.0, 650.0, 700.0)),
    ("internvl", "Sure. <box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>", (1.0, 2.0, 3.0, 4.0)),
    ("internvl", "[[100, 200, 300, 400]]", (100.0, 200.0, 300.0, 400.0)),
    ("internvl", "<ref>x</ref><box>[[ 10.5 , 20 , 30 , 40 ]]</box>", (10.5, 20.0, 30.0, 40.0)),
]

BAD = [
    "",
    "   ",
    "I cannot find it.",
    "garbage ]][[ ,,,",
    "[0.1, 0.2, 0.3]",
    "[0.1, 0.2, 0.3, 0.4, 0.5]",
    "[nan, 0.1, 0.2, 0.3]",
    "[0.9, 0.1, 0.2, 0.3]",
    "[0.1, 0.5, 0.2, 0.5]",
    "[0.61, 0.36, 0.92",
    "[inf, 0, 1, 1]",
]
BAD_QWEN = [
    '```json\n[\n\t{"bbox_2d": [135, 114, 5',
    '{"bbox_2d": [NaN, 1, 2, 3]}',
    '{"bbox_2d": [1, 2, 3]}',
    '{"bbox_2d": "unknown"}',
    '{"bbox_2d": [30, 2, 10, 4]}',
    '[{"bbox_2d": [1, 2, 3, 4, 5]}]',
    '{"bbox_2d": [Infinity, 2, 3, 4]}',
]
BAD_INTERNVL = [
    "<ref>car</ref><box>[[1, 2, 3]]</box>",
    "<ref>car</ref><box>[[1, 2, 3, 4",
    "<box>oops</box> [1, 2, 3, 4]",
    "<box>[[500, 500, 100, 100]]</box>",
]


@pytest.mark.parametrize(("family", "text", "expected"), GOOD)
def test_parse_good(family, text, expected):
    assert parse_model_box(family, text) == pytest.approx(expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text", BAD)
def test_parse_bad(family, text):
    assert parse_model_box(family, text) is None
    assert parse_box(text, LAYOUTS[family]) is None


@pytest.mark.parametrize("text", BAD_QWEN)
def test_parse_bad_qwen(text):
    assert parse_model_box("qwen2_5_vl", text) is None


@pytest.mark.parametrize("text", BAD_INTERNVL)
def test_parse_bad_internvl(text):
    assert parse_model_box("internvl", text) is None


def test_parse_never_raises_on_odd_input():
    for family in FAMILIES:
        for text in (None, 123, "[" * 1000, "]" * 1000, "<box>" * 50, "bbox_2d" * 10, "[1e999, 0, 1, 1]"):
            assert parse_model_box(family, text) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# frames


def test_llava_crop_frame():
    lay = LAYOUTS["llava"]  # 640×480 → 448×336 → crop x ∈ [56, 392) → original x ∈ [80, 560)
    assert parse_box("[0, 0, 1, 1]", lay) == pytest.approx((80.0, 0.0, 560.0, 480.0))
    assert parse_box("[0.5, 0.5, 1.0, 1.0]", lay) == pytest.approx((320.0, 240.0, 560.0, 480.0))
    # slightly out of range → clipped to the frame
    assert parse_box("[-0.1, 0.0, 1.05, 1.0]", lay) == pytest.approx((80.0, 0.0, 560.0, 480.0))
    # padded-square frame (original LLaVA repo): 0–1 spans the 640×640 square, pad 80 px above and below
    pad = llava_layout(SIZE, do_pad=True)
    assert parse_box("[0, 0, 1, 1]", pad) == pytest.approx((0.0, 0.0, 640.0, 480.0))
    assert parse_box("[0.25, 0.25, 0.75, 0.75]", pad) == pytest.approx((160.0, 80.0, 480.0, 400.0))
    assert parse_box("[0.1, 0.0, 0.9, 0.1]", pad) is None  # wholly in the padding


def test_other_frames():
    assert parse_box("[0.5, 0.25, 1, 1]", LAYOUTS["llava_next"]) == pytest.approx((320.0, 120.0, 640.0, 480.0))
    assert parse_box("<box>[[500, 250, 1000, 1000]]</box>", LAYOUTS["internvl"]) == pytest.approx(
        (320.0, 120.0, 640.0, 480.0)
    )
    q = LAYOUTS["qwen2_5_vl"]
    assert q.frame_size == (644, 476)  # smart_resize(480, 640)
    got = parse_box('[{"bbox_2d": [322, 119, 644, 476]}]', q)
    assert got == pytest.approx((320.0, 120.0, 640.0, 480.0))
    # beyond the resized image → clipped; wholly outside → None
    assert parse_box('{"bbox_2d": [322, 119, 900, 900]}', q) == pytest.approx((320.0, 120.0, 640.0, 480.0))
    assert parse_box('{"bbox_2d": [700, 500, 900, 900]}', q) is None
    with pytest.raises(ValueError):
        model_to_original("internvl", (0, 0, 1, 1), q)


SIZES = [(640, 480), (480, 640), (1, 1), (37, 500), (1200, 800), (2000, 15), (4000, 3000)]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(size):
    w, h = size
    rng = np.random.default_rng(sum(size))
    layouts = [llava_layout(size), llava_layout(size, do_pad=True), llava_next_layout(size), internvl_layout(size)]
    if max(size) / min(size) <= 200:
        layouts.append(qwen2_5_vl_layout(size))
    for lay in layouts:
        # boxes inside what the model saw (the crop for llava-hf LLaVA-1.5)
        vx1, vy1, vx2, vy2 = lay.grid(lay.grids[0].name).box if lay.family == "llava" else (0, 0, w, h)
        for _ in range(20):
            xs = np.sort(rng.uniform(vx1, vx2, 2))
            ys = np.sort(rng.uniform(vy1, vy2, 2))
            if xs[1] - xs[0] < 1e-6 or ys[1] - ys[0] < 1e-6:
                continue
            box = (xs[0], ys[0], xs[1], ys[1])
            model = original_to_model(lay.family, box, lay)
            assert model_to_original(lay.family, model, lay) == pytest.approx(box, abs=1e-6)
            # through text: rounding to the family's printed precision (2 decimals, integer, 0–1000)
            back = parse_box(format_answer(lay.family, model), lay)
            if back is None:  # rounding collapsed a tiny box
                continue
            fw, fh = lay.frame_size
            step = {"llava": 0.005, "llava_next": 0.005, "internvl": 0.0005}  # half a printed step / frame
            ux, uy = (0.5, 0.5) if lay.family == "qwen2_5_vl" else (step[lay.family] * fw, step[lay.family] * fh)
            tol_x = ux * lay.frame_scale[0] + 1e-6
            tol_y = uy * lay.frame_scale[1] + 1e-6
            assert abs(back[0] - box[0]) <= tol_x and abs(back[2] - box[2]) <= tol_x
            assert abs(back[1] - box[1]) <= tol_y and abs(back[3] - box[3]) <= tol_y


def test_llava_box_outside_crop_has_out_of_range_model_coords():
    lay = LAYOUTS["llava"]
    x1, _, x2, _ = original_to_model("llava", (0, 0, 40, 40), lay)
    assert x1 < 0 and x2 < 0
    assert model_to_original("llava", (x1, 0.0, x2, 0.1), lay) is None


def test_format_answer_parses_back():
    for family, box in (("llava", (0.1, 0.2, 0.3, 0.4)), ("qwen2_5_vl", (1, 2, 3, 4)), ("internvl", (1, 2, 3, 4))):
        assert parse_model_box(family, format_answer(family, box, label="car")) == pytest.approx(box)


# ---------------------------------------------------------------------------------------------------
# IoU and clipping


def test_box_iou_known_values():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(4 / 100)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert box_iou((0, 0, math.nan, 1), (0, 0, 1, 1)) == 0.0
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[0, 0, 10, 10], [1, 1, 3, 3]])
    assert box_iou(a, b) == pytest.approx([1.0, 1 / 7])
    assert box_iou(a[:, None], b[None]).shape == (2, 2)


def test_clip_box():
    assert clip_box((-5, -5, 700, 500), (640, 480)) == (0.0, 0.0, 640.0, 480.0)
    assert clip_box((700, 0, 800, 10), (640, 480)) is None
    assert clip_box((1, 1, 1, 5), (640, 480)) is None
    assert clip_box((math.nan, 0, 1, 1), (640, 480)) is None
    assert clip_box(None, (640, 480)) is None
    assert clip_box((1, 2, 3), (640, 480)) is None
