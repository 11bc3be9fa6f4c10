"""Selection methods: exactness against sequential references, invariants, dtypes/devices, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    descending,
    quantized_attention,
    reference_d2pruner,
    reference_dart,
    reference_divprune,
    reference_graph,
    reference_mis,
    reference_mmr,
    reference_relative,
    smooth_features,
)

import d2pruner
from d2pruner.methods.d2pruner import debiased_diverse_selection, greedy_independent_set, pivot_count

# dart-official keeps the official code's 4 + 8·⌊n/8⌋ tokens and needs sequence-level inputs, so the exact-n
# matrices below do not apply to it; tests/test_methods_dart_official.py holds its invariants.
ALL_METHODS = sorted(set(d2pruner.METHODS) - {"dart-official"})
GRIDS = [(4, 4), (6, 9), (8, 8), (3, 11)]


def structured_case(grid: tuple[int, int], seed: int, *, dim: int = 24, noise: float = 0.05):
    h, w = grid
    hidden = smooth_features(h, w, dim, seed, noise=noise)
    attention = quantized_attention(h * w, seed)
    keys = smooth_features(h, w, 8, seed + 1, noise=0.3)
    return hidden, attention, keys


def run(method: str, n: int, hidden, attention, keys, grid, prior=None, **params) -> list[int]:
    return d2pruner.select(
        method, n=n, hidden=hidden, attention=attention, keys=keys, grid=grid, prior=prior, **params
    ).tolist()


# --------------------------------------------------------------------------------------- registry
def test_registry_has_every_required_method():
    assert {"fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di"} <= set(d2pruner.METHODS)


def test_defaults_follow_the_design_card():
    method = d2pruner.METHODS["d2pruner"]()
    assert (method.alpha, method.theta, method.r_pivot) == (0.5, 0.8, 0.7)
    assert d2pruner.METHODS["mmr"]().lam == 0.5
    assert d2pruner.METHODS["d2pruner-nospatial"]().alpha == 1.0


# ------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("grid", GRIDS)
def test_exact_count_sorted_unique_deterministic(method, grid):
    hidden, attention, keys = structured_case(grid, seed=3)
    total = grid[0] * grid[1]
    for n in (1, 2, 5, total // 3, total - 1, total, total + 7):
        first = d2pruner.select(method, n=n, hidden=hidden, attention=attention, keys=keys, grid=grid)
        again = d2pruner.select(method, n=n, hidden=hidden, attention=attention, keys=keys, grid=grid)
        assert first.dtype == torch.long
        assert first.shape == (min(n, total),)
        assert torch.equal(first, torch.sort(first).values)
        assert torch.unique(first).numel() == first.numel()
        assert int(first.min()) >= 0 and int(first.max()) < total
        assert torch.equal(first, again)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_n_at_least_n_tokens_keeps_all(method):
    hidden, attention, keys = structured_case((4, 4), seed=0)
    for n in (16, 17, 1000):
        assert run(method, n, hidden, attention, keys, (4, 4)) == list(range(16))


@pytest.mark.parametrize("seed", range(10))
def test_fastv_is_top_n_with_ties_to_lower_index(seed):
    attention = quantized_attention(64, seed, levels=5)  # heavy ties
    for n in (1, 7, 20, 63):
        expected = sorted(descending(attention.tolist())[:n])
        assert d2pruner.select("fastv", n=n, attention=attention).tolist() == expected


def test_ties_go_to_the_lower_index():
    attention = torch.ones(10)
    assert d2pruner.select("fastv", n=3, attention=attention).tolist() == [0, 1, 2]
    assert d2pruner.select("d2pruner-di", n=4, attention=attention).tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------- exactness vs references
SWEEP = list(itertools.product(GRIDS, range(6)))


def test_structured_inputs_give_graphs_with_edges():
    """Guard for the sweeps below: the hybrid graph of the structured inputs is neither empty nor full."""
    for grid, seed in SWEEP:
        hidden, _, _ = structured_case(grid, seed)
        edges = d2pruner.hybrid_graph(hidden, grid).edges.shape[0]
        assert edges > 0
    sparse = sum(
        d2pruner.hybrid_graph(structured_case(g, s, noise=0.6)[0], g).edges.shape[0] < 2 * g[0] * g[1] for g, s in SWEEP
    )
    assert sparse > 0  # noisier features leave some neighbours unjoined


@pytest.mark.parametrize(("grid", "seed"), SWEEP)
@pytest.mark.parametrize(
    "params",
    [{}, {"alpha": 1.0, "theta": 0.85}, {"alpha": 0.7, "theta": 0.6, "r_pivot": 0.3}, {"r_pivot": 0.0}],
)
def test_d2pruner_equals_sequential_reference(grid, seed, params):
    noise = 0.05 if seed % 2 == 0 else 0.4
    hidden, attention, _ = structured_case(grid, seed, noise=noise)
    prior = torch.rand(5, 7, generator=torch.Generator().manual_seed(seed)) + 0.1 if seed % 3 else None
    total = grid[0] * grid[1]
    for n in sorted({1, 3, total // 9, total // 4, total // 2, total - 2}):
        got = run("d2pruner", n, hidden, attention, None, grid, prior, **params)
        assert got == reference_d2pruner(attention, hidden, [grid], n, prior=prior, **params)


@pytest.mark.parametrize("seed", range(8))
def test_d2pruner_multi_grid_equals_reference(seed):
    grids = [(3, 3), (4, 6)]
    hidden = torch.cat([smooth_features(3, 3, 16, seed), smooth_features(4, 6, 16, seed + 50)])
    attention = quantized_attention(33, seed)
    prior = torch.rand(4, 4, generator=torch.Generator().manual_seed(seed)) + 0.05
    for n in (2, 5, 11, 20):
        got = d2pruner.select("d2pruner", n=n, hidden=hidden, attention=attention, grid=grids, prior=prior)
        assert got.tolist() == reference_d2pruner(attention, hidden, grids, n, prior=prior)


@pytest.mark.parametrize(("grid", "seed"), SWEEP[::2])
def test_divprune_equals_sequential_reference(grid, seed):
    hidden, _, _ = structured_case(grid, seed, noise=0.2)
    total = grid[0] * grid[1]
    for n in (1, 2, total // 5, total // 2):
        assert run("divprune", n, hidden, None, None, grid) == reference_divprune(hidden, n)


@pytest.mark.parametrize(("grid", "seed"), SWEEP[::2])
@pytest.mark.parametrize("lam", [0.5, 0.0, 1.0, 0.8])
def test_mmr_equals_sequential_reference(grid, seed, lam):
    hidden, attention, _ = structured_case(grid, seed, noise=0.2)
    total = grid[0] * grid[1]
    for n in (1, 4, total // 4):
        got = run("mmr", n, hidden, attention, None, grid, lam=lam, importance="attention")
        assert got == reference_mmr(attention, hidden, n, lam)


def test_mmr_default_importance_is_relative_attention():
    hidden, attention, _ = structured_case((6, 9), seed=2, noise=0.2)
    prior = torch.linspace(0.1, 2.0, 54).reshape(6, 9)
    rel = torch.tensor(reference_relative(attention, prior, [(6, 9)]))
    got = d2pruner.select("mmr", n=10, hidden=hidden, attention=attention, grid=(6, 9), prior=prior)
    assert got.tolist() == reference_mmr(rel, hidden, 10)
    scores = torch.rand(54, generator=torch.Generator().manual_seed(1))
    by_tensor = d2pruner.select("mmr", n=10, hidden=hidden, importance=scores)
    assert by_tensor.tolist() == reference_mmr(scores, hidden, 10)


@pytest.mark.parametrize(("grid", "seed"), SWEEP[::2])
@pytest.mark.parametrize("num_pivots", [8, 1, 3])
def test_dart_equals_sequential_reference(grid, seed, num_pivots):
    hidden, _, keys = structured_case(grid, seed, noise=0.2)
    total = grid[0] * grid[1]
    for n in (1, 2, 9, total // 4, total // 2 + 1):
        got = run("dart", n, hidden, None, keys, grid, num_pivots=num_pivots)
        assert got == reference_dart(hidden, keys, n, num_pivots)
    assert run("dart", 9, hidden, None, None, grid) == reference_dart(hidden, None, 9)


# ------------------------------------------------------------------------- D²Pruner's structure
@pytest.mark.parametrize("seed", range(6))
def test_no_edges_reduces_d2pruner_to_debiased_importance(seed):
    hidden, attention, _ = structured_case((8, 8), seed)
    prior = torch.rand(6, 6, generator=torch.Generator().manual_seed(seed)) + 0.1
    for n in (3, 10, 30):
        full = run("d2pruner", n, hidden, attention, None, (8, 8), prior, theta=1.0)
        assert full == run("d2pruner-di", n, hidden, attention, None, (8, 8), prior)


@pytest.mark.parametrize("method", ["d2pruner", "d2pruner-di", "mmr"])
def test_uniform_prior_is_raw_attention(method):
    hidden, attention, _ = structured_case((6, 9), seed=5)
    for n in (4, 13, 30):
        plain = run(method, n, hidden, attention, None, (6, 9))
        assert run(method, n, hidden, attention, None, (6, 9), torch.full((24, 24), 0.37)) == plain
    assert run("d2pruner-di", 13, hidden, attention, None, (6, 9)) == run("fastv", 13, hidden, attention, None, (6, 9))


def test_prior_debiases_the_ranking():
    attention = torch.tensor([0.4, 0.3, 0.2, 0.1])
    prior = torch.tensor([[0.8, 0.1], [0.1, 0.1]])  # token 0 is attended only because of its position
    kept = d2pruner.select("d2pruner-di", n=1, attention=attention, grid=(2, 2), prior=prior)
    assert kept.tolist() == [1]
    assert d2pruner.select("fastv", n=1, attention=attention).tolist() == [0]


@pytest.mark.parametrize(("grid", "seed"), SWEEP)
def test_mis_phase_picks_are_pairwise_non_adjacent(grid, seed):
    hidden, attention, _ = structured_case(grid, seed, noise=0.3)
    graph = d2pruner.hybrid_graph(hidden, grid)
    adjacency = graph.adjacency
    total = grid[0] * grid[1]
    n = max(2, total // 4)
    kept = debiased_diverse_selection(attention.float(), graph.edges, n, 0.7)
    n_pivots = pivot_count(n, 0.7)
    pivots, rest = kept[:n_pivots], kept[n_pivots:]
    mis = [t for t in rest.tolist() if not adjacency[pivots, t].any()]
    for a, b in itertools.combinations(mis, 2):
        assert not adjacency[a, b]
    assert sorted(pivots.tolist()) == sorted(descending(attention.tolist())[:n_pivots])


@pytest.mark.parametrize("seed", range(10))
def test_alpha_half_never_joins_non_neighbours(seed):
    hidden = smooth_features(7, 7, 16, seed, noise=0.01, cells=7)  # near-duplicates everywhere
    graph = d2pruner.hybrid_graph(hidden, (7, 7), alpha=0.5, theta=0.8)
    spatial = d2pruner.spatial_adjacency((7, 7))
    assert graph.edges.shape[0] > 0
    assert not (graph.adjacency & ~spatial).any()
    assert all(kind == "spatial" for kind in graph.edge_kinds)
    semantic = d2pruner.hybrid_graph(hidden, (7, 7), alpha=1.0, theta=0.8)
    assert "semantic" in semantic.edge_kinds  # α = 1 joins distant look-alikes


# ------------------------------------------------------------------- parallel MIS == sequential
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    num=st.integers(1, 40),
    density=st.floats(0.0, 0.6),
    limit=st.integers(0, 45),
    seed=st.integers(0, 2**31 - 1),
    chain=st.booleans(),
)
def test_parallel_mis_equals_sequential(num, density, limit, seed, chain):
    gen = torch.Generator().manual_seed(seed)
    if chain:  # worst case for rounds: a path whose priorities run along it
        adjacency = torch.zeros(num, num, dtype=torch.bool)
        idx = torch.arange(num - 1)
        adjacency[idx, idx + 1] = True
    else:
        adjacency = torch.rand(num, num, generator=gen) < density
    adjacency = torch.triu(adjacency, 1)
    adjacency = adjacency | adjacency.mT
    rank = torch.randperm(num, generator=gen) if not chain else torch.arange(num)
    candidates = torch.rand(num, generator=gen) < 0.8
    got = greedy_independent_set(torch.triu(adjacency, 1).nonzero(), rank, candidates, limit).tolist()
    neighbours = [set(adjacency[i].nonzero().flatten().tolist()) for i in range(num)]
    expected = reference_mis(neighbours, rank.tolist(), set(candidates.nonzero().flatten().tolist()), limit)
    assert got == expected


# ----------------------------------------------------------------------------- dtypes and devices
def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_dtypes_and_devices_give_the_same_indices(method):
    hidden, attention, keys = structured_case((8, 8), seed=11)
    # values exactly representable in bfloat16 (and so in float16's range too), identical in every dtype
    hidden, keys = hidden.bfloat16().float(), keys.bfloat16().float()
    attention = attention.bfloat16().float()
    expected = run(method, 12, hidden, attention, keys, (8, 8))
    for device in _devices():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            cast = [t.to(device=device, dtype=dtype) for t in (hidden, attention, keys)]
            got = d2pruner.select(method, n=12, hidden=cast[0], attention=cast[1], keys=cast[2], grid=(8, 8))
            assert got.device.type == device
            assert got.tolist() == expected, (device, dtype)


# ------------------------------------------------------------------------------------- graph
def test_spatial_adjacency_counts_and_blocks():
    adjacency = d2pruner.spatial_adjacency((3, 4))
    assert torch.equal(adjacency, adjacency.mT) and not adjacency.diagonal().any()
    assert int(adjacency.sum()) // 2 == 2 * 4 + 3 * 3 + 2 * 2 * 3  # horizontal + vertical + diagonal
    assert adjacency[0].nonzero().flatten().tolist() == [1, 4, 5]
    assert adjacency[5].sum() == 8
    multi = d2pruner.spatial_adjacency([(2, 2), (3, 4)])
    assert multi.shape == (16, 16)
    assert not multi[:4, 4:].any() and torch.equal(multi[4:, 4:], adjacency)


@pytest.mark.parametrize("seed", range(4))
def test_hybrid_graph_matches_pairwise_reference(seed):
    hidden = smooth_features(5, 6, 12, seed, noise=0.2)
    for alpha, theta in [(0.5, 0.8), (1.0, 0.85), (0.8, 0.7)]:
        graph = d2pruner.hybrid_graph(hidden, (5, 6), alpha=alpha, theta=theta)
        neighbours = reference_graph(hidden, [(5, 6)], alpha, theta)
        expected = {(i, j) for i in range(30) for j in neighbours[i] if i < j}
        assert {tuple(e) for e in graph.edges.tolist()} == expected
        assert torch.equal(graph.adjacency, graph.adjacency.mT)
        spatial = d2pruner.spatial_adjacency((5, 6))
        for (i, j), is_spatial in zip(graph.edges.tolist(), graph.spatial.tolist(), strict=True):
            assert is_spatial == bool(spatial[i, j])


def test_similarity_helper_matches_torch_cosine():
    from d2pruner.ops import cosine_similarity_matrix

    x = torch.randn(20, 33, dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1).float()
    got = cosine_similarity_matrix(x)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got, got.mT)


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nope", "n": 2, "attention": torch.rand(4)}, "unknown method 'nope'"),
        ({"method": "fastv", "n": 0, "attention": torch.rand(4)}, "n must be >= 1"),
        ({"method": "fastv", "n": -3, "attention": torch.rand(4)}, "n must be >= 1"),
        ({"method": "fastv", "n": 2.5, "attention": torch.rand(4)}, "n must be an integer"),
        ({"method": "fastv", "n": 2}, "needs at least one of hidden, attention or keys"),
        ({"method": "fastv", "n": 2, "hidden": torch.rand(4, 3)}, "method 'fastv' needs attention"),
        ({"method": "d2pruner", "n": 2, "attention": torch.rand(4), "hidden": torch.rand(4, 3)}, "needs grid"),
        ({"method": "fastv", "n": 2, "attention": torch.rand(4, 1)}, "attention must be 1-D"),
        ({"method": "fastv", "n": 2, "attention": torch.tensor([1.0, float("nan")])}, "NaN or inf"),
        ({"method": "fastv", "n": 2, "attention": torch.tensor([1.0, float("inf")])}, "NaN or inf"),
        ({"method": "divprune", "n": 2, "hidden": torch.tensor([[1.0, float("nan")]] * 3)}, "NaN or inf"),
        ({"method": "fastv", "n": 2, "attention": torch.arange(4)}, "floating"),
        ({"method": "fastv", "n": 2, "attention": torch.rand(0)}, "at least one visual token"),
        (
            {"method": "d2pruner", "n": 2, "attention": torch.rand(5), "hidden": torch.rand(4, 3), "grid": (2, 2)},
            "disagree on the number of visual tokens",
        ),
        (
            {"method": "d2pruner", "n": 2, "attention": torch.rand(6), "hidden": torch.rand(6, 3), "grid": (2, 2)},
            r"holds 4 tokens; expected N = 6",
        ),
        ({"method": "fastv", "n": 2, "attention": torch.rand(4), "grid": (2, 0)}, "positive integers"),
        ({"method": "fastv", "n": 2, "attention": torch.rand(4), "grid": "2x2"}, "grid must be"),
        ({"method": "d2pruner-di", "n": 2, "attention": torch.rand(4), "prior": torch.rand(4)}, "needs the token grid"),
        (
            {"method": "d2pruner-di", "n": 2, "attention": torch.rand(4), "grid": (2, 2), "prior": torch.rand(4)},
            "prior must be a non-empty 2-D tensor",
        ),
        (
            {"method": "d2pruner-di", "n": 2, "attention": torch.rand(4), "grid": (2, 2), "prior": -torch.rand(2, 2)},
            "non-negative",
        ),
        (
            {
                "method": "d2pruner-di",
                "n": 2,
                "attention": torch.rand(4),
                "grid": (2, 2),
                "prior": torch.full((2, 2), float("nan")),
            },
            "finite",
        ),
        (
            {
                "method": "d2pruner-di",
                "n": 2,
                "attention": torch.rand(5),
                "grid": [(2, 2), (1, 1)],
                "prior": [torch.rand(2, 2)] * 3,
            },
            "3 priors for 2 grids",
        ),
        ({"method": "d2pruner", "n": 2, "attention": torch.rand(4), "alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"method": "d2pruner", "n": 2, "attention": torch.rand(4), "theta": -0.1}, r"theta must be in \[0, 1\]"),
        ({"method": "d2pruner", "n": 2, "attention": torch.rand(4), "r_pivot": 2}, r"r_pivot must be in \[0, 1\]"),
        ({"method": "d2pruner", "n": 2, "attention": torch.rand(4), "alpha": float("nan")}, "finite number"),
        ({"method": "mmr", "n": 2, "attention": torch.rand(4), "lam": -1.0}, r"lam must be in \[0, 1\]"),
        ({"method": "mmr", "n": 2, "attention": torch.rand(4), "importance": "magic"}, "importance must be one of"),
        ({"method": "dart", "n": 2, "hidden": torch.rand(4, 3), "num_pivots": 0}, "num_pivots must be an integer >= 1"),
        ({"method": "fastv", "n": 2, "attention": torch.rand(4), "alpha": 0.5}, "has no parameter"),
    ],
)
def test_bad_input_raises_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        d2pruner.select(**kwargs)


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match=r"choose one of .*d2pruner.*fastv"):
        d2pruner.select("FastV!", n=1, attention=torch.rand(3))


def test_hybrid_graph_rejects_out_of_range_parameters():
    with pytest.raises(ValueError, match="alpha"):
        d2pruner.hybrid_graph(torch.rand(4, 3), (2, 2), alpha=-0.5)
    with pytest.raises(ValueError, match="grid"):
        d2pruner.hybrid_graph(torch.rand(5, 3), (2, 2))


def test_no_spatial_ablation_fixes_alpha():
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['alpha'\]"):
        d2pruner.select(
            "d2pruner-nospatial", n=2, attention=torch.rand(4), hidden=torch.rand(4, 3), grid=(2, 2), alpha=0.5
        )
    assert d2pruner.METHODS["d2pruner-nospatial"](theta=0.9).alpha == 1.0
