"""dart-official: CPython set order, equality with a sequential port of the official rule, the official count,
invariants, and bad input."""

from __future__ import annotations

import random

import pytest
import torch
from reference import PREFIX, prompt_case, reference_dart_official, reference_dart_official_steps

import d2pruner
from d2pruner.methods import DARTOfficial, make_inputs, method_parameters
from d2pruner.methods.dart_official import cpython_set_order, official_dart_trace, official_keep_count


def as_tuples(selection) -> list[tuple]:
    return [(s.token, s.phase, s.score, s.pivot, s.text_pivot) for s in selection.steps]


# ------------------------------------------------------------------------------------ CPython set order
def test_set_order_is_cpythons_on_random_lists():
    rng = random.Random(0)
    for _ in range(3000):
        size = rng.randint(0, 40)
        high = rng.choice([8, 32, 100, 700, 5000, 2**40])
        values = [rng.randrange(high) for _ in range(size)]  # duplicates and slot collisions included
        assert cpython_set_order(values) == list(set(values)), values


def test_set_order_of_pivot_like_positions():
    rng = random.Random(1)
    for _ in range(2000):
        image = rng.sample(range(PREFIX, PREFIX + 576), 4)
        text = rng.sample(range(PREFIX + 576, PREFIX + 640), 4)
        assert cpython_set_order(image + text) == list(set(image + text))


def test_set_order_without_collisions_is_by_value_modulo_the_table_size():
    assert cpython_set_order([71, 33, 40]) == [40, 33, 71]  # 3 elements, 8 slots: 40 % 8 = 0, 33 % 8 = 1, 71 % 8 = 7
    values = [100, 37, 66, 611, 620, 45, 630, 59]  # 8 elements: 32 slots, residues all distinct
    assert sorted(v % 32 for v in values) == sorted({v % 32 for v in values})
    assert cpython_set_order(values) == sorted(values, key=lambda v: v % 32) == list(set(values))


def test_set_order_rejects_what_it_cannot_model():
    for bad in ([-1], [1.5], [True], [2**61 - 1]):
        with pytest.raises(ValueError, match="non-negative ints"):
            cpython_set_order(bad)


# ------------------------------------------------------------------------- equality with the reference
CASES = [(seed, newlines) for seed in range(8) for newlines in (False, True)]


@pytest.mark.parametrize(("seed", "newlines"), CASES)
def test_equals_sequential_port_of_the_official_rule(seed, newlines):
    case = prompt_case(seed, newlines=newlines)
    for n in (1, 5, 8, 12, 13, 20, 31, 53):
        selection = d2pruner.select("dart-official", n=n, return_steps=True, **case)
        assert as_tuples(selection) == reference_dart_official_steps(**case, n=n)
        plain = d2pruner.select("dart-official", n=n, **case)
        assert torch.equal(plain, selection.kept)
        assert plain.tolist() == reference_dart_official(**case, n=n)


@pytest.mark.parametrize(("image_pivots", "text_pivots"), [(2, 3), (1, 0), (5, 2), (3, 7)])
def test_other_pivot_counts_equal_the_reference(image_pivots, text_pivots):
    params = {"image_pivots": image_pivots, "text_pivots": text_pivots}
    for seed in range(3):
        case = prompt_case(seed, grid=(5, 7), text=5)
        for n in (3, 10, 22):
            got = d2pruner.select("dart-official", n=n, return_steps=True, **case, **params)
            assert as_tuples(got) == reference_dart_official_steps(**case, n=n, **params)


# -------------------------------------------------------------------------------- the official count
def test_keeps_four_plus_eight_floor_n_over_eight():
    case = prompt_case(0)  # N = 54, 12 text tokens
    for n in range(1, 54):
        kept = d2pruner.select("dart-official", n=n, **case)
        assert kept.shape == (min(54, 4 + 8 * (n // 8)),)
        assert kept.shape[0] == official_keep_count(n, 54, 12)
    assert [official_keep_count(n, 576, 40) for n in (64, 128, 192, 100, 1)] == [68, 132, 196, 100, 4]


def test_count_with_few_tokens():
    few_text = prompt_case(1, text=2)  # 2 text pivots only: 4 + 6·⌊n/8⌋
    for n in (8, 16, 33):
        assert d2pruner.select("dart-official", n=n, **few_text).shape == (4 + 6 * (n // 8),)
    no_text = prompt_case(2, text=0)
    assert d2pruner.select("dart-official", n=16, **no_text).shape == (4 + 4 * 2,)
    small = prompt_case(3, grid=(3, 6))  # N = 18: n = 17 asks 4 + 16 = 20, the last pivot gets what remains
    assert d2pruner.select("dart-official", n=17, **small).tolist() == list(range(18))
    assert official_keep_count(17, 18, 12) == 18
    tiny = prompt_case(4, grid=(1, 3))  # fewer candidates than image pivots
    assert d2pruner.select("dart-official", n=2, **tiny).tolist() == [0, 1, 2]


def test_n_at_least_n_tokens_keeps_all():
    case = prompt_case(5)
    for n in (54, 55, 1000):
        selection = d2pruner.select("dart-official", n=n, return_steps=True, **case)
        assert selection.kept.tolist() == list(range(54))
        assert {s.phase for s in selection.steps} == {"all"}


# ---------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("seed", range(4))
def test_sorted_unique_int64_deterministic(seed):
    case = prompt_case(seed, newlines=True)
    for n in (1, 9, 27, 53):
        first = d2pruner.select("dart-official", n=n, **case)
        again = d2pruner.select("dart-official", n=n, **{k: v.clone() for k, v in case.items()})
        assert first.dtype == torch.long and torch.equal(first, again)
        assert torch.equal(first, torch.sort(first).values) and torch.unique(first).numel() == first.numel()
        assert int(first.min()) >= 0 and int(first.max()) < 54


def test_text_pivots_come_after_the_image_and_are_text():
    for seed in range(6):
        case = prompt_case(seed, newlines=True)
        trace = official_dart_trace(**case, n=24)
        last = int(case["visual_index"][-1])
        texts = trace.text_pivots.tolist()
        assert len(texts) == 4
        assert all(t > last and bool(case["text_mask"][t]) for t in texts)  # never the system prompt or a newline
        norms = case["seq_keys"].abs().sum(-1)
        after = [t for t in range(last + 1, norms.shape[0]) if case["text_mask"][t]]
        assert sorted(texts) == sorted(sorted(after, key=lambda t: -float(norms[t]))[:4])


def test_pivots_are_visited_in_set_order_and_the_order_matters():
    mattered = 0
    for seed in range(12):
        case = prompt_case(seed)
        trace = official_dart_trace(**case, n=40)
        positions = case["visual_index"][trace.image_pivots].tolist() + trace.text_pivots.tolist()
        assert [visit.position for visit in trace.visits] == list(set(positions))
        by_norm = sorted(positions, key=lambda p: -float(case["seq_keys"][p].abs().sum()))
        if by_norm != list(set(positions)):
            mattered += 1
    assert mattered >= 10  # set order is not the key-norm order


def test_differs_from_our_dart():
    """Our DART (8 image pivots, raw hidden, exactly n) and the official rule disagree on most inputs."""
    differ, fractions = 0, []
    for seed in range(10):
        case = prompt_case(seed)
        hidden = case["seq_normed"][case["visual_index"]] * 1.0
        keys = case["seq_keys"][case["visual_index"]]
        official = set(d2pruner.select("dart-official", n=20, **case).tolist())
        ours = set(d2pruner.select("dart", n=20, hidden=hidden, keys=keys).tolist())
        differ += official != ours
        fractions.append(len(ours - official) / len(ours))
    assert differ >= 8 and sum(fractions) / len(fractions) > 0.1


def test_ties_go_to_the_lower_index():
    case = prompt_case(0, grid=(2, 6), text=4)
    case["seq_keys"][case["visual_index"]] = 1.0  # every image token ties on the key norm
    case["seq_normed"][case["visual_index"]] = torch.ones(24)  # and on every similarity
    trace = official_dart_trace(**case, n=9)  # one pick per pivot
    assert trace.image_pivots.tolist() == [0, 1, 2, 3]
    assert sorted(int(v.picks) for v in trace.visits) == [4, 5, 6, 7, 8, 9, 10, 11][: len(trace.visits)]
    assert [int(v.picks) for v in trace.visits] == sorted(int(v.picks) for v in trace.visits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_same_indices(dtype):
    case = prompt_case(7)
    case["seq_keys"] = case["seq_keys"].to(dtype).float()
    case["seq_normed"] = case["seq_normed"].to(dtype).float()
    expected = d2pruner.select("dart-official", n=20, **case).tolist()
    cast = {**case, "seq_keys": case["seq_keys"].to(dtype), "seq_normed": case["seq_normed"].to(dtype)}
    assert d2pruner.select("dart-official", n=20, **cast).tolist() == expected


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_same_indices():
    case = prompt_case(3, newlines=True)
    on_gpu = {k: v.cuda() for k, v in case.items()}
    got = d2pruner.select("dart-official", n=20, **on_gpu)
    assert got.device.type == "cuda" and got.tolist() == d2pruner.select("dart-official", n=20, **case).tolist()
    with pytest.raises(ValueError, match="one device"):
        d2pruner.select("dart-official", n=20, **{**case, "text_mask": on_gpu["text_mask"]})


def test_registered_with_its_parameters():
    assert d2pruner.METHODS["dart-official"] is DARTOfficial
    assert method_parameters(DARTOfficial) == ["image_pivots", "text_pivots"]
    method = DARTOfficial()
    assert (method.image_pivots, method.text_pivots) == (4, 4)
    inputs = make_inputs(**prompt_case(0))
    assert inputs.num_tokens == 54 and inputs.visual_index.dtype == torch.long


# ----------------------------------------------------------------------------------------- bad input
def _bad(**changes):
    case = prompt_case(0)
    case.update(changes)
    return {k: v for k, v in case.items() if v is not None}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (_bad(seq_keys=None, text_mask=None), r"'dart-official' needs seq_keys, text_mask; got None"),
        (_bad(seq_keys=torch.rand(101)), r"seq_keys must be 2-D \[L, Dk\]"),
        (_bad(seq_normed=torch.rand(101, 4, 2)), r"seq_normed must be 2-D \[L, D\]"),
        (_bad(seq_keys=torch.full((101, 16), float("nan"))), "seq_keys contains NaN or inf"),
        (_bad(seq_normed=torch.ones(101, 24).int()), "seq_normed must be a floating tensor"),
        (_bad(seq_normed=torch.rand(100, 24)), "disagree on the prompt length L"),
        (_bad(text_mask=torch.ones(100, dtype=torch.bool)), "disagree on the prompt length L"),
        (_bad(visual_index=torch.arange(35, 89).float()), "visual_index must be an integer tensor"),
        (_bad(visual_index=torch.arange(35, 89).flip(0)), "visual_index must be strictly increasing"),
        (_bad(visual_index=torch.tensor([3, 3, 4])), "visual_index must be strictly increasing"),
        (_bad(visual_index=torch.tensor([-1, 3])), "visual_index must be non-negative"),
        (_bad(visual_index=torch.arange(60, 114)), r"outside the prompt of L = 101"),
        (_bad(visual_index=torch.arange(35, 89)[None]), r"visual_index must be 1-D \[N\]"),
        (_bad(visual_index=torch.tensor([], dtype=torch.long)), "visual_index is empty"),
        (_bad(text_mask=torch.ones(101)), "text_mask must be a 1-D bool tensor"),
        (_bad(text_mask=torch.ones(101, dtype=torch.bool)), "text_mask is True at a visual token"),
        ({**_bad(), "hidden": torch.rand(50, 8)}, "disagree on the number of visual tokens"),
        ({**_bad(), "image_pivots": 0}, "image_pivots must be an integer >= 1"),
        ({**_bad(), "text_pivots": -1}, "text_pivots must be an integer >= 0"),
        ({**_bad(), "text_pivots": True}, "text_pivots must be an integer >= 0"),
        ({**_bad(), "num_pivots": 8}, r"has no parameter\(s\) \['num_pivots'\]"),
    ],
)
def test_bad_input_raises_a_value_error_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        d2pruner.select("dart-official", n=10, **kwargs)


def test_missing_everything_explains_what_is_needed():
    with pytest.raises(ValueError, match="post-RoPE keys, hidden states after the final norm"):
        d2pruner.select("dart-official", n=3, hidden=torch.rand(6, 4))
