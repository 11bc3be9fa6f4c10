"""Plain, obviously-correct sequential references of the selection methods, and structured test inputs.

These follow DESIGN.md's wording step by step with Python loops. They share only the float32 similarity
helper with the package (tested on its own against ``torch.nn.functional.cosine_similarity``), so that
threshold comparisons see bit-identical numbers.
"""

from __future__ import annotations

import math

import torch

from d2pruner.ops import cosine_similarity_matrix
from d2pruner.priors import resize_prior


def smooth_features(h: int, w: int, dim: int, seed: int, *, noise: float = 0.05, cells: int = 3) -> torch.Tensor:
    """[h·w, dim] spatially smooth hidden states: a coarse random field upsampled, plus noise.

    Neighbouring tokens get similar features, so the hybrid graph has edges (i.i.d. Gaussian features in
    high dimension would give none above θ).
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, dim, max(2, h // cells), max(2, w // cells), generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    flat = field[0].permute(1, 2, 0).reshape(h * w, dim)
    return flat + noise * torch.randn(h * w, dim, generator=gen)


def quantized_attention(num: int, seed: int, *, levels: int | None = 12) -> torch.Tensor:
    """[num] positive attention-like scores; with ``levels`` many exact ties (to exercise tie-breaking)."""
    gen = torch.Generator().manual_seed(seed + 10_000)
    scores = torch.rand(num, generator=gen) ** 3
    if levels is not None:
        scores = torch.round(scores * levels) / levels + 1e-3
    return scores / scores.sum()


def descending(values: list[float]) -> list[int]:
    """Indices by descending value, ties by ascending index."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def grid_neighbours(grids: list[tuple[int, int]]) -> list[set[int]]:
    """8-neighbour sets of every token of row-major grids concatenated in order."""
    neighbours: list[set[int]] = []
    offset = 0
    for h, w in grids:
        for r in range(h):
            for c in range(w):
                near = set()
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if (dr or dc) and 0 <= rr < h and 0 <= cc < w:
                            near.add(offset + rr * w + cc)
                neighbours.append(near)
        offset += h * w
    return neighbours


def reference_graph(hidden: torch.Tensor, grids: list[tuple[int, int]], alpha: float, theta: float) -> list[set[int]]:
    """Neighbour sets of the hybrid graph, pair by pair (pair {i, j} reads the upper triangle)."""
    sim = cosine_similarity_matrix(hidden, symmetric=False)
    s_hat = (sim - sim.min()) / (sim.max() - sim.min())
    spatial = grid_neighbours(grids)
    num = hidden.shape[0]
    graph: list[set[int]] = [set() for _ in range(num)]
    for i in range(num):
        for j in range(num):
            if i == j:
                continue
            spat = torch.tensor(1.0 if j in spatial[i] else 0.0)
            fused = alpha * s_hat[min(i, j), max(i, j)] + (1.0 - alpha) * spat
            if fused > theta:
                graph[i].add(j)
    return graph


def reference_relative(
    attention: torch.Tensor, prior: torch.Tensor | None, grids: list[tuple[int, int]]
) -> list[float]:
    attention = attention.float()
    if prior is None:
        return attention.tolist()
    resized = torch.cat([resize_prior(prior, g).flatten() for g in grids])
    return (attention / (resized + 1e-7)).tolist()


def reference_d2pruner(
    attention: torch.Tensor,
    hidden: torch.Tensor,
    grids: list[tuple[int, int]],
    n: int,
    *,
    prior: torch.Tensor | None = None,
    alpha: float = 0.5,
    theta: float = 0.8,
    r_pivot: float = 0.7,
) -> list[int]:
    """D²Pruner, sequentially, exactly as DESIGN.md words it."""
    num = attention.shape[0]
    if n >= num:
        return list(range(num))
    rel = reference_relative(attention, prior, grids)
    graph = reference_graph(hidden, grids, alpha, theta)
    order = descending(rel)
    n_pivots = math.floor(n * r_pivot + 1e-9)
    kept = list(order[:n_pivots])
    excluded = set(kept)
    for pivot in kept:
        excluded |= graph[pivot]
    for token in order:  # greedy maximal independent set
        if len(kept) >= n:
            break
        if token in excluded:
            continue
        kept.append(token)
        excluded.add(token)
        excluded |= graph[token]
    for token in order:  # fill
        if len(kept) >= n:
            break
        if token not in kept:
            kept.append(token)
    return sorted(kept)


def reference_divprune(hidden: torch.Tensor, n: int) -> list[int]:
    num = hidden.shape[0]
    if n >= num:
        return list(range(num))
    dist = (1.0 - cosine_similarity_matrix(hidden)).tolist()
    best, first = -math.inf, 0
    for i in range(num):
        nearest = min(dist[i][j] for j in range(num) if j != i)
        if nearest > best:
            best, first = nearest, i
    picked = [first]
    while len(picked) < n:
        best, choice = -math.inf, -1
        for c in range(num):
            if c in picked:
                continue
            spread = min(dist[c][p] for p in picked)
            if spread > best:
                best, choice = spread, c
        picked.append(choice)
    return sorted(picked)


def reference_mmr(importance: torch.Tensor, hidden: torch.Tensor, n: int, lam: float = 0.5) -> list[int]:
    num = importance.shape[0]
    if n >= num:
        return list(range(num))
    imp = importance.float()
    imp = (imp - imp.min()) / (imp.max() - imp.min()) if imp.max() > imp.min() else torch.zeros_like(imp)
    sim = cosine_similarity_matrix(hidden)
    picked = [max(range(num), key=lambda i: (imp[i].item(), -i))]
    while len(picked) < n:
        best, choice = -math.inf, -1
        for c in range(num):
            if c in picked:
                continue
            redundancy = max(sim[c, p] for p in picked)
            score = (lam * imp[c] - (1.0 - lam) * redundancy).item()
            if score > best:
                best, choice = score, c
        picked.append(choice)
    return sorted(picked)


def reference_dart(hidden: torch.Tensor, keys: torch.Tensor | None, n: int, num_pivots: int = 8) -> list[int]:
    num = hidden.shape[0]
    if n >= num:
        return list(range(num))
    source = keys if keys is not None else hidden
    norms = source.float().abs().sum(-1).tolist()
    p = min(num_pivots, n)
    pivots = descending(norms)[:p]
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    kept = list(pivots)
    extra = n - p
    for k, pivot in enumerate(pivots):
        quota = extra // p + (1 if k < extra % p else 0)
        sims = (unit[pivot] @ unit.mT).tolist()
        candidates = sorted((c for c in range(num) if c not in kept), key=lambda c: (sims[c], c))
        kept.extend(candidates[:quota])
    return sorted(kept)


def reference_mis(neighbours: list[set[int]], rank: list[int], candidates: set[int], limit: int) -> list[int]:
    """Sequential greedy MIS over ``candidates`` by ascending rank; the first ``limit`` members."""
    members: list[int] = []
    blocked: set[int] = set()
    for token in sorted(candidates, key=lambda t: rank[t]):
        if len(members) >= limit:
            break
        if token in blocked:
            continue
        members.append(token)
        blocked |= neighbours[token]
    return members
