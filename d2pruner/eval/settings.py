"""The plugin's ``--model_args``, validated once: ``pretrained=…,method=…,keep_ratio=…|keep=…,layer=…,…``.

:func:`parse_model_args` turns the dictionary lmms-eval parsed from ``--model_args`` (values already converted:
``"0.5"`` → 0.5, ``"64"`` → 64, ``"true"`` → True) into an :class:`EvalSettings`; every bad argument raises a
``ValueError`` that names it. Nothing here imports lmms-eval, so it is tested on every stack.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from d2pruner.methods import METHODS, method_parameters

#: ``method=none`` (or no method) evaluates the unpruned model through the same code path
UNPRUNED = "none"
PRESETS = ("understanding", "localization")
PRIORS = ("auto", "natural", "content-free", "uniform")
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: the plugin's own arguments; a method's hyperparameters (``alpha``, ``theta``, ``r_pivot``, …) come on top
PLUGIN_ARGS = (
    "pretrained",
    "method",
    "keep_ratio",
    "keep",
    "layer",
    "preset",
    "prior",
    "batch_size",
    "max_new_tokens",
    "device",
    "dtype",
)


@dataclass(frozen=True)
class EvalSettings:
    """One evaluation run's model settings.

    Attributes:
        pretrained: hub id, local checkpoint folder or ``tiny-*`` name (as for ``d2pruner.load``).
        method: a ``d2pruner.METHODS`` name, or None for the unpruned model.
        keep_ratio / keep: the budget (exactly one with a method, none without).
        layer: K, or None for the preset's (else 2).
        preset: ``"understanding"`` / ``"localization"`` or None.
        prior: ``"auto"``, ``"natural"``, ``"content-free"`` or ``"uniform"``.
        batch_size: requests handed to ``Analyzer.generate`` at once.
        max_new_tokens: overrides the task's ``max_new_tokens`` when set.
        device: torch device string, or None (the process's accelerator device).
        dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        method_params: the method's hyperparameters given explicitly.
    """

    pretrained: str
    method: str | None = None
    keep_ratio: float | None = None
    keep: int | None = None
    layer: int | None = None
    preset: str | None = None
    prior: str = "auto"
    batch_size: int = 1
    max_new_tokens: int | None = None
    device: str | None = None
    dtype: str = "auto"
    method_params: dict = field(default_factory=dict)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The dtype for ``d2pruner.load`` (None: its default)."""
        return DTYPES[self.dtype]

    def generate_kwargs(self) -> dict:
        """The keyword arguments of ``Analyzer.generate`` that this run fixes (grounding and length come per task)."""
        kwargs: dict = {"method": self.method, "layer": self.layer, "preset": self.preset, "prior": self.prior}
        if self.method is not None:
            kwargs.update({"keep_ratio": self.keep_ratio, "keep": self.keep, **self.method_params})
        return kwargs


def _method_names() -> list[str]:
    return sorted(METHODS)


def _method_parameters(method: str) -> list[str]:
    return method_parameters(METHODS[method])


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _method(value) -> str | None:
    if value is None or (isinstance(value, str) and value.lower() == UNPRUNED):
        return None
    names = _method_names()
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"method must be one of {UNPRUNED}, {', '.join(names)}; got {value!r}")
    return value


def _keep_ratio(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {value!r}")
    return float(value)


def _budget(method: str | None, keep_ratio, keep) -> tuple[float | None, int | None]:
    if method is None:
        given = [name for name, value in (("keep_ratio", keep_ratio), ("keep", keep)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} needs a method (method=none is the unpruned model)")
        return None, None
    if (keep_ratio is None) == (keep is None):
        raise ValueError(f"method={method} needs exactly one of keep_ratio (a fraction in (0, 1]) and keep (a count)")
    if keep_ratio is not None:
        return _keep_ratio(keep_ratio), None
    return None, _positive_int("keep", keep)


def _method_params(method: str | None, params: Mapping[str, object]) -> dict:
    if not params:
        return {}
    if method is None:
        known = {p for name in _method_names() for p in _method_parameters(name)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown model_args {unknown}: the plugin takes {', '.join(PLUGIN_ARGS)} and a "
                             f"method's hyperparameters ({', '.join(sorted(known))})")
        raise ValueError(f"{', '.join(sorted(params))} need(s) a method (method=none is the unpruned model)")
    takes = _method_parameters(method)
    unknown = sorted(set(params) - set(takes))
    if unknown:
        own = ", ".join(takes) if takes else "no hyperparameters"
        raise ValueError(
            f"unknown model_args {unknown}: the plugin takes {', '.join(PLUGIN_ARGS)}, and method {method} takes {own}"
        )
    for name, value in params.items():
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    return dict(params)


def _batch_size(value) -> int:
    if isinstance(value, str) and value.strip().isdigit():  # lmms-eval's --batch_size arrives as text
        value = int(value)
    if isinstance(value, str) and value.startswith("auto"):
        raise ValueError(f"batch_size={value} is not supported: give a number of requests per generate call")
    return _positive_int("batch_size", value)


def _device(value) -> str | None:
    if value is None:
        return None
    try:
        torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as cuda, cuda:0 or cpu; got {value!r}") from err
    return str(value)


def parse_model_args(args: Mapping[str, object]) -> EvalSettings:
    """Validate the plugin's model arguments (as lmms-eval parsed them from ``--model_args``).

    Arguments:
        args: name → value; ``pretrained`` is required; a method's hyperparameters are accepted by name.
    Raises:
        ValueError: naming the first bad or unknown argument.
    """
    args = dict(args)
    pretrained = args.pop("pretrained", None)
    if not isinstance(pretrained, str) or not pretrained.strip():
        raise ValueError("pretrained is required: a hub id, a local checkpoint folder or a tiny-* model name")
    method = _method(args.pop("method", None))
    keep_ratio, keep = _budget(method, args.pop("keep_ratio", None), args.pop("keep", None))
    layer = args.pop("layer", None)
    preset = args.pop("preset", None)
    max_new_tokens = args.pop("max_new_tokens", None)
    settings = EvalSettings(
        pretrained=pretrained.strip(),
        method=method,
        keep_ratio=keep_ratio,
        keep=keep,
        layer=None if layer is None else _positive_int("layer", layer),
        preset=None if preset is None else _choice("preset", preset, PRESETS),
        prior=_choice("prior", args.pop("prior", "auto"), PRIORS),
        batch_size=_batch_size(args.pop("batch_size", 1)),
        max_new_tokens=None if max_new_tokens is None else _positive_int("max_new_tokens", max_new_tokens),
        device=_device(args.pop("device", None)),
        dtype=_choice("dtype", args.pop("dtype", "auto"), tuple(DTYPES)),
        method_params={},
    )
    return dataclasses.replace(settings, method_params=_method_params(method, args))
