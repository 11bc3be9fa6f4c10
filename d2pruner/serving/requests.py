"""From a visitor's raw values to the package's arguments, without validating twice.

The package validates analysis settings (``Analyzer.analyze`` raises a ``ValueError`` naming the parameter); here only
the values a UI or an API client naturally sends are converted — a slider's ``2.0`` to the integer 2, a task name to
``grounding=`` — and anything else is passed through unchanged so that the package's message is the one shown. What
the package does not know — the task name, a typed ground-truth box, the model id, the colour options — is checked
here, once, with messages that name the parameter. Gradio-free and torch-free at import.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Sequence

log = logging.getLogger("d2pruner.serving")

TASKS = ("Grounding", "Question")
#: the hyperparameters a UI offers for D²Pruner, routed only to requested methods that take them
METHOD_PARAMS = ("alpha", "theta", "r_pivot")
INTERNAL_ERROR = "internal error (logged)"


class UserError(ValueError):
    """A problem with the visitor's input; the message is shown as is."""


def as_int(value):
    """A whole number sent as a float (``2.0`` from a slider) → ``2``; anything else unchanged."""
    if isinstance(value, float) and math.isfinite(value) and value == round(value):
        return int(value)
    return value


def as_float(value):
    """An integer (``1`` from an API client) → ``1.0``; anything else unchanged (the package names bad values)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return float(value)
    return value


def check_task(task) -> bool:
    """``"Grounding"`` → True, ``"Question"`` → False (the ``grounding=`` argument)."""
    if task is None:
        return True
    if task not in TASKS:
        raise UserError(f"task must be one of {list(TASKS)}, got {task!r}")
    return task == "Grounding"


def method_params(methods, values: dict) -> dict:
    """The hyperparameters in ``values`` (α, θ, r_pivot) that at least one requested method takes; none when
    ``methods`` is malformed (the package's message about it is then the one shown)."""
    from d2pruner.methods import METHODS, method_parameters

    names = (methods,) if isinstance(methods, str) else methods
    if not isinstance(names, Sequence) or not all(isinstance(m, str) and m in METHODS for m in names):
        return {}
    takes = {p for m in names for p in method_parameters(METHODS[m])}
    return {k: as_float(v) for k, v in values.items() if k in takes}


def methods_value(methods):
    """A list from a checkbox group → a tuple; a single name stays a name; anything else is passed through."""
    if isinstance(methods, list):
        return tuple(methods)
    return methods


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_box(text, image_size: tuple[int, int], scale: float = 1.0) -> tuple[float, float, float, float] | None:
    """``"x1, y1, x2, y2"`` (pixels of the uploaded image) → a box in working-image pixels, clipped; None if blank.

    Raises:
        UserError: naming ``gt_box``: not four numbers, reversed or empty, or wholly outside the image.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise UserError(f"gt_box must be text 'x1, y1, x2, y2' in pixels; got {type(text).__name__}")
    if len(text) > 200:
        raise UserError("gt_box must be four numbers 'x1, y1, x2, y2' in pixels")
    nums = re.findall(_NUMBER, text)
    rest = re.sub(_NUMBER + r"|[\s,;()\[\]]", "", text)
    if len(nums) != 4 or rest:
        raise UserError(f"gt_box must be four numbers 'x1, y1, x2, y2' in pixels; got {text!r}")
    x1, y1, x2, y2 = (float(v) * scale for v in nums)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise UserError(f"gt_box needs x2 > x1 and y2 > y1 (top-left corner, then bottom-right); got {text!r}")
    w, h = image_size
    box = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise UserError(f"gt_box {text!r} lies outside the {w}×{h} image")
    return box


def check_choice(name: str, value, choices: Sequence):
    if value not in choices:
        raise UserError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if value in (None, 0, 1):
        return bool(value)
    raise UserError(f"{name} must be true or false, got {value!r}")


def user_message(error: BaseException, what: str) -> tuple[str, bool]:
    """(message, is the visitor's mistake) for an exception raised while handling a request.

    ``ValueError`` (the package's validation, :class:`UserError`, upload and model refusals) is the visitor's:
    its message is shown. Anything else is ours: logged with its traceback, shown as "internal error (logged)".
    """
    if isinstance(error, ValueError):
        return str(error), True
    log.error("%s failed", what, exc_info=error)
    return INTERNAL_ERROR, False
