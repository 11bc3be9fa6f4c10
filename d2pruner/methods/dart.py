"""DART (Wen et al. 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More"): keep pivots and, for each pivot, the tokens least similar to it.

This is *our* DART, which keeps exactly n; ``dart-official`` (dart_official.py) reproduces the official
code's selection. Differences from the official code (github.com/ZichenWen1/DART), all deliberate:
- The official code picks 4 visual pivots *and* 4 text pivots by the L1 norm of the layer keys, then drops
  the text pivots; it keeps ``4 + 8·⌊n/8⌋`` visual tokens. Here all ``num_pivots`` (default 8) pivots are
  visual tokens, and the ``n − num_pivots`` remaining slots are shared out so that exactly n are kept
  (the first ``(n − p) mod p`` pivots take one more).
- Pivots are visited in descending key norm (the official code iterates a Python ``set``); ties go to the
  lower index everywhere (the official code uses ``topk``, whose tie order is unspecified).
- The pivot norms are those of the keys given (the adapters pass pre-RoPE keys; the official code uses
  post-RoPE keys); without ``keys``, the pivot norms are taken on ``hidden`` (documented fallback).
- Similarity is the cosine of the raw hidden states entering layer K (the official code first applies the
  model's final norm).

Steps (``return_steps=True``): first the pivots, phase ``"pivot"``, by descending key norm
(``score`` = the L1 norm); then, pivot after pivot in that order, the tokens each pivot keeps, phase
``"duplicate-aware"``, least similar first (``score`` = −cosine similarity to the pivot, the value
maximised; ``pivot`` = the pivot's index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs, SelectionStep, ranked_steps
from d2pruner.ops import top_n


def pivot_quotas(extra: int, num_pivots: int) -> list[int]:
    """Share ``extra`` slots among ``num_pivots`` pivots as evenly as possible, earlier pivots first."""
    base, rest = divmod(extra, num_pivots)
    return [base + (1 if i < rest else 0) for i in range(num_pivots)]


def duplication_aware_selection(
    hidden: torch.Tensor,
    pivot_scores: torch.Tensor,
    n: int,
    num_pivots: int,
    *,
    record: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """DART's selection with exactly n kept.

    Args:
        hidden: [N, D] features for cosine similarity.
        pivot_scores: [N] pivot ranking (L1 norm of keys).
        n: number to keep, 1 <= n < N.
        num_pivots: p ≥ 1.
        record: optional list; for each pivot with a non-zero quota, ``(picks, dissimilarity of picks)`` is
            appended (dissimilarity = −cosine similarity to that pivot).
    Returns:
        [n] int64 indices (pivots first, then each pivot's picks).
    """
    num_pivots = min(num_pivots, n)
    pivots = top_n(pivot_scores, num_pivots)
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    similarity = unit[pivots] @ unit.mT  # [p, N]
    available = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    available[pivots] = False
    kept = [pivots]
    for row, quota in zip(similarity, pivot_quotas(n - num_pivots, num_pivots), strict=True):
        if quota == 0:
            continue
        dissimilarity = torch.where(available, -row, torch.full_like(row, -float("inf")))
        picks = top_n(dissimilarity, quota)
        available[picks] = False
        kept.append(picks)
        if record is not None:
            record.append((picks, dissimilarity[picks]))
    return torch.cat(kept)


@dataclass
class DART(Method):
    """Duplication-aware token reduction (our exact-n variant; see ``dart-official`` for the official one).

    Arguments:
        num_pivots: number of pivot tokens p ≥ 1 (official: 4 visual + 4 text; here 8 visual).
    Inputs: ``hidden`` [N, D]; ``keys`` [N, Dk] optional (pivots by their L1 norm, else by hidden's).
    """

    name: ClassVar[str] = "dart"
    requires: ClassVar[tuple[str, ...]] = ("hidden",)

    num_pivots: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.num_pivots, bool) or not isinstance(self.num_pivots, int) or self.num_pivots < 1:
            raise ValueError(f"num_pivots must be an integer >= 1; got {self.num_pivots!r}")

    def _pivot_scores(self, inputs: SelectionInputs) -> torch.Tensor:
        source = inputs.keys if inputs.keys is not None else inputs.hidden
        return source.float().abs().sum(dim=-1)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        return duplication_aware_selection(inputs.hidden, self._pivot_scores(inputs), n, self.num_pivots)

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        pivot_scores = self._pivot_scores(inputs)
        record: list[tuple[torch.Tensor, torch.Tensor]] = []
        kept = duplication_aware_selection(inputs.hidden, pivot_scores, n, self.num_pivots, record=record)
        pivots = kept[: min(self.num_pivots, n)]
        steps = ranked_steps(pivots, pivot_scores, "pivot")
        # quotas are non-increasing, so the pivots with picks are the first len(record) ones
        for pivot, (picks, values) in zip(pivots.tolist()[: len(record)], record, strict=True):
            steps += [
                SelectionStep(token=t, phase="duplicate-aware", score=v, pivot=pivot)
                for t, v in zip(picks.tolist(), values.tolist(), strict=True)
            ]
        return steps
