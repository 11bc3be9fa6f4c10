"""What a task's ``generation_kwargs`` ask of the plugin: grounding mode, the length, stop strings.

``Analyzer.generate`` decodes greedily, so a task that asks for sampling or beam search is refused (a
``ValueError`` naming the key) instead of being silently evaluated with greedy decoding. The task-level
signal for the strict grounding protocol is ``grounding: native`` in ``generation_kwargs`` (our task YAMLs
set it): the plugin then hands the raw referring expression to ``generate(..., grounding=True)`` — the
family's own grounding prompt and box frame — and answers with the box in [0, 1] of the original image.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

#: the value of ``generation_kwargs["grounding"]`` that turns the strict grounding protocol on
NATIVE_GROUNDING = "native"
#: used when neither the task nor the model args give ``max_new_tokens``
DEFAULT_MAX_NEW_TOKENS = 128
#: keys that only make sense for sampling or beam search; accepted at their greedy values
_GREEDY_VALUES = {"do_sample": (False, None), "num_beams": (1, None)}


@dataclass(frozen=True)
class TaskGeneration:
    """One request's decoding options.

    Attributes:
        grounding: the strict grounding protocol (the family's grounding prompt, a normalised box answer).
        max_new_tokens: greedy decoding length.
        until: stop strings; the answer is cut at the first one (not used in grounding mode, where the
            answer is the parsed box).
        ignored: keys of the task's ``generation_kwargs`` that have no effect here.
    """

    grounding: bool
    max_new_tokens: int
    until: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def _until(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise ValueError(f"generation_kwargs until must be a string or a list of strings, got {value!r}")


def _grounding(value) -> bool:
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("none", "off")):
        return False
    if value == NATIVE_GROUNDING:
        return True
    raise ValueError(f"generation_kwargs grounding must be {NATIVE_GROUNDING!r} (or absent), got {value!r}")


def _temperature(value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value != 0:
        raise ValueError(f"generation_kwargs temperature={value!r}: d2pruner decodes greedily (temperature 0 only)")


def task_generation(gen_kwargs: Mapping | None, max_new_tokens: int | None = None) -> TaskGeneration:
    """Read a request's ``generation_kwargs``.

    Arguments:
        gen_kwargs: the task's ``generation_kwargs`` (lmms-eval passes a copy with every request).
        max_new_tokens: the model args' value; it wins over the task's when given.
    Raises:
        ValueError: sampling / beam search asked for, a malformed ``until``, ``grounding`` or ``max_new_tokens``.
    """
    kwargs = dict(gen_kwargs or {})
    _temperature(kwargs.pop("temperature", None))
    for key, allowed in _GREEDY_VALUES.items():
        value = kwargs.pop(key, None)
        if value not in allowed:
            raise ValueError(f"generation_kwargs {key}={value!r}: d2pruner decodes greedily (one beam, no sampling)")
    grounding = _grounding(kwargs.pop("grounding", None))
    until = _until(kwargs.pop("until", None))
    task_tokens = kwargs.pop("max_new_tokens", None)
    length = max_new_tokens if max_new_tokens is not None else task_tokens
    if length is None:
        length = DEFAULT_MAX_NEW_TOKENS
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
        raise ValueError(f"generation_kwargs max_new_tokens must be an integer >= 1, got {length!r}")
    return TaskGeneration(grounding, int(length), until, tuple(sorted(kwargs)))


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop string (all of it when none occurs)."""
    cut = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
    return text[:cut]
