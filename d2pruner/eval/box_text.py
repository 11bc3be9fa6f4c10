"""The grounding answer the plugin returns and the task's strict reading of it.

A found box is returned as exactly ``"[x1, y1, x2, y2]"`` — four fixed-point numbers in [0, 1] of the
ORIGINAL image's width and height, the format lmms-eval's RefCOCO metric parses. An answer without a usable
box is returned as ``"(no box) <the model's answer>"``; the strict task scores every response that is not
exactly a box string as a miss (IoU 0, every ACC 0, Center_ACC 0) and counts it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

#: prefix of a response whose answer held no usable box
NO_BOX = "(no box)"
_NUM = r"(-?\d+(?:\.\d+)?)"
_BOX = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]")
DIGITS = 4


def format_box(box: Sequence[float] | None, answer: str = "") -> str:
    """The response for a normalised box (``Generation.box_normalized``), or the no-box marker + the answer."""
    if box is None:
        return f"{NO_BOX} {answer}".rstrip()
    return "[" + ", ".join(f"{float(v):.{DIGITS}f}" for v in box) + "]"


def parse_box_text(text: str | None) -> list[float] | None:
    """The box of a response that is exactly ``"[x1, y1, x2, y2]"`` (surrounding whitespace allowed) with
    finite numbers, ``x2 > x1`` and ``y2 > y1``; anything else (the no-box marker, prose, a box inside a
    sentence) → None."""
    if not isinstance(text, str):
        return None
    match = _BOX.fullmatch(text.strip())
    if match is None:
        return None
    x1, y1, x2, y2 = (float(g) for g in match.groups())
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2, y2]
