"""D²Pruner (AAAI 2026, "Debiased Importance and Structural Diversity for MLLM Token Pruning").

The paper is the specification (no official code is public):
1. Debiased importance: ``rel = attention / (prior resized to the grid + 1e-7)`` (eq. 3).
2. Hybrid graph: ``S_fused = α·Ŝ_sem + (1−α)·S_spat``; edge iff ``S_fused > θ`` (eqs. 5–7, graph.py).
3. ``n_p = ⌊n · r_pivot⌋`` pivots = the n_p largest ``rel``; pivots and their neighbours are excluded.
4. Greedy maximal independent set over the remaining tokens by descending ``rel`` until n are kept.
5. If candidates run out, fill with the not-yet-kept tokens by descending ``rel``.

Step 4 is computed in its exact parallel form (see :func:`greedy_independent_set`), no per-token loop.

Two readings of Fig. 3 (``exclude_pivot_neighbours``): True (default) — the pivots *and their graph
neighbours* are removed before the independent set; False — the independent set runs on all non-pivot
tokens (a pivot's neighbour may be kept; pivots never block anything).

Steps (``return_steps=True``), in the order the sequential rule decides them:
- ``"pivot"``: the n_p pivots by descending ``rel`` (``score`` = rel); ``excluded`` = the pivot's graph
  neighbours that no earlier pivot excluded and that are not pivots themselves (empty with
  ``exclude_pivot_neighbours=False``).
- ``"independent-set"``: the sequential walk's members by descending ``rel`` (``score`` = rel);
  ``excluded`` = the member's neighbours not yet excluded (or kept) — they can no longer join.
- ``"fill"``: tokens added by descending ``rel`` when the independent set ran out (``excluded`` empty).
The steps are computed after the parallel result, on the CPU, in O(N + E) (plus one sort of the edges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from d2pruner.graph import hybrid_graph
from d2pruner.methods.base import Method, SelectionInputs, SelectionStep, ranked_steps
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


def debiased_diverse_selection(
    rel: torch.Tensor, pairs: torch.Tensor, n: int, r_pivot: float, *, exclude_pivot_neighbours: bool = True
) -> torch.Tensor:
    """Steps 3–5 of D²Pruner on precomputed scores and graph.

    Args:
        rel: [N] float32 debiased importance.
        pairs: [E, 2] int64 undirected edges of the hybrid graph.
        n: number to keep, 1 <= n < N.
        r_pivot: pivot ratio in [0, 1].
        exclude_pivot_neighbours: exclude the pivots' graph neighbours from the independent set (True) or
            run it on all non-pivot tokens (False).
    Returns:
        [n] int64 indices: pivots, then independent-set members, then fill, each by descending ``rel``.
    """
    return torch.cat(selection_phases(rel, pairs, n, r_pivot, exclude_pivot_neighbours=exclude_pivot_neighbours))


def selection_phases(
    rel: torch.Tensor, pairs: torch.Tensor, n: int, r_pivot: float, *, exclude_pivot_neighbours: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 3–5 of D²Pruner, phase by phase (arguments as :func:`debiased_diverse_selection`).

    Returns:
        ``(pivots, members, fill)``: int64 indices, each by descending ``rel``, n in all.
    """
    order = descending_order(rel)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=order.device)
    pivots = order[: pivot_count(n, r_pivot)]
    is_pivot = torch.zeros(rel.shape[0], dtype=torch.bool, device=rel.device)
    is_pivot[pivots] = True
    excluded = is_pivot.clone()
    if exclude_pivot_neighbours:
        excluded[pairs[:, 1][is_pivot[pairs[:, 0]]]] = True  # the pivots' neighbours, either side of a pair
        excluded[pairs[:, 0][is_pivot[pairs[:, 1]]]] = True
    members = greedy_independent_set(pairs, rank, ~excluded, n - pivots.shape[0])
    missing = n - pivots.shape[0] - members.shape[0]
    if missing > 0:
        taken = is_pivot.clone()
        taken[members] = True
        fill = order[~taken[order]][:missing]
    else:
        fill = order[:0]
    return pivots, members, fill


def phase_steps(
    rel: torch.Tensor,
    pairs: torch.Tensor,
    phases: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    exclude_pivot_neighbours: bool = True,
) -> list[SelectionStep]:
    """The steps of a D²Pruner selection, replayed on the CPU from its phases (see the module docstring).

    Args:
        rel: [N] debiased importance.
        pairs: [E, 2] int64 undirected edges the selection used.
        phases: ``(pivots, members, fill)`` from :func:`selection_phases`.
        exclude_pivot_neighbours: as in the selection.
    Returns:
        one :class:`SelectionStep` per kept token, pivots, then members in walk order, then fill.
    """
    num = rel.shape[0]
    pairs = pairs.cpu()
    src = torch.cat([pairs[:, 0], pairs[:, 1]])
    dst = torch.cat([pairs[:, 1], pairs[:, 0]])
    neighbours = dst[torch.argsort(src, stable=True)].tolist()
    bounds = [0, *torch.bincount(src, minlength=num).cumsum(0).tolist()]
    scores = rel.float().cpu().tolist()
    free, excluded, kept = 0, 1, 2
    state = bytearray(num)  # every token starts free: a possible independent-set member

    def exclude_around(token: int) -> tuple[int, ...]:
        newly = sorted(j for j in neighbours[bounds[token] : bounds[token + 1]] if state[j] == free)
        for j in newly:
            state[j] = excluded
        return tuple(newly)

    pivots, members, fill = (phase.tolist() for phase in phases)
    for token in pivots:  # the pivots are chosen together: none of them is "excluded" by another
        state[token] = kept
    steps = []
    for token in pivots:
        newly = exclude_around(token) if exclude_pivot_neighbours else ()
        steps.append(SelectionStep(token=token, phase="pivot", score=scores[token], excluded=newly))
    for token in members:
        state[token] = kept
        newly = exclude_around(token)
        steps.append(SelectionStep(token=token, phase="independent-set", score=scores[token], excluded=newly))
    for token in fill:
        state[token] = kept
        steps.append(SelectionStep(token=token, phase="fill", score=scores[token]))
    return steps


@dataclass
class D2Pruner(Method):
    """Debiased importance + structural diversity (the full method).

    Arguments:
        alpha: α, weight of semantic similarity in the fused graph, in [0, 1] (paper: 0.5 for
            localization, 1.0 for understanding).
        theta: θ, edge threshold on the fused similarity, in [0, 1] (θ = 1 gives no edges).
        r_pivot: fraction of the budget taken by pivots, in [0, 1].
        exclude_pivot_neighbours: True (default, our reading of Fig. 3): the pivots *and their graph
            neighbours* are excluded before the independent set; False: the independent set runs on all
            non-pivot tokens (pivots' neighbours are not excluded).
    Inputs: ``attention`` [N], ``hidden`` [N, D], ``grid``; ``prior`` optional.
    Steps: ``"pivot"``, ``"independent-set"``, ``"fill"`` (see the module docstring).
    """

    name: ClassVar[str] = "d2pruner"
    requires: ClassVar[tuple[str, ...]] = ("attention", "hidden", "grid")

    alpha: float = 0.5
    theta: float = 0.8
    r_pivot: float = 0.7
    exclude_pivot_neighbours: bool = True

    def __post_init__(self) -> None:
        check_unit_interval("alpha", self.alpha)
        check_unit_interval("theta", self.theta)
        check_unit_interval("r_pivot", self.r_pivot)
        if not isinstance(self.exclude_pivot_neighbours, bool):
            raise ValueError(
                f"exclude_pivot_neighbours must be a bool (True or False); got {self.exclude_pivot_neighbours!r}"
            )

    def _scores_and_graph(self, inputs: SelectionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        rel = relative_attention(inputs.attention, inputs.priors, inputs.grids)
        graph = hybrid_graph(inputs.hidden, inputs.grids, alpha=self.alpha, theta=self.theta)
        return rel, graph.edges

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        rel, edges = self._scores_and_graph(inputs)
        return debiased_diverse_selection(
            rel, edges, n, self.r_pivot, exclude_pivot_neighbours=self.exclude_pivot_neighbours
        )

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        rel, edges = self._scores_and_graph(inputs)
        phases = selection_phases(rel, edges, n, self.r_pivot, exclude_pivot_neighbours=self.exclude_pivot_neighbours)
        return phase_steps(rel, edges, phases, exclude_pivot_neighbours=self.exclude_pivot_neighbours)


@dataclass
class D2PrunerSemanticOnly(D2Pruner):
    """Ablation "SD without spatial": D²Pruner with α = 1 (graph from semantic similarity alone).

    α is fixed by the definition of the ablation (not a parameter); θ, r_pivot and
    exclude_pivot_neighbours are.
    """

    name: ClassVar[str] = "d2pruner-nospatial"

    alpha: float = field(default=1.0, init=False)


@dataclass
class DebiasedImportance(Method):
    """Ablation "DI only": the n largest relative attentions (no diversity step).

    Inputs: ``attention`` [N]; ``prior`` + ``grid`` optional (without a prior this is FastV).
    Steps: ``"top-n"`` — the kept tokens by descending relative attention (``score`` = rel).
    """

    name: ClassVar[str] = "d2pruner-di"
    requires: ClassVar[tuple[str, ...]] = ("attention",)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        return top_n(relative_attention(inputs.attention, inputs.priors, inputs.grids), n)

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        rel = relative_attention(inputs.attention, inputs.priors, inputs.grids)
        return ranked_steps(top_n(rel, n), rel, "top-n")
