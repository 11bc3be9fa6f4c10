"""Token-selection methods: a registry of named methods and the one entry point :func:`select`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from d2pruner.methods.base import Method, SelectionInputs
from d2pruner.methods.d2pruner import D2Pruner, D2PrunerSemanticOnly, DebiasedImportance, relative_attention
from d2pruner.methods.dart import DART
from d2pruner.methods.divprune import DivPrune
from d2pruner.methods.fastv import FastV
from d2pruner.methods.mmr import MMR
from d2pruner.ops import Grid, all_finite, as_grids
from d2pruner.priors import check_map

METHODS: dict[str, type[Method]] = {
    method.name: method for method in (FastV, DART, DivPrune, MMR, D2Pruner, DebiasedImportance, D2PrunerSemanticOnly)
}

__all__ = [
    "DART",
    "METHODS",
    "MMR",
    "D2Pruner",
    "D2PrunerSemanticOnly",
    "DebiasedImportance",
    "DivPrune",
    "FastV",
    "Method",
    "SelectionInputs",
    "build_method",
    "make_inputs",
    "method_parameters",
    "relative_attention",
    "select",
]


def build_method(method: str | Method, **params: object) -> Method:
    """Instantiate a registered method with its hyperparameters (or pass a built one through)."""
    if isinstance(method, Method):
        if params:
            raise ValueError("pass hyperparameters either to the method object or to select(), not both")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[method]
    allowed = method_parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"method {method!r} has no parameter(s) {unknown}; its parameters are {allowed or 'none'}")
    return cls(**params)


def method_parameters(method: type[Method]) -> list[str]:
    """The hyperparameters a method takes (its dataclass fields that are set at construction)."""
    return [field.name for field in dataclasses.fields(method) if field.init]


def select(
    method: str | Method,
    *,
    n: int,
    hidden: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    grid: Grid | Sequence[Grid] | None = None,
    prior: torch.Tensor | Sequence[torch.Tensor] | None = None,
    keys: torch.Tensor | None = None,
    **params: object,
) -> torch.Tensor:
    """Select the visual tokens to keep.

    Arguments:
        method: a name from :data:`METHODS` (``"fastv"``, ``"dart"``, ``"divprune"``, ``"mmr"``,
            ``"d2pruner"``, ``"d2pruner-di"``, ``"d2pruner-nospatial"``) or a method object.
        n: how many tokens to keep (≥ 1); n ≥ N keeps all.
        hidden: [N, D] visual hidden states entering layer K.
        attention: [N] attention of the last prompt token to the visual tokens at layer K−1.
        grid: (h, w) with N = h·w (row-major), or a list of grids concatenated in order (multi-grid
            layouts; spatial neighbours only inside a grid).
        prior: the positional-bias prior [h', w'] (bilinearly resized to each grid), or one per grid.
        keys: [N, Dk] layer-(K−1) keys (DART's pivots).
        **params: the method's hyperparameters (see its dataclass).
    Returns:
        [min(n, N)] int64 sorted unique indices, on the inputs' device.
    """
    chosen = build_method(method, **params)
    return chosen.select(make_inputs(hidden=hidden, attention=attention, grid=grid, prior=prior, keys=keys), n)


def make_inputs(
    *,
    hidden: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    grid: Grid | Sequence[Grid] | None = None,
    prior: torch.Tensor | Sequence[torch.Tensor] | None = None,
    keys: torch.Tensor | None = None,
) -> SelectionInputs:
    """Validate and bundle selection inputs; every problem is a ValueError saying what was expected."""
    _check_tensor("hidden", hidden, ndim=2)
    _check_tensor("attention", attention, ndim=1)
    _check_tensor("keys", keys, ndim=2)
    num_tokens = _token_count(hidden=hidden, attention=attention, keys=keys)
    grids = as_grids(grid)
    if grids and sum(h * w for h, w in grids) != num_tokens:
        raise ValueError(f"grid {list(grids)} holds {sum(h * w for h, w in grids)} tokens; expected N = {num_tokens}")
    _check_same_device(hidden=hidden, attention=attention, keys=keys)
    return SelectionInputs(
        num_tokens=num_tokens,
        hidden=hidden,
        attention=None if attention is None else attention.float(),
        grids=grids,
        priors=_check_priors(prior, grids),
        keys=keys,
    )


def _check_tensor(name: str, value: torch.Tensor | None, *, ndim: int) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim != ndim:
        expected = "[N]" if ndim == 1 else "[N, D]"
        raise ValueError(f"{name} must be {ndim}-D {expected}; got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got {value.dtype}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} is empty: there must be at least one visual token")
    if not all_finite(value):
        raise ValueError(f"{name} contains NaN or inf values")


def _token_count(**tensors: torch.Tensor | None) -> int:
    counts = {name: t.shape[0] for name, t in tensors.items() if t is not None}
    if not counts:
        raise ValueError("select() needs at least one of hidden, attention or keys")
    if len(set(counts.values())) > 1:
        raise ValueError(f"inputs disagree on the number of visual tokens N: {counts}")
    return next(iter(counts.values()))


def _check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs must be on one device; got {devices}")


def _check_priors(
    prior: torch.Tensor | Sequence[torch.Tensor] | None, grids: tuple[Grid, ...]
) -> tuple[torch.Tensor, ...] | None:
    if prior is None:
        return None
    if not grids:
        raise ValueError("a prior needs the token grid: pass grid=(h, w)")
    priors = [prior] if isinstance(prior, torch.Tensor) else list(prior)
    if len(priors) == 1:
        priors = priors * len(grids)
    if len(priors) != len(grids):
        raise ValueError(f"got {len(priors)} priors for {len(grids)} grids; pass one prior or one per grid")
    for item in priors:
        check_map(item, "prior")
    return tuple(priors)
