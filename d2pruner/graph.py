"""The hybrid spatial–semantic token graph of D²Pruner (eqs. 5–7), shared by the method and the plots.

``S_fused = α·Ŝ_sem + (1−α)·S_spat`` where ``Ŝ_sem`` is the cosine similarity of the hidden states,
min–max normalised over the whole N×N matrix (diagonal included), and ``S_spat(i, j) = 1`` iff j is one
of the 8 grid neighbours of i (tokens of different grids are never spatial neighbours). Tokens i ≠ j are
joined iff ``S_fused > θ``.

The graph is built as an edge list, never as dense N×N masks it does not need: the 8-neighbour pairs
come from index arithmetic (O(N)), and non-neighbours are only examined when ``α > θ`` — otherwise
``α·Ŝ ≤ α ≤ θ`` and no non-neighbour pair can pass (this holds in floating point too, since rounding is
monotone). The similarity of the pair {i, j} is read from the upper triangle, ``S[min(i, j), max(i, j)]``,
so the graph is symmetric even where a matmul kernel is not bit-symmetric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from d2pruner.ops import Grid, as_grids, check_unit_interval, cosine_similarity_matrix

# Forward half of the 8-neighbourhood: each undirected pair (i < j) is produced once.
_FORWARD_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True)
class HybridGraph:
    """A token graph as a labelled edge list, ready to draw.

    Attributes:
        num_tokens: N.
        edges: [E, 2] int64 pairs (i, j) with i < j, sorted.
        spatial: [E] bool — True where the pair are grid neighbours (joined by proximity *and*
            similarity), False where a non-neighbour pair is joined by semantic similarity alone.
    """

    num_tokens: int
    edges: torch.Tensor
    spatial: torch.Tensor

    @property
    def adjacency(self) -> torch.Tensor:
        """[N, N] bool, symmetric, False on the diagonal (built on demand)."""
        return pairs_to_adjacency(self.edges, self.num_tokens)

    @property
    def edge_kinds(self) -> list[str]:
        """Per-edge label, ``"spatial"`` or ``"semantic"``."""
        return ["spatial" if s else "semantic" for s in self.spatial.tolist()]


def neighbour_pairs(grid: Grid | Sequence[Grid], device: torch.device | str | None = None) -> torch.Tensor:
    """All 8-neighbour pairs of one or several row-major grids (concatenated in order).

    Returns:
        [P, 2] int64 pairs (i, j), i < j, sorted.
    """
    chunks = []
    offset = 0
    for h, w in as_grids(grid):
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        for dr, dc in _FORWARD_OFFSETS:
            valid = (rows + dr < h) & (cols + dc >= 0) & (cols + dc < w)
            first = rows[valid] * w + cols[valid]
            second = (rows[valid] + dr) * w + cols[valid] + dc
            chunks.append(torch.stack([first, second], dim=1) + offset)
        offset += h * w
    return sort_pairs(torch.cat(chunks), offset)


def sort_pairs(pairs: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Sort [P, 2] pairs row-major (by i, then j)."""
    return pairs[torch.argsort(pairs[:, 0] * num_tokens + pairs[:, 1])]


def pairs_to_adjacency(pairs: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[N, N] symmetric bool adjacency from undirected pairs."""
    adjacency = torch.zeros(num_tokens, num_tokens, dtype=torch.bool, device=pairs.device)
    adjacency[pairs[:, 0], pairs[:, 1]] = True
    adjacency[pairs[:, 1], pairs[:, 0]] = True
    return adjacency


def spatial_adjacency(grid: Grid | Sequence[Grid], device: torch.device | str | None = None) -> torch.Tensor:
    """8-neighbour adjacency, [N, N] bool, N = Σ h·w; block-diagonal over the grids, False on the diagonal."""
    grids = as_grids(grid)
    return pairs_to_adjacency(neighbour_pairs(grids, device), sum(h * w for h, w in grids))


def normalize_similarity(sim: torch.Tensor, low: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Min–max normalisation ``(S − min) / (max − min)``; a degenerate range (all equal) gives ones."""
    if span <= 0:
        return torch.ones_like(sim)
    return (sim - low) / span


def hybrid_graph(
    hidden: torch.Tensor, grid: Grid | Sequence[Grid], *, alpha: float = 0.5, theta: float = 0.8
) -> HybridGraph:
    """Build D²Pruner's hybrid graph.

    Args:
        hidden: [N, D] visual hidden states (any float dtype; similarities in float32).
        grid: (h, w) or a list of (h, w) grids with Σ h·w = N.
        alpha: weight α of the semantic term, in [0, 1].
        theta: edge threshold θ, in [0, 1] (θ = 1 gives no edges).
    Returns:
        :class:`HybridGraph` with sorted, labelled edges.
    """
    check_unit_interval("alpha", alpha)
    check_unit_interval("theta", theta)
    grids = as_grids(grid)
    num = hidden.shape[0]
    if sum(h * w for h, w in grids) != num:
        raise ValueError(f"grid {list(grids)} holds {sum(h * w for h, w in grids)} tokens; hidden has {num} rows")
    sim = cosine_similarity_matrix(hidden, symmetric=False)
    low, high = torch.aminmax(sim)
    span = high - low

    near = neighbour_pairs(grids, hidden.device)
    near_sim = normalize_similarity(sim[near[:, 0], near[:, 1]], low, span)
    spatial_edges = near[alpha * near_sim + (1.0 - alpha) > theta]
    if alpha <= theta:
        return HybridGraph(num, spatial_edges, torch.ones(len(spatial_edges), dtype=torch.bool, device=hidden.device))

    joined = torch.triu(alpha * normalize_similarity(sim, low, span) > theta, diagonal=1)
    joined[near[:, 0], near[:, 1]] = False  # neighbours are judged with their spatial term above
    semantic_edges = joined.nonzero()
    edges = torch.cat([spatial_edges, semantic_edges])
    spatial = torch.cat(
        [torch.ones(len(spatial_edges), dtype=torch.bool), torch.zeros(len(semantic_edges), dtype=torch.bool)]
    )
    order = torch.argsort(edges[:, 0] * num + edges[:, 1])
    return HybridGraph(num, edges[order], spatial.to(hidden.device)[order])
