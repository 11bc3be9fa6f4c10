"""DivPrune (Alvar et al., CVPR 2025): keep a maximally diverse subset (max–min diversity problem)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs, SelectionStep, recorded_steps
from d2pruner.ops import cosine_similarity_matrix


def farthest_point_selection(distance: torch.Tensor, n: int, *, record: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy max–min selection on a distance matrix.

    First pick: the token whose nearest *other* token is farthest. Then repeatedly the token with the
    largest minimum distance to the picked set. Ties go to the lower index.

    Args:
        distance: [N, N] float, symmetric.
        n: number to pick, 1 <= n < N.
        record: optional [n] float tensor, filled with the value that decided each pick (the first pick's
            distance to its nearest other token, then each pick's minimum distance to the picked set).
    Returns:
        [n] int64 indices in pick order.
    """
    off_diagonal = distance.clone()
    off_diagonal.fill_diagonal_(float("inf"))
    nearest = off_diagonal.min(dim=1).values  # N >= 2 here: n < N
    picks = torch.empty(n, dtype=torch.long, device=distance.device)
    picks[0] = torch.argmax(nearest)
    if record is not None:
        record[0] = nearest[picks[0]]
    to_picked = distance[picks[0]].clone()
    to_picked[picks[0]] = -float("inf")
    for step in range(1, n):  # inherently sequential: each pick depends on all earlier ones
        pick = torch.argmax(to_picked)
        picks[step] = pick
        if record is not None:
            record[step] = to_picked[pick]
        to_picked = torch.minimum(to_picked, distance[pick])
        to_picked[picks[: step + 1]] = -float("inf")
    return picks


@dataclass
class DivPrune(Method):
    """Keep the n most mutually diverse tokens by cosine distance of their hidden states.

    Inputs: ``hidden`` [N, D]; distance = 1 − cosine similarity (computed in float32).

    Steps: ``"greedy"`` — the picks in order; ``score`` = the first pick's distance to its nearest other
    token, then each pick's minimum distance to the tokens picked before it (the max–min value).
    """

    name: ClassVar[str] = "divprune"
    requires: ClassVar[tuple[str, ...]] = ("hidden",)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        distance = 1.0 - cosine_similarity_matrix(inputs.hidden)
        return farthest_point_selection(distance, n)

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        distance = 1.0 - cosine_similarity_matrix(inputs.hidden)
        record = torch.empty(n, dtype=distance.dtype, device=distance.device)
        picks = farthest_point_selection(distance, n, record=record)
        return recorded_steps(picks, record, "greedy")
