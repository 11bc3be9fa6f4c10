"""Where the visual tokens of one prompt sit in its sequence — what the families produce and the hooks consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d2pruner.ops import GridView


@dataclass
class VisualTokens:
    """Where the visual tokens of one prompt (one batch row) sit.

    Attributes:
        positions: [N] sequence positions of the *candidate* visual tokens, grid after grid, row-major. The
            selection's indices index this tensor.
        grids: the grids, in candidate order; their sizes sum to N.
        protected: sequence positions of visual tokens that are never pruned and are not candidates
            (LLaVA-NeXT's / LLaVA-OneVision's newline tokens).
        seq_len: the row's length L in the batch (padding included).
    """

    positions: torch.Tensor
    grids: list[GridView]
    protected: torch.Tensor
    seq_len: int

    def __post_init__(self) -> None:
        n = int(self.positions.numel())
        if sum(g.size for g in self.grids) != n:
            raise ValueError(f"grid sizes {[g.size for g in self.grids]} do not sum to {n} visual tokens")

    @property
    def num_candidates(self) -> int:
        return int(self.positions.numel())

    @property
    def grid_shapes(self) -> list[tuple[int, int]]:
        return [(g.rows, g.cols) for g in self.grids]
