"""D²Pruner (AAAI 2026, "Debiased Importance and Structural Diversity for MLLM Token Pruning").

The paper is the specification (no official code is public):
1. Debiased importance: ``rel = attention / (prior resized to the grid + 1e-7)`` (eq. 3).
2. Hybrid graph: ``S_fused = α·Ŝ_sem + (1−α)·S_spat``; edge iff ``S_fused > θ`` (eqs. 5–7, graph.py).
3. ``n_p = ⌊n · r_pivot⌋`` pivots = the n_p largest ``rel``; pivots and their neighbours are excluded.
4. Greedy maximal independent set over the remaining tokens by descending ``rel`` until n are kept.
5. If candidates run out, fill with the not-yet-kept tokens by descending ``rel``.

Step 4 is computed in its exact parallel form (see :func:`greedy_independent_set`), no per-token loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from d2pruner.graph import hybrid_graph
from d2pruner.methods.base import Method, SelectionInputs
from d2pruner.ops import Grid, check_unit_interval, descending_order, top_n
from d2pruner.priors import resize_prior

PRIOR_EPS = 1e-7


def relative_attention(
    attention: torch.Tensor, priors: Sequence[torch.Tensor] | None, grids: Sequence[Grid]
) -> torch.Tensor:
    """Debiased importance ``attention / (prior_resized + 1e-7)`` (eq. 3); raw attention without a prior.

    Args:
        attention: [N] attention of the last prompt token to the visual tokens.
        priors: one 2-D prior per grid (bilinearly resized to its grid), or None.
        grids: the (h, w) grids of the N tokens, concatenated in order.
    Returns:
        [N] float32.
    """
    attention = attention.float()
    if priors is None:
        return attention
    resized = [resize_prior(p.to(attention.device), grid).flatten() for p, grid in zip(priors, grids, strict=True)]
    return attention / (torch.cat(resized) + PRIOR_EPS)


def greedy_independent_set(
    pairs: torch.Tensor, rank: torch.Tensor, candidates: torch.Tensor, limit: int
) -> torch.Tensor:
    """The first ``limit`` members (by rank) of the greedy maximal independent set of the candidates.

    Sequential rule: walk the candidates by ascending ``rank``; keep one unless a kept token is its
    neighbour. Exact parallel form used here: in rounds, every undecided candidate that outranks all its
    undecided candidate neighbours joins, and the neighbours of the joiners drop out. A token's fate in
    the sequential walk depends only on higher-ranked tokens, so both give the same set; the rounds stop
    as soon as the ``limit`` best-ranked members are settled. Each round is O(E) on the edge list.

    Args:
        pairs: [E, 2] int64 undirected edges (each pair once, no self loops).
        rank: [N] int64, a permutation (0 = highest priority).
        candidates: [N] bool, tokens allowed to join.
        limit: how many members are wanted (≥ 0).
    Returns:
        [m] int64 members in rank order, m = min(limit, size of the set).
    """
    num = rank.shape[0]
    src = torch.cat([pairs[:, 0], pairs[:, 1]])
    dst = torch.cat([pairs[:, 1], pairs[:, 0]])
    among_candidates = candidates[src] & candidates[dst]
    src, dst = src[among_candidates], dst[among_candidates]
    outranked = rank[dst] < rank[src]  # dst is decided before src in the walk
    blocked_node, blocking_node = src[outranked], dst[outranked]

    undecided = candidates.clone()
    joined = torch.zeros(num, dtype=torch.bool, device=rank.device)
    while limit > 0 and bool(undecided.any()):
        blocked = torch.zeros_like(undecided)
        blocked[blocked_node[undecided[blocking_node]]] = True
        joining = undecided & ~blocked
        joined |= joining
        dropped = torch.zeros_like(undecided)
        dropped[dst[joining[src]]] = True
        undecided &= ~(joining | dropped)
        if _settled(joined, undecided, rank, limit):
            break
    members = joined.nonzero().squeeze(1)
    return members[torch.argsort(rank[members])][:limit]


def _settled(joined: torch.Tensor, undecided: torch.Tensor, rank: torch.Tensor, limit: int) -> bool:
    """True when at least ``limit`` members outrank every undecided token (their order is final)."""
    if not bool(undecided.any()):
        return True
    frontier = rank[undecided].min()
    return int((joined & (rank < frontier)).sum()) >= limit


def pivot_count(n: int, r_pivot: float) -> int:
    """``⌊n · r_pivot⌋``, robust to binary rounding (0.29 · 100 gives 29, not 28)."""
    return min(n, math.floor(n * r_pivot + 1e-9))


def debiased_diverse_selection(rel: torch.Tensor, pairs: torch.Tensor, n: int, r_pivot: float) -> torch.Tensor:
    """Steps 3–5 of D²Pruner on precomputed scores and graph.

    Args:
        rel: [N] float32 debiased importance.
        pairs: [E, 2] int64 undirected edges of the hybrid graph.
        n: number to keep, 1 <= n < N.
        r_pivot: pivot ratio in [0, 1].
    Returns:
        [n] int64 indices: pivots, then independent-set members, then fill, each by descending ``rel``.
    """
    order = descending_order(rel)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=order.device)
    pivots = order[: pivot_count(n, r_pivot)]
    is_pivot = torch.zeros(rel.shape[0], dtype=torch.bool, device=rel.device)
    is_pivot[pivots] = True
    excluded = is_pivot.clone()
    excluded[pairs[:, 1][is_pivot[pairs[:, 0]]]] = True  # the pivots' neighbours, either side of a pair
    excluded[pairs[:, 0][is_pivot[pairs[:, 1]]]] = True
    members = greedy_independent_set(pairs, rank, ~excluded, n - pivots.shape[0])
    kept = torch.cat([pivots, members])
    if kept.shape[0] < n:
        taken = torch.zeros_like(excluded)
        taken[kept] = True
        kept = torch.cat([kept, order[~taken[order]][: n - kept.shape[0]]])
    return kept


@dataclass
class D2Pruner(Method):
    """Debiased importance + structural diversity (the full method).

    Arguments:
        alpha: α, weight of semantic similarity in the fused graph, in [0, 1] (paper: 0.5 for
            localization, 1.0 for understanding).
        theta: θ, edge threshold on the fused similarity, in [0, 1] (θ = 1 gives no edges).
        r_pivot: fraction of the budget taken by pivots, in [0, 1].
    Inputs: ``attention`` [N], ``hidden`` [N, D], ``grid``; ``prior`` optional.
    """

    name: ClassVar[str] = "d2pruner"
    requires: ClassVar[tuple[str, ...]] = ("attention", "hidden", "grid")

    alpha: float = 0.5
    theta: float = 0.8
    r_pivot: float = 0.7

    def __post_init__(self) -> None:
        check_unit_interval("alpha", self.alpha)
        check_unit_interval("theta", self.theta)
        check_unit_interval("r_pivot", self.r_pivot)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        rel = relative_attention(inputs.attention, inputs.priors, inputs.grids)
        graph = hybrid_graph(inputs.hidden, inputs.grids, alpha=self.alpha, theta=self.theta)
        return debiased_diverse_selection(rel, graph.edges, n, self.r_pivot)


@dataclass
class D2PrunerSemanticOnly(D2Pruner):
    """Ablation "SD without spatial": D²Pruner with α = 1 (graph from semantic similarity alone).

    α is fixed by the definition of the ablation (not a parameter); θ and r_pivot are.
    """

    name: ClassVar[str] = "d2pruner-nospatial"

    alpha: float = field(default=1.0, init=False)


@dataclass
class DebiasedImportance(Method):
    """Ablation "DI only": the n largest relative attentions (no diversity step).

    Inputs: ``attention`` [N]; ``prior`` + ``grid`` optional (without a prior this is FastV).
    """

    name: ClassVar[str] = "d2pruner-di"
    requires: ClassVar[tuple[str, ...]] = ("attention",)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        return top_n(relative_attention(inputs.attention, inputs.priors, inputs.grids), n)
