"""Token-selection methods: a registry of named methods and the one entry point :func:`select`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from d2pruner.methods.base import Method, Selection, SelectionInputs, SelectionStep
from d2pruner.methods.d2pruner import D2Pruner, D2PrunerSemanticOnly, DebiasedImportance, relative_attention
from d2pruner.methods.dart import DART
from d2pruner.methods.dart_official import DARTOfficial
from d2pruner.methods.divprune import DivPrune
from d2pruner.methods.fastv import FastV
from d2pruner.methods.mmr import MMR
from d2pruner.ops import Grid, all_finite, as_grids
from d2pruner.priors import check_map

METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (FastV, DART, DivPrune, MMR, D2Pruner, DebiasedImportance, D2PrunerSemanticOnly, DARTOfficial)
}

__all__ = [
    "DART",
    "METHODS",
    "MMR",
    "D2Pruner",
    "D2PrunerSemanticOnly",
    "DARTOfficial",
    "DebiasedImportance",
    "DivPrune",
    "FastV",
    "Method",
    "Selection",
    "SelectionInputs",
    "SelectionStep",
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
    seq_keys: torch.Tensor | None = None,
    seq_normed: torch.Tensor | None = None,
    visual_index: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    return_steps: bool = False,
    **params: object,
) -> torch.Tensor | Selection:
    """Select the visual tokens to keep.

    Arguments:
        method: a name from :data:`METHODS` (``"fastv"``, ``"dart"``, ``"dart-official"``, ``"divprune"``,
            ``"mmr"``, ``"d2pruner"``, ``"d2pruner-di"``, ``"d2pruner-nospatial"``) or a method object.
        n: how many tokens to keep (≥ 1); n ≥ N keeps all (``dart-official`` keeps the official count,
            ``4 + 8·⌊n/8⌋``).
        hidden: [N, D] visual hidden states entering layer K.
        attention: [N] attention of the last prompt token to the visual tokens at layer K−1.
        grid: (h, w) with N = h·w (row-major), or a list of grids concatenated in order (multi-grid
            layouts; spatial neighbours only inside a grid).
        prior: the positional-bias prior [h', w'] (bilinearly resized to each grid), or one per grid.
        keys: [N, Dk] layer-(K−1) keys (DART's pivots).
        seq_keys: [L, Dk] post-RoPE layer-(K−1) keys of every token of the prompt, L = prompt length, heads
            concatenated (``dart-official``).
        seq_normed: [L, D] layer-(K−1) output (hidden states entering layer K) of every prompt token after
            the model's final norm (``dart-official``).
        visual_index: [N] integer sequence positions of the candidates, strictly increasing, in [0, L).
        text_mask: [L] bool, True at the prompt's text tokens, False at every visual token.
        return_steps: return a :class:`Selection` (the indices and the order they were chosen in) instead
            of the indices alone.
        **params: the method's hyperparameters (see its dataclass).
    Returns:
        [min(n, N)] int64 sorted unique indices, on the inputs' device; with ``return_steps=True`` a
        :class:`Selection` whose ``kept`` is that tensor.
    """
    if not isinstance(return_steps, bool):
        raise ValueError(f"return_steps must be a bool (True or False); got {return_steps!r}")
    chosen = build_method(method, **params)
    inputs = make_inputs(
        hidden=hidden,
        attention=attention,
        grid=grid,
        prior=prior,
        keys=keys,
        seq_keys=seq_keys,
        seq_normed=seq_normed,
        visual_index=visual_index,
        text_mask=text_mask,
    )
    if return_steps:
        return chosen.select_steps(inputs, n)
    return chosen.select(inputs, n)


def make_inputs(
    *,
    hidden: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
    grid: Grid | Sequence[Grid] | None = None,
    prior: torch.Tensor | Sequence[torch.Tensor] | None = None,
    keys: torch.Tensor | None = None,
    seq_keys: torch.Tensor | None = None,
    seq_normed: torch.Tensor | None = None,
    visual_index: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
) -> SelectionInputs:
    """Validate and bundle selection inputs; every problem is a ValueError saying what was expected.

    Shapes as in :func:`select`. ``visual_index`` is returned as int64; ``seq_keys`` / ``seq_normed`` /
    ``text_mask`` must agree on L, and ``text_mask`` must be False at every candidate.
    """
    _check_tensor("hidden", hidden, ndim=2)
    _check_tensor("attention", attention, ndim=1)
    _check_tensor("keys", keys, ndim=2)
    if seq_keys is None and seq_normed is None and visual_index is None and text_mask is None:
        sequence = {}  # the common case: no sequence-level inputs, nothing more to check
    else:
        _check_tensor("seq_keys", seq_keys, ndim=2, shape="[L, Dk]")
        _check_tensor("seq_normed", seq_normed, ndim=2, shape="[L, D]")
        visual_index = _check_visual_index(visual_index)
        _check_text_mask(text_mask)
        sequence = dict(seq_keys=seq_keys, seq_normed=seq_normed, visual_index=visual_index, text_mask=text_mask)
        _check_sequence(**sequence)
    num_tokens = _token_count(hidden=hidden, attention=attention, keys=keys, visual_index=visual_index)
    grids = as_grids(grid)
    if grids and sum(h * w for h, w in grids) != num_tokens:
        raise ValueError(f"grid {list(grids)} holds {sum(h * w for h, w in grids)} tokens; expected N = {num_tokens}")
    _check_same_device(hidden=hidden, attention=attention, keys=keys, **sequence)
    return SelectionInputs(
        num_tokens=num_tokens,
        hidden=hidden,
        attention=None if attention is None else attention.float(),
        grids=grids,
        priors=_check_priors(prior, grids),
        keys=keys,
        seq_keys=seq_keys,
        seq_normed=seq_normed,
        visual_index=visual_index,
        text_mask=text_mask,
    )


def _check_tensor(name: str, value: torch.Tensor | None, *, ndim: int, shape: str | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim != ndim:
        expected = shape or ("[N]" if ndim == 1 else "[N, D]")
        raise ValueError(f"{name} must be {ndim}-D {expected}; got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got {value.dtype}")
    if value.shape[0] == 0:
        what = "visual token" if shape is None else "token"
        raise ValueError(f"{name} is empty: there must be at least one {what}")
    if not all_finite(value):
        raise ValueError(f"{name} contains NaN or inf values")


def _check_visual_index(value: torch.Tensor | None) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"visual_index must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim != 1:
        raise ValueError(f"visual_index must be 1-D [N]; got shape {tuple(value.shape)}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise ValueError(f"visual_index must be an integer tensor of sequence positions; got {value.dtype}")
    if value.shape[0] == 0:
        raise ValueError("visual_index is empty: there must be at least one visual token")
    value = value.long()
    if int(value.min()) < 0:
        raise ValueError(f"visual_index must be non-negative sequence positions; got minimum {int(value.min())}")
    if value.shape[0] > 1 and not bool((value[1:] > value[:-1]).all()):
        raise ValueError("visual_index must be strictly increasing (candidates in sequence order, no repeats)")
    return value


def _check_text_mask(value: torch.Tensor | None) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"text_mask must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim != 1 or value.dtype != torch.bool:
        raise ValueError(f"text_mask must be a 1-D bool tensor [L]; got {value.dtype} of shape {tuple(value.shape)}")


def _check_sequence(**tensors: torch.Tensor | None) -> None:
    """The sequence-level inputs agree on L; the candidates lie inside it and are not text."""
    lengths = {
        name: t.shape[0] for name, t in tensors.items() if t is not None and name != "visual_index"
    }
    if len(set(lengths.values())) > 1:
        raise ValueError(f"seq_keys, seq_normed and text_mask disagree on the prompt length L: {lengths}")
    visual_index, text_mask = tensors["visual_index"], tensors["text_mask"]
    if visual_index is None or not lengths:
        return
    length = next(iter(lengths.values()))
    if int(visual_index[-1]) >= length:
        raise ValueError(f"visual_index has position {int(visual_index[-1])}, outside the prompt of L = {length}")
    if text_mask is not None and bool(text_mask[visual_index.to(text_mask.device)].any()):
        raise ValueError("text_mask is True at a visual token of visual_index; text and visual tokens must not overlap")


def _token_count(**tensors: torch.Tensor | None) -> int:
    counts = {name: t.shape[0] for name, t in tensors.items() if t is not None}
    if not counts:
        raise ValueError("select() needs at least one of hidden, attention or keys (or visual_index)")
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
