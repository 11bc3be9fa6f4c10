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


PREFIX = 35  # LLaVA-1.5's system prompt length: visual positions 35 … 35 + N − 1


def prompt_case(
    seed: int,
    grid: tuple[int, int] = (6, 9),
    *,
    prefix: int = PREFIX,
    text: int = 12,
    newlines: bool = False,
    dim: int = 24,
):
    """A synthetic prompt: system prompt, the visual tokens (optionally one non-candidate newline token after
    each row, as LLaVA-NeXT), then ``text`` tokens. The system prompt gets the largest key norms, so that a
    method taking text pivots from it is caught."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    positions, newline_positions, pos = [], [], prefix
    for _ in range(h):
        positions += list(range(pos, pos + w))
        pos += w
        if newlines:
            newline_positions.append(pos)
            pos += 1
    length = pos + text
    visual_index = torch.tensor(positions)
    seq_keys = torch.randn(length, 16, generator=gen)
    seq_keys[:prefix] *= 6.0
    seq_normed = torch.randn(length, dim, generator=gen)
    seq_normed[visual_index] = smooth_features(h, w, dim, seed, noise=0.3)
    text_mask = torch.ones(length, dtype=torch.bool)
    text_mask[visual_index] = False
    text_mask[newline_positions] = False
    return {"seq_keys": seq_keys, "seq_normed": seq_normed, "visual_index": visual_index, "text_mask": text_mask}


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
    exclude_pivot_neighbours: bool = True,
) -> list[int]:
    """D²Pruner, sequentially, exactly as DESIGN.md words it (the MIS on all non-pivot tokens when
    ``exclude_pivot_neighbours`` is False)."""
    num = attention.shape[0]
    if n >= num:
        return list(range(num))
    rel = reference_relative(attention, prior, grids)
    graph = reference_graph(hidden, grids, alpha, theta)
    order = descending(rel)
    n_pivots = math.floor(n * r_pivot + 1e-9)
    kept = list(order[:n_pivots])
    excluded = set(kept)
    if exclude_pivot_neighbours:
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


def reference_d2pruner_steps(
    attention: torch.Tensor,
    hidden: torch.Tensor,
    grids: list[tuple[int, int]],
    n: int,
    *,
    prior: torch.Tensor | None = None,
    alpha: float = 0.5,
    theta: float = 0.8,
    r_pivot: float = 0.7,
    exclude_pivot_neighbours: bool = True,
) -> list[tuple[int, str, float | None, tuple[int, ...]]]:
    """D²Pruner's sequential walk, one ``(token, phase, rel, newly excluded)`` per kept token.

    The pivots are chosen together; each then excludes its neighbours that are neither pivots nor excluded
    yet. A walk member excludes its neighbours that are neither kept nor excluded yet.
    """
    num = attention.shape[0]
    if n >= num:
        return [(i, "all", None, ()) for i in range(num)]
    rel = reference_relative(attention, prior, grids)
    graph = reference_graph(hidden, grids, alpha, theta)
    order = descending(rel)
    pivots = order[: math.floor(n * r_pivot + 1e-9)]
    kept, excluded, steps = set(pivots), set(), []
    for pivot in pivots:
        newly = sorted(graph[pivot] - kept - excluded) if exclude_pivot_neighbours else []
        excluded |= set(newly)
        steps.append((pivot, "pivot", rel[pivot], tuple(newly)))
    for token in order:
        if len(kept) >= n:
            break
        if token in kept or token in excluded:
            continue
        kept.add(token)
        newly = sorted(graph[token] - kept - excluded)
        excluded |= set(newly)
        steps.append((token, "independent-set", rel[token], tuple(newly)))
    for token in order:
        if len(kept) >= n:
            break
        if token not in kept:
            kept.add(token)
            steps.append((token, "fill", rel[token], ()))
    return steps


def reference_top_steps(scores: torch.Tensor, n: int) -> list[tuple[int, str, float | None]]:
    """FastV / DI only: the n largest scores, ties to the lower index, as ``(token, "top-n", score)``."""
    values = scores.float().tolist()
    if n >= len(values):
        return [(i, "all", None) for i in range(len(values))]
    return [(i, "top-n", values[i]) for i in descending(values)[:n]]


def reference_divprune(hidden: torch.Tensor, n: int) -> list[int]:
    return sorted(token for token, _ in reference_divprune_steps(hidden, n))


def reference_divprune_steps(hidden: torch.Tensor, n: int) -> list[tuple[int, float | None]]:
    """DivPrune's picks in order with the value that decided each: ``(token, max–min distance)``."""
    num = hidden.shape[0]
    if n >= num:
        return [(i, None) for i in range(num)]
    dist = (1.0 - cosine_similarity_matrix(hidden)).tolist()
    best, first = -math.inf, 0
    for i in range(num):
        nearest = min(dist[i][j] for j in range(num) if j != i)
        if nearest > best:
            best, first = nearest, i
    picked = [(first, best)]
    while len(picked) < n:
        best, choice = -math.inf, -1
        for c in range(num):
            if any(c == p for p, _ in picked):
                continue
            spread = min(dist[c][p] for p, _ in picked)
            if spread > best:
                best, choice = spread, c
        picked.append((choice, best))
    return picked


def reference_mmr(importance: torch.Tensor, hidden: torch.Tensor, n: int, lam: float = 0.5) -> list[int]:
    return sorted(token for token, _ in reference_mmr_steps(importance, hidden, n, lam))


def reference_mmr_steps(
    importance: torch.Tensor, hidden: torch.Tensor, n: int, lam: float = 0.5
) -> list[tuple[int, float | None]]:
    """MMR's picks in order: ``(token, importance)`` first, then ``(token, MMR score)``."""
    num = importance.shape[0]
    if n >= num:
        return [(i, None) for i in range(num)]
    imp = importance.float()
    imp = (imp - imp.min()) / (imp.max() - imp.min()) if imp.max() > imp.min() else torch.zeros_like(imp)
    sim = cosine_similarity_matrix(hidden)
    first = max(range(num), key=lambda i: (imp[i].item(), -i))
    picked = [(first, imp[first].item())]
    while len(picked) < n:
        best, choice = -math.inf, -1
        for c in range(num):
            if any(c == p for p, _ in picked):
                continue
            redundancy = max(sim[c, p] for p, _ in picked)
            score = (lam * imp[c] - (1.0 - lam) * redundancy).item()
            if score > best:
                best, choice = score, c
        picked.append((choice, best))
    return picked


def reference_dart(hidden: torch.Tensor, keys: torch.Tensor | None, n: int, num_pivots: int = 8) -> list[int]:
    return sorted(step[0] for step in reference_dart_steps(hidden, keys, n, num_pivots))


def reference_dart_steps(
    hidden: torch.Tensor, keys: torch.Tensor | None, n: int, num_pivots: int = 8
) -> list[tuple[int, str, float | None, int | None]]:
    """Our DART in pick order: ``(pivot, "pivot", key norm, None)``, then ``(token, "duplicate-aware", −cos,
    pivot)``, pivot after pivot by descending key norm."""
    num = hidden.shape[0]
    if n >= num:
        return [(i, "all", None, None) for i in range(num)]
    source = keys if keys is not None else hidden
    norms = source.float().abs().sum(-1).tolist()
    p = min(num_pivots, n)
    pivots = descending(norms)[:p]
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    steps = [(pivot, "pivot", norms[pivot], None) for pivot in pivots]
    kept = list(pivots)
    extra = n - p
    for k, pivot in enumerate(pivots):
        quota = extra // p + (1 if k < extra % p else 0)
        sims = (unit[pivot] @ unit.mT).tolist()
        candidates = sorted((c for c in range(num) if c not in kept), key=lambda c: (sims[c], c))
        kept.extend(candidates[:quota])
        steps += [(c, "duplicate-aware", -sims[c], pivot) for c in candidates[:quota]]
    return steps


def reference_dart_official_steps(
    seq_keys: torch.Tensor,
    seq_normed: torch.Tensor,
    visual_index: torch.Tensor,
    text_mask: torch.Tensor,
    n: int,
    image_pivots: int = 4,
    text_pivots: int = 4,
) -> list[tuple[int, str, float | None, int | None, int | None]]:
    """The official DART rule, step by step, with a real Python ``set`` for the pivot order.

    Returns ``(token, phase, score, pivot, text_pivot)``: the image pivots by descending L1 key norm, then,
    for each pivot in ``list(set(pivot positions))`` order, the ⌊n / (image + text pivots)⌋ remaining image
    tokens least cosine-similar to it (ties to the lower index), text pivots dropped from the result.
    """
    positions = visual_index.tolist()
    num = len(positions)
    if n >= num:
        return [(i, "all", None, None, None) for i in range(num)]
    norms = seq_keys.float().abs().sum(-1).tolist()
    after_image = [t for t in range(len(norms)) if bool(text_mask[t]) and t > positions[-1]]
    image_chosen = sorted(range(num), key=lambda i: (-norms[positions[i]], i))[:image_pivots]
    text_chosen = sorted(after_image, key=lambda t: (-norms[t], t))[:text_pivots]
    per_pivot = n // (image_pivots + text_pivots)
    steps = [(i, "pivot", norms[positions[i]], None, None) for i in image_chosen]
    candidate_of = {positions[i]: i for i in image_chosen}
    features = seq_normed.float()
    valid = [i for i in range(num) if i not in image_chosen]  # ascending, as list(set(range(...))) is
    for position in set([positions[i] for i in image_chosen] + text_chosen):
        if not valid or per_pivot == 0:
            continue
        rows = features[[positions[i] for i in valid]]
        sims = torch.nn.functional.cosine_similarity(features[position].unsqueeze(0), rows, dim=-1).tolist()
        ranked = sorted(range(len(valid)), key=lambda k: (sims[k], valid[k]))[:per_pivot]
        pivot, text = (candidate_of[position], None) if position in candidate_of else (None, position)
        steps += [(valid[k], "duplicate-aware", -sims[k], pivot, text) for k in ranked]
        chosen = {valid[k] for k in ranked}
        valid = [i for i in valid if i not in chosen]
    return steps


def reference_dart_official(*args, **kwargs) -> list[int]:
    return sorted(step[0] for step in reference_dart_official_steps(*args, **kwargs))


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
