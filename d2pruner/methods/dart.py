"""DART (Wen et al. 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More"): keep pivots and, for each pivot, the tokens least similar to it.

Differences from the official code (github.com/ZichenWen1/DART), all deliberate:
- The official code picks 4 visual pivots *and* 4 text pivots by the L1 norm of the layer keys, then drops
  the text pivots; it keeps ``4 + 8·⌊n/8⌋`` visual tokens. Here all ``num_pivots`` (default 8) pivots are
  visual tokens, and the ``n − num_pivots`` remaining slots are shared out so that exactly n are kept
  (the first ``(n − p) mod p`` pivots take one more).
- Pivots are visited in descending key norm (the official code iterates a Python ``set``); ties go to the
  lower index everywhere (the official code uses ``topk``, whose tie order is unspecified).
- Without ``keys``, the pivot norms are taken on ``hidden`` (documented fallback).
Similarity is the cosine of the hidden states entering layer K, as in the official ``last_layer_state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs
from d2pruner.ops import top_n


def pivot_quotas(extra: int, num_pivots: int) -> list[int]:
    """Share ``extra`` slots among ``num_pivots`` pivots as evenly as possible, earlier pivots first."""
    base, rest = divmod(extra, num_pivots)
    return [base + (1 if i < rest else 0) for i in range(num_pivots)]


def duplication_aware_selection(
    hidden: torch.Tensor, pivot_scores: torch.Tensor, n: int, num_pivots: int
) -> torch.Tensor:
    """DART's selection with exactly n kept.

    Args:
        hidden: [N, D] features for cosine similarity.
        pivot_scores: [N] pivot ranking (L1 norm of keys).
        n: number to keep, 1 <= n < N.
        num_pivots: p ≥ 1.
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
    return torch.cat(kept)


@dataclass
class DART(Method):
    """Duplication-aware token reduction.

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

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        source = inputs.keys if inputs.keys is not None else inputs.hidden
        pivot_scores = source.float().abs().sum(dim=-1)
        return duplication_aware_selection(inputs.hidden, pivot_scores, n, self.num_pivots)
