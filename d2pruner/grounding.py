"""Grounding: per-family prompts, answer parsing, model-frame ↔ original-pixel boxes, IoU.

Every family answers a referring expression with one box in its own units, expressed in the *model frame*
of :class:`d2pruner.layout.VisualLayout` (the image the model saw as a whole). This module parses the
answer into model units, then maps it to ORIGINAL image pixels with the layout, so that the grounding boxes
and the token heatmaps of :mod:`d2pruner.layout` always agree on the geometry.

=============  ==================================  ===============================================================
family         answer format                       units / reference frame
=============  ==================================  ===============================================================
llava          ``[0.61, 0.36, 0.92, 0.83]``          0–1 relative to the processed 336² image the model saw
llava_next     ``[0.61, 0.36, 0.92, 0.83]``          0–1 relative to the whole image
qwen2_5_vl     ``[{"bbox_2d": [x1, y1, x2, y2]}]``   absolute pixels of the ``smart_resize``-d input (h_bar × w_bar)
internvl       ``<ref>…</ref><box>[[x1, …]]</box>``  0–1000 relative to the whole image
=============  ==================================  ===============================================================

**The LLaVA-1.5 frame is disputed.** LLaVA-1.5 was trained (original repo, ``image_aspect_ratio="pad"``) on
images padded to a square with the mean colour, so its 0–1 coordinates refer to the *padded square*.
The llava-hf processor instead resizes the shortest edge and **centre-crops** (``do_center_crop=True``,
``do_pad=False`` in the released ``preprocessor_config.json``), so the model running here never sees the
padded square — only the crop. We take the frame of the image the model actually saw: with the default
llava-hf layout, 0–1 is relative to the centre crop (a box outside the crop cannot be expressed, and a
predicted box is mapped back inside the crop's footprint on the original). Build the layout with
``llava_layout(size, do_pad=True)`` (and feed the model padded images) to use the original repo's padded
frame instead — this module follows whatever layout it is given. For LLaVA-NeXT there is no dispute
worth the name: its base view is the whole image squashed to 336², so 0–1 is relative to the whole image.

Parsing policy (never raises on model text):

* the *first* box of the answer is used (the first ``bbox_2d`` value for Qwen, the first box inside the
  first ``<box>`` for InternVL, the first bracketed group of exactly four numbers for LLaVA; Qwen and
  InternVL fall back to that LLaVA rule when their markup is missing);
* it must hold exactly four finite numbers, else ``None`` (NaN / inf / 3 or 5 numbers / truncated text);
* reversed or zero-size boxes (``x2 <= x1`` or ``y2 <= y1``) are ``None`` — the formats define the order
  (top-left, bottom-right), and an evaluation should score a reversed box as a miss, not silently fix it;
* coordinates beyond the frame (e.g. ``1.02`` for LLaVA, ``1004`` for InternVL) are clipped to the frame;
  a box that is empty after clipping is ``None``.

Boxes are ``(x1, y1, x2, y2)`` float tuples; in original pixels an image of width ``W`` spans ``[0, W]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from d2pruner.layout import VisualLayout

__all__ = [
    "FAMILIES",
    "GROUNDING_PROMPTS",
    "Box",
    "box_iou",
    "clip_box",
    "format_answer",
    "grounding_prompt",
    "model_to_original",
    "original_to_model",
    "parse_box",
    "parse_model_box",
]

Box = tuple[float, float, float, float]

FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "internvl")

_LLAVA_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {expr}"
#: Prompt templates; ``{expr}`` is the referring expression. Qwen2.5-VL's follows the official
#: spatial-understanding cookbook ("Locate …, output its bbox coordinates using JSON format.").
GROUNDING_PROMPTS: dict[str, str] = {
    "llava": _LLAVA_PROMPT,
    "llava_next": _LLAVA_PROMPT,
    "qwen2_5_vl": "Locate {expr} in the image, output its bbox coordinates using JSON format.",
    "internvl": "Please provide the bounding box coordinate of the region this sentence describes: <ref>{expr}</ref>",
}

# Units of the model's numbers per frame pixel: value = frame_px / frame_size · _NORM (None = pixels).
_NORM: dict[str, float | None] = {"llava": 1.0, "llava_next": 1.0, "qwen2_5_vl": None, "internvl": 1000.0}

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FOUR = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")
_QWEN_KEY = re.compile(r"""["']?bbox_2d["']?\s*:\s*""")
_INTERNVL_BOX = re.compile(r"<box>\s*\[\s*\[([^\[\]]*)\]")
_INTERNVL_BARE = re.compile(r"\[\s*\[([^\[\]]*)\]")


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return family


def grounding_prompt(family: str, expression: str) -> str:
    """The grounding question for ``family`` about ``expression`` (a referring expression)."""
    return GROUNDING_PROMPTS[_check_family(family)].format(expr=expression.strip())


def _four_numbers(body: str) -> Box | None:
    """``"a, b, c, d"`` → four finite floats forming a top-left / bottom-right box, else ``None``."""
    parts = [p.strip() for p in body.split(",")]
    if len(parts) != 4:
        return None
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        return None
    return _valid(vals)


def _valid(vals: Sequence[float]) -> Box | None:
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        return None
    x1, y1, x2, y2 = (float(v) for v in vals)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def _first_four(text: str) -> Box | None:
    m = _FOUR.search(text)
    return _valid([float(g) for g in m.groups()]) if m else None


def _bracket_body(text: str, start: int) -> str | None:
    """Content of the ``[...]`` that opens at ``text[start:]`` (after whitespace), or ``None``."""
    m = re.compile(r"\s*\[([^\[\]]*)\]").match(text, start)
    return m.group(1) if m else None


def parse_model_box(family: str, text: str) -> Box | None:
    """The first box of a model answer, in the model's own units (no range clipping), or ``None``.

    Arguments:
        family: one of :data:`FAMILIES`.
        text: the generated answer (may contain prose, code fences, several boxes, or be truncated).
    """
    _check_family(family)
    if not isinstance(text, str) or not text.strip():
        return None
    if family == "qwen2_5_vl":
        key = _QWEN_KEY.search(text)
        if key is not None:
            body = _bracket_body(text, key.end())
            return _four_numbers(body) if body is not None else None
        return _first_four(text)
    if family == "internvl":
        m = _INTERNVL_BOX.search(text)
        if m is None and "<box>" not in text:
            m = _INTERNVL_BARE.search(text)
        if m is not None:
            return _four_numbers(m.group(1))
        return None if "<box>" in text else _first_four(text)
    return _first_four(text)


def _frame_scale(family: str, layout: VisualLayout) -> tuple[float, float]:
    """Frame pixels per model unit along x and y."""
    norm = _NORM[family]
    fw, fh = layout.frame_size
    return (1.0, 1.0) if norm is None else (fw / norm, fh / norm)


def _check_layout(family: str, layout: VisualLayout) -> None:
    _check_family(family)
    if layout.family != family:
        raise ValueError(f"layout is for {layout.family!r}, not {family!r}")


def clip_box(box: Sequence[float] | None, size: tuple[float, float]) -> Box | None:
    """Clip ``box`` to ``[0, width] × [0, height]``; ``None`` if non-finite or empty after clipping."""
    if box is None or len(box) != 4:
        return None
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    w, h = size
    x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def model_to_original(family: str, box: Sequence[float] | None, layout: VisualLayout) -> Box | None:
    """Map a box in model units to original pixels: clip to the frame, map, clip to the image."""
    _check_layout(family, layout)
    if box is None:
        return None
    sx, sy = _frame_scale(family, layout)
    b = _valid(list(box))
    if b is None:
        return None
    frame_box = clip_box((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), layout.frame_size)
    if frame_box is None:
        return None
    return clip_box(tuple(layout.frame_to_original(frame_box).tolist()), layout.image_size)


def original_to_model(family: str, box: Sequence[float], layout: VisualLayout) -> Box:
    """Map an original-pixel box (e.g. a ground-truth box) to model units; no clipping.

    For the llava-hf LLaVA-1.5 crop frame a box outside the crop gets coordinates outside ``[0, 1]``.
    """
    _check_layout(family, layout)
    sx, sy = _frame_scale(family, layout)
    fx1, fy1, fx2, fy2 = layout.original_to_frame(np.asarray(box, dtype=np.float64)).tolist()
    return (fx1 / sx, fy1 / sy, fx2 / sx, fy2 / sy)


def parse_box(text: str, layout: VisualLayout) -> Box | None:
    """Parse a model answer and return its first box in ORIGINAL image pixels, or ``None``.

    Arguments:
        text: the generated answer.
        layout: the :class:`~d2pruner.layout.VisualLayout` of the image the model answered about (its
            ``family`` selects the answer format).
    """
    return model_to_original(layout.family, parse_model_box(layout.family, text), layout)


def format_answer(family: str, box: Sequence[float], label: str = "object") -> str:
    """Render a model-units box the way the family answers (for demos and round-trip tests)."""
    _check_family(family)
    x1, y1, x2, y2 = box
    if family == "qwen2_5_vl":
        coords = ", ".join(str(round(v)) for v in (x1, y1, x2, y2))
        return f'```json\n[\n\t{{"bbox_2d": [{coords}], "label": "{label}"}}\n]\n```'
    if family == "internvl":
        coords = ", ".join(str(round(v)) for v in (x1, y1, x2, y2))
        return f"<ref>{label}</ref><box>[[{coords}]]</box>"
    return "[" + ", ".join(f"{v:.2f}" for v in (x1, y1, x2, y2)) + "]"


def box_iou(a: Sequence[float] | np.ndarray | None, b: Sequence[float] | np.ndarray | None) -> float | np.ndarray:
    """Intersection over union of ``(x1, y1, x2, y2)`` boxes.

    Scalars for two single boxes (``0.0`` if either is ``None``, non-finite or empty); with arrays
    ``[..., 4]`` the result broadcasts to ``[...]``.
    """
    if a is None or b is None:
        return 0.0
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    iw = np.minimum(a_arr[..., 2], b_arr[..., 2]) - np.maximum(a_arr[..., 0], b_arr[..., 0])
    ih = np.minimum(a_arr[..., 3], b_arr[..., 3]) - np.maximum(a_arr[..., 1], b_arr[..., 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = np.clip(a_arr[..., 2] - a_arr[..., 0], 0.0, None) * np.clip(a_arr[..., 3] - a_arr[..., 1], 0.0, None)
    area_b = np.clip(b_arr[..., 2] - b_arr[..., 0], 0.0, None) * np.clip(b_arr[..., 3] - b_arr[..., 1], 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    iou = np.nan_to_num(iou, nan=0.0)
    return float(iou) if iou.ndim == 0 else iou
