"""Maximal marginal relevance, the selection rule of IDPruner (arXiv 2602.13315).

IDPruner scores importance with a trained selector that cannot be downloaded here, so importance is a
hyperparameter: D²Pruner's relative (debiased) attention by default, or the raw attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs, SelectionStep, recorded_steps
from d2pruner.methods.d2pruner import relative_attention
from d2pruner.ops import check_unit_interval, cosine_similarity_matrix

IMPORTANCE_SOURCES = ("relative", "attention")


def min_max_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Scale ``scores`` [N] to [0, 1] (float32); a constant vector becomes all zeros."""
    scores = scores.float()
    low, high = scores.min(), scores.max()
    if high <= low:
        return torch.zeros_like(scores)
    return (scores - low) / (high - low)


def mmr_selection(
    importance: torch.Tensor,
    similarity: torch.Tensor,
    n: int,
    lam: float,
    *,
    record: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy MMR: first argmax importance, then argmax ``λ·imp − (1−λ)·max sim to the picked set``.

    Args:
        importance: [N] float32 in [0, 1].
        similarity: [N, N] float32 cosine similarity.
        n: number to pick, 1 <= n <= N.
        lam: λ in [0, 1].
        record: optional [n] float tensor, filled with the value that decided each pick (the first pick's
            importance, then each pick's MMR score).
    Returns:
        [n] int64 indices in pick order (ties to the lower index).
    """
    picks = torch.empty(n, dtype=torch.long, device=importance.device)
    picks[0] = torch.argmax(importance)
    if record is not None:
        record[0] = importance[picks[0]]
    max_sim = similarity[picks[0]].clone()
    for step in range(1, n):  # inherently sequential
        score = lam * importance - (1.0 - lam) * max_sim
        score[picks[:step]] = -float("inf")
        pick = torch.argmax(score)
        picks[step] = pick
        if record is not None:
            record[step] = score[pick]
        max_sim = torch.maximum(max_sim, similarity[pick])
    return picks


@dataclass
class MMR(Method):
    """Importance–diversity trade-off by maximal marginal relevance.

    Arguments:
        lam: λ, weight of importance against redundancy, in [0, 1] (IDPruner: 0.5).
        importance: ``"relative"`` (attention / prior, D²Pruner eq. 3; raw attention without a prior)
            or ``"attention"`` (raw attention), or a [N] tensor of scores from any other selector.
    Inputs: ``attention`` [N] (unless importance is a tensor), ``hidden`` [N, D]; ``prior`` + ``grid``
    optional.

    Steps: ``"greedy"`` — the picks in order; ``score`` = the first pick's (min–max normalised) importance,
    then each pick's MMR score ``λ·imp − (1−λ)·max cosine to the tokens picked before it``.
    """

    name: ClassVar[str] = "mmr"
    requires: ClassVar[tuple[str, ...]] = ("hidden",)

    lam: float = 0.5
    importance: str | torch.Tensor = "relative"

    def __post_init__(self) -> None:
        check_unit_interval("lam", self.lam)
        if isinstance(self.importance, torch.Tensor):
            if self.importance.ndim != 1 or not torch.isfinite(self.importance).all():
                raise ValueError("importance as a tensor must be 1-D [N] with finite values")
        elif self.importance not in IMPORTANCE_SOURCES:
            raise ValueError(f"importance must be one of {IMPORTANCE_SOURCES} or a [N] tensor; got {self.importance!r}")

    def _importance(self, inputs: SelectionInputs) -> torch.Tensor:
        if isinstance(self.importance, torch.Tensor):
            if self.importance.shape[0] != inputs.num_tokens:
                raise ValueError(f"importance has {self.importance.shape[0]} scores; expected N = {inputs.num_tokens}")
            return self.importance.to(inputs.hidden.device)
        if inputs.attention is None:
            raise ValueError("method 'mmr' needs attention (or an importance tensor); got None")
        if self.importance == "attention":
            return inputs.attention
        return relative_attention(inputs.attention, inputs.priors, inputs.grids)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        importance = min_max_normalize(self._importance(inputs))
        return mmr_selection(importance, cosine_similarity_matrix(inputs.hidden), n, self.lam)

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        importance = min_max_normalize(self._importance(inputs))
        record = torch.empty(n, dtype=importance.dtype, device=importance.device)
        picks = mmr_selection(importance, cosine_similarity_matrix(inputs.hidden), n, self.lam, record=record)
        return recorded_steps(picks, record, "greedy")
