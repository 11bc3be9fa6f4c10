"""Pruning inside a transformers model: the :func:`prune` context manager (hooks, one ``try/finally``), the early-exit
:func:`capture`, and the state they fill."""

from __future__ import annotations

from d2pruner.pruning.hooks import PruneHooks, capture, find_cache, prune
from d2pruner.pruning.state import CACHE_ARGUMENT_NAMES, Prefix, PruneInputs, PruneState, RowState, SelectFn

__all__ = [
    "CACHE_ARGUMENT_NAMES",
    "Prefix",
    "PruneHooks",
    "PruneInputs",
    "PruneState",
    "RowState",
    "SelectFn",
    "capture",
    "find_cache",
    "prune",
]
