"""Small tensor utilities shared by the methods, the graph and the plots (torch only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Grid = tuple[int, int]


@dataclass(frozen=True)
class GridView:
    """One row-major grid of visual tokens inside the list of N candidate tokens.

    Attributes:
        name: ``"image"``, ``"base"`` / ``"highres"`` (LLaVA-NeXT), ``"tile0"`` … / ``"thumbnail"`` (InternVL).
        rows, cols: shape in tokens.
        offset: index of the grid's first token among the N candidates (tokens ``offset … offset + size − 1``).
    """

    name: str
    rows: int
    cols: int
    offset: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


def check_count(n: object) -> int:
    """Validate a keep count: an integer ≥ 1."""
    if isinstance(n, bool) or not isinstance(n, int):
        if isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point():
            n = int(n)
        else:
            raise ValueError(f"n must be an integer >= 1 (the number of tokens to keep); got {n!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1 (the number of tokens to keep); got {n}")
    return n


def check_unit_interval(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise a ValueError unless ``value`` is a finite number in [0, 1] (ends optionally open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [0, 1]; got {value!r}")
    below = value <= 0 if low_open else value < 0
    above = value >= 1 if high_open else value > 1
    if below or above:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}; got {value}")


def top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n largest ``scores`` [N]; ties go to the lower index (unsorted by index)."""
    return descending_order(scores)[:n]


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """All indices of ``scores`` [N] by descending value, ties by ascending index."""
    return torch.sort(scores, descending=True, stable=True).indices


def cosine_similarity_matrix(features: torch.Tensor, *, symmetric: bool = True) -> torch.Tensor:
    """Cosine similarity of all pairs of rows, in float32.

    Args:
        features: [N, D] any floating dtype.
        symmetric: make the result bit-symmetric (matmul kernels need not be); costs one N×N pass.
    Returns:
        [N, N] float32; a zero row has similarity 0 with everything.
    """
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    sim = unit @ unit.mT
    return torch.maximum(sim, sim.mT) if symmetric else sim


def all_finite(values: torch.Tensor) -> bool:
    """Whether every entry is finite — exact, and one cheap reduction in the common case.

    A float32 sum is finite iff no entry is NaN/inf, unless finite entries overflow it; only then is the
    elementwise test run.
    """
    if bool(torch.isfinite(values.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(values).all())


def as_grids(grid: Grid | Sequence[Grid] | None) -> tuple[Grid, ...]:
    """Normalise ``grid`` — one (h, w) or a sequence of them — to a tuple of (h, w) pairs."""
    if grid is None:
        return ()
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    items = list(grid)
    if len(items) == 2 and all(_is_int(v) for v in items):
        items = [tuple(items)]
    grids = []
    for item in items:
        pair = tuple(item) if isinstance(item, (tuple, list)) else None
        if pair is None or len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
            raise ValueError(f"grid must be (h, w) or a list of (h, w) with positive integers; got {grid!r}")
        grids.append((int(pair[0]), int(pair[1])))
    if not grids:
        raise ValueError("grid must not be empty")
    return tuple(grids)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
