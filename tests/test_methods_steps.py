"""select(..., return_steps=True): every method's steps against sequential references, and the invariants that
tie the steps to the plain selection. Also D²Pruner's two readings of Fig. 3 (exclude_pivot_neighbours)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from reference import (
    prompt_case,
    quantized_attention,
    reference_d2pruner,
    reference_d2pruner_steps,
    reference_dart_steps,
    reference_divprune_steps,
    reference_mmr_steps,
    reference_relative,
    reference_top_steps,
    smooth_features,
)

import d2pruner
from d2pruner.methods import Selection, SelectionStep, method_parameters
from d2pruner.methods.d2pruner import selection_phases

PHASES = {
    "fastv": {"top-n"},
    "d2pruner-di": {"top-n"},
    "divprune": {"greedy"},
    "mmr": {"greedy"},
    "dart": {"pivot", "duplicate-aware"},
    "dart-official": {"pivot", "duplicate-aware"},
    "d2pruner": {"pivot", "independent-set", "fill"},
    "d2pruner-nospatial": {"pivot", "independent-set", "fill"},
}


def case(grid: tuple[int, int], seed: int, *, noise: float = 0.2):
    h, w = grid
    hidden = smooth_features(h, w, 24, seed, noise=noise)
    attention = quantized_attention(h * w, seed)
    keys = smooth_features(h, w, 8, seed + 1, noise=0.3)
    prior = torch.rand(5, 7, generator=torch.Generator().manual_seed(seed)) + 0.1
    return {"hidden": hidden, "attention": attention, "keys": keys, "grid": grid, "prior": prior}


def inputs_for(method: str, seed: int) -> dict:
    if method == "dart-official":
        return prompt_case(seed)  # N = 54
    return case((6, 9), seed)


def test_every_method_is_covered():
    assert set(PHASES) == set(d2pruner.METHODS)


@pytest.mark.parametrize("method", sorted(d2pruner.METHODS))
def test_steps_reproduce_the_plain_selection(method):
    for seed, n in itertools.product(range(2), (1, 4, 17, 40)):
        inputs = inputs_for(method, seed)
        selection = d2pruner.select(method, n=n, return_steps=True, **inputs)
        plain = d2pruner.select(method, n=n, **inputs)
        assert isinstance(selection, Selection)
        assert torch.equal(selection.kept, plain) and selection.kept.dtype == torch.long
        tokens = [step.token for step in selection.steps]
        assert len(tokens) == len(set(tokens)) == plain.shape[0]
        assert set(tokens) == set(plain.tolist())
        assert {step.phase for step in selection.steps} <= PHASES[method]
        for step in selection.steps:
            assert isinstance(step.token, int) and isinstance(step.score, float)
            if not method.startswith("d2pruner") or method == "d2pruner-di":
                assert step.excluded == ()
            if step.phase == "duplicate-aware":
                assert (step.pivot is None) != (step.text_pivot is None)
            else:
                assert step.pivot is None and step.text_pivot is None


@pytest.mark.parametrize("method", sorted(d2pruner.METHODS))
def test_keep_all_is_one_all_step_per_token(method):
    inputs = inputs_for(method, 0)
    selection = d2pruner.select(method, n=54, return_steps=True, **inputs)
    assert selection.steps == tuple(SelectionStep(token=i, phase="all") for i in range(54))
    assert selection.kept.tolist() == list(range(54))


def test_steps_are_frozen_and_exported():
    step = SelectionStep(token=3, phase="greedy", score=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.token = 4
    selection = d2pruner.select("fastv", n=2, attention=torch.tensor([0.1, 0.5, 0.4]), return_steps=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        selection.kept = torch.zeros(1)
    assert selection.steps == (SelectionStep(1, "top-n", 0.5), SelectionStep(2, "top-n", pytest.approx(0.4)))


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_return_steps_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="return_steps must be a bool"):
        d2pruner.select("fastv", n=2, attention=torch.rand(4), return_steps=bad)


# ------------------------------------------------------------------------- the steps of each method
@pytest.mark.parametrize("seed", range(3))
def test_top_n_steps(seed):
    inputs = case((6, 9), seed)
    rel = torch.tensor(reference_relative(inputs["attention"], inputs["prior"], [(6, 9)]))
    for n in (1, 7, 30):
        fastv = d2pruner.select("fastv", n=n, return_steps=True, **inputs)
        assert [(s.token, s.phase, s.score) for s in fastv.steps] == reference_top_steps(inputs["attention"], n)
        di = d2pruner.select("d2pruner-di", n=n, return_steps=True, **inputs)
        assert [(s.token, s.phase, s.score) for s in di.steps] == reference_top_steps(rel, n)


def _close(got: list[tuple], expected: list[tuple]) -> None:
    """Same tokens, phases and pivots in the same order; scores equal to float32 rounding."""
    assert [tuple(x for x in g if not isinstance(x, float)) for g in got] == [
        tuple(x for x in e if not isinstance(x, float)) for e in expected
    ]
    for g, e in zip(got, expected, strict=True):
        assert [x for x in g if isinstance(x, float)] == pytest.approx([x for x in e if isinstance(x, float)], abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_steps(seed):
    inputs = case((4, 7), seed)
    for n in (1, 5, 14):
        divprune = d2pruner.select("divprune", n=n, return_steps=True, hidden=inputs["hidden"])
        _close([(s.token, s.score) for s in divprune.steps], reference_divprune_steps(inputs["hidden"], n))
        mmr = d2pruner.select("mmr", n=n, return_steps=True, importance="attention", **inputs)
        _close([(s.token, s.score) for s in mmr.steps], reference_mmr_steps(inputs["attention"], inputs["hidden"], n))
        assert {s.phase for s in divprune.steps + mmr.steps} == {"greedy"}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("num_pivots", [8, 3])
def test_dart_steps(seed, num_pivots):
    inputs = case((6, 9), seed)
    for n in (2, 9, 20):
        got = d2pruner.select("dart", n=n, return_steps=True, num_pivots=num_pivots, **inputs)
        expected = reference_dart_steps(inputs["hidden"], inputs["keys"], n, num_pivots)
        _close([(s.token, s.phase, s.score, s.pivot) for s in got.steps], expected)


D2_CASES = [((4, 4), 0), ((6, 9), 1), ((3, 11), 2), ((6, 9), 4)]


@pytest.mark.parametrize(("grid", "seed"), D2_CASES)
@pytest.mark.parametrize("exclude", [True, False])
def test_d2pruner_steps_equal_the_sequential_walk(grid, seed, exclude):
    """Same tokens in the same order, same phases, same rel and the same newly excluded sets."""
    inputs = case(grid, seed, noise=0.05 if seed % 2 == 0 else 0.4)
    total = grid[0] * grid[1]
    params = {"alpha": 1.0, "theta": 0.85} if seed == 4 else {}
    for n in sorted({1, 3, total // 4, total // 2, total - 2}):
        got = d2pruner.select("d2pruner", n=n, return_steps=True, exclude_pivot_neighbours=exclude, **params, **inputs)
        expected = reference_d2pruner_steps(
            inputs["attention"], inputs["hidden"], [grid], n, prior=inputs["prior"], exclude_pivot_neighbours=exclude,
            **params,
        )
        assert [(s.token, s.phase, s.score, s.excluded) for s in got.steps] == expected


def test_d2pruner_excluded_sets_are_consistent():
    for seed in range(4):
        inputs = case((8, 8), seed, noise=0.1)
        graph = d2pruner.hybrid_graph(inputs["hidden"], (8, 8))
        adjacency = graph.adjacency
        steps = d2pruner.select("d2pruner", n=20, return_steps=True, **inputs).steps
        excluded = [t for s in steps for t in s.excluded]
        assert len(excluded) == len(set(excluded))  # each token excluded once at most
        kept_before_fill = {s.token for s in steps if s.phase != "fill"}
        assert not set(excluded) & kept_before_fill  # an excluded token never joins the independent set
        for step in steps:
            if step.phase != "fill":
                assert all(adjacency[step.token, t] for t in step.excluded)
        pivots = [s.token for s in steps if s.phase == "pivot"]
        neighbours = set(adjacency[pivots].any(0).nonzero().flatten().tolist()) - set(pivots)
        assert {t for s in steps if s.phase == "pivot" for t in s.excluded} == neighbours


# --------------------------------------------------------------- D²Pruner: exclude_pivot_neighbours
@pytest.mark.parametrize(("grid", "seed"), [((4, 4), 0), ((6, 9), 1), ((3, 11), 2), ((6, 9), 3), ((8, 8), 5)])
def test_mis_on_all_non_pivots_equals_its_reference(grid, seed):
    inputs = case(grid, seed, noise=0.05 if seed % 2 == 0 else 0.4)
    total = grid[0] * grid[1]
    for n in sorted({2, total // 4, total // 2, total - 2}):
        for method, params in (("d2pruner", {}), ("d2pruner-nospatial", {"theta": 0.85})):
            got = d2pruner.select(method, n=n, exclude_pivot_neighbours=False, **params, **inputs).tolist()
            alpha = 1.0 if method == "d2pruner-nospatial" else 0.5
            expected = reference_d2pruner(
                inputs["attention"], inputs["hidden"], [grid], n, prior=inputs["prior"], alpha=alpha,
                exclude_pivot_neighbours=False, **params,
            )
            assert got == expected


def test_the_two_readings_differ_on_structured_inputs():
    differing_cases, changed, total = 0, 0, 0
    cases = list(itertools.product([(6, 9), (8, 8)], range(4)))
    for grid, seed in cases:
        inputs = case(grid, seed, noise=0.1)
        n = grid[0] * grid[1] // 4
        default = set(d2pruner.select("d2pruner", n=n, **inputs).tolist())
        other = set(d2pruner.select("d2pruner", n=n, exclude_pivot_neighbours=False, **inputs).tolist())
        differing_cases += default != other
        changed += len(default - other)
        total += n
    assert differing_cases >= len(cases) - 1
    assert changed / total > 0.1


def test_mis_on_all_non_pivots_may_keep_a_pivots_neighbour():
    seen = 0
    for seed in range(4):
        inputs = case((8, 8), seed, noise=0.1)
        adjacency = d2pruner.hybrid_graph(inputs["hidden"], (8, 8)).adjacency
        rel = torch.tensor(reference_relative(inputs["attention"], inputs["prior"], [(8, 8)]))
        edges = d2pruner.hybrid_graph(inputs["hidden"], (8, 8)).edges
        pivots, members, _ = selection_phases(rel, edges, 16, 0.7, exclude_pivot_neighbours=False)
        for a, b in itertools.combinations(members.tolist(), 2):
            assert not adjacency[a, b]  # still an independent set among its members
        seen += bool(adjacency[pivots][:, members].any())
        pivots, members, _ = selection_phases(rel, edges, 16, 0.7)
        assert not adjacency[pivots][:, members].any()
    assert seen > 0


def test_exclude_pivot_neighbours_is_a_validated_inherited_parameter():
    assert d2pruner.METHODS["d2pruner"]().exclude_pivot_neighbours is True
    assert d2pruner.METHODS["d2pruner-nospatial"](exclude_pivot_neighbours=False).exclude_pivot_neighbours is False
    assert "exclude_pivot_neighbours" in method_parameters(d2pruner.METHODS["d2pruner-nospatial"])
    for bad in (1, 0, "False", None):
        with pytest.raises(ValueError, match="exclude_pivot_neighbours must be a bool"):
            d2pruner.select("d2pruner", n=2, attention=torch.rand(4), exclude_pivot_neighbours=bad)
