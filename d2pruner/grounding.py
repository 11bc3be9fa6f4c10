"""Grounding boxes, the parts every family shares: numbers out of an answer, model units ↔ original pixels, IoU.

What differs per family — its grounding prompt, its answer markup, the units of its numbers and the frame they
refer to — lives in the family's file (``d2pruner/families/*.py``, :meth:`Family.parse_box`); the table of all of
them is in the README. Every family answers with one box in its own units, expressed in the *model frame* of its
:class:`~d2pruner.geometry.VisualLayout` (the image the model saw as a whole); the layout maps the frame to
ORIGINAL image pixels, so boxes and token heatmaps always agree on the geometry.

Parsing policy (never raises on model text):

* the *first* box of the answer is used (each family says what "first" means for its markup; the fallback is the
  first bracketed group of exactly four numbers);
* it must hold exactly four finite numbers, else ``None`` (NaN / inf / 3 or 5 numbers / truncated text);
* reversed or zero-size boxes (``x2 <= x1`` or ``y2 <= y1``) are ``None`` — the formats define the order
  (top-left, bottom-right), and an evaluation should score a reversed box as a miss, not silently fix it;
* coordinates beyond the frame (e.g. ``1.02`` on a 0–1 scale, ``1004`` on 0–1000) are clipped to the frame;
  a box that is empty after clipping is ``None``.

Boxes are ``(x1, y1, x2, y2)`` float tuples; in original pixels an image of width ``W`` spans ``[0, W]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from d2pruner.geometry import Box, VisualLayout

__all__ = [
    "Box",
    "box_iou",
    "bracket_body",
    "clip_box",
    "first_box",
    "four_numbers",
    "model_to_original",
    "original_to_model",
    "valid_box",
]

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FOUR = re.compile(rf"[\[(]\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*[\])]")
_BRACKET = re.compile(r"\s*\[([^\[\]]*)\]")


def valid_box(vals: Sequence[float]) -> Box | None:
    """Four finite numbers forming a top-left / bottom-right box, else ``None``."""
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        return None
    x1, y1, x2, y2 = (float(v) for v in vals)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def four_numbers(body: str) -> Box | None:
    """``"a, b, c, d"`` → a :func:`valid_box` of four floats, else ``None``."""
    parts = [p.strip() for p in body.split(",")]
    if len(parts) != 4:
        return None
    try:
        return valid_box([float(p) for p in parts])
    except ValueError:
        return None


def first_box(text: str) -> Box | None:
    """The first bracketed group of exactly four numbers (``[a, b, c, d]`` or ``(a, b, c, d)``), else ``None``."""
    m = _FOUR.search(text)
    return valid_box([float(g) for g in m.groups()]) if m else None


def bracket_body(text: str, start: int) -> str | None:
    """Content of the ``[...]`` that opens at ``text[start:]`` (after whitespace), or ``None``."""
    m = _BRACKET.match(text, start)
    return m.group(1) if m else None


def _frame_scale(units: float | None, layout: VisualLayout) -> tuple[float, float]:
    """Frame pixels per model unit along x and y (``units`` = model units per frame side; None = pixels)."""
    fw, fh = layout.frame_size
    return (1.0, 1.0) if units is None else (fw / units, fh / units)


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


def model_to_original(box: Sequence[float] | None, layout: VisualLayout, units: float | None) -> Box | None:
    """Map a box in model units to original pixels: clip to the frame, map, clip to the image.

    Arguments:
        box: the parsed box in the model's units, or None.
        layout: the layout of the image the model answered about.
        units: model units per frame side (1.0 for 0–1, 1000.0 for 0–1000), or None for frame pixels.
    """
    if box is None:
        return None
    sx, sy = _frame_scale(units, layout)
    b = valid_box(list(box))
    if b is None:
        return None
    frame_box = clip_box((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), layout.frame_size)
    if frame_box is None:
        return None
    return clip_box(tuple(layout.frame_to_original(frame_box).tolist()), layout.image_size)


def original_to_model(box: Sequence[float], layout: VisualLayout, units: float | None) -> Box:
    """Map an original-pixel box (e.g. a ground-truth box) to model units; no clipping.

    For the llava-hf LLaVA-1.5 crop frame a box outside the crop gets coordinates outside ``[0, 1]``.
    """
    sx, sy = _frame_scale(units, layout)
    fx1, fy1, fx2, fy2 = layout.original_to_frame(np.asarray(box, dtype=np.float64)).tolist()
    return (fx1 / sx, fy1 / sy, fx2 / sx, fy2 / sy)


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
