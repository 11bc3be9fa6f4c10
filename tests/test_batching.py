"""Several kept sets in one forward: row r of a batched pruned generation equals the same kept set run alone.

One prompt replicated (an analysis: one row per method) and different prompts left-padded into one batch
(evaluation), rows keeping the same or different numbers of tokens (shorter rows get masked filler slots), every
family, sdpa and eager, K ∈ {1, 2}.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_NAMES

from d2pruner.families import family_for
from d2pruner.pruning import prune

ATTNS = ("sdpa", "eager")
MATRIX = [(name, attn, k) for name in FAMILY_NAMES for attn in ATTNS for k in (1, 2)]
PROMPTS = ("Describe the red box.", "What colour is the largest block in this picture, and where is it?")
NEW_TOKENS = 4


def _prompt_inputs(tiny_models, name, attn, image, prompt):
    tm = tiny_models.get(name, attn)
    family = family_for(tm.model)
    inputs = family.build_inputs(tm.model, tm.processor, image, prompt)
    return tm.model, tm.processor, family, inputs


def _kept_sets(num: int, seed: int) -> list[torch.Tensor]:
    """Three kept sets: two of one size, one smaller (its row gets filler slots)."""
    gen = torch.Generator().manual_seed(seed)
    size = max(2, num // 3)
    return [torch.randperm(num, generator=gen)[:size].sort().values for _ in range(2)] + [
        torch.randperm(num, generator=gen)[: size // 2].sort().values
    ]


def _alone(model, tokens, inputs, kept, k):
    with torch.no_grad(), prune(model, tokens, layer=k, keep=kept):
        logits = model(**inputs).logits[0, -1]
    with torch.no_grad(), prune(model, tokens, layer=k, keep=kept) as state:
        ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return logits, ids[0, inputs["input_ids"].shape[1] :], state


def _stack(inputs_list, pad_id=0):
    """Left-pad sequence inputs and concatenate per-image inputs (one image per prompt)."""
    length = max(i["input_ids"].shape[1] for i in inputs_list)
    out = {}
    for key in inputs_list[0]:
        parts = [i[key] for i in inputs_list]
        if key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            fill = pad_id if key == "input_ids" else 0
            parts = [torch.cat([torch.full((1, length - p.shape[1]), fill, dtype=p.dtype), p], dim=1) for p in parts]
        out[key] = torch.cat(parts)
    return out


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_replicated_prompt_rows_equal_each_kept_set_alone(tiny_models, test_image, name, attn, k):
    model, processor, family, inputs = _prompt_inputs(tiny_models, name, attn, test_image, PROMPTS[0])
    tokens = family.tokens_for(model, processor, test_image.size, inputs)
    kept = _kept_sets(tokens.num_candidates, seed=k)
    batch = _stack([inputs] * len(kept))
    rows = [family.tokens_for(model, processor, test_image.size, batch, row=r) for r in range(len(kept))]
    with torch.no_grad(), prune(model, rows, layer=k, keep=kept) as state:
        logits = model(**batch).logits[:, -1]
    assert [r.num_kept for r in state.rows] == [int(x.numel()) for x in kept]
    with torch.no_grad(), prune(model, rows, layer=k, keep=kept):
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    for r, keep in enumerate(kept):
        ref_logits, ref_ids, alone = _alone(model, tokens, inputs, keep, k)
        assert (logits[r] - ref_logits).abs().max() <= 1e-5
        assert torch.equal(ids[r, batch["input_ids"].shape[1] :], ref_ids)
        # every text and protected (newline) token is kept in every row, with the row's own visual tokens
        assert torch.equal(state.rows[r].keep_positions.cpu(), alone.keep_positions.cpu())


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_padded_prompts_rows_equal_each_prompt_alone(tiny_models, test_image, name, attn, k):
    pieces = [_prompt_inputs(tiny_models, name, attn, test_image, p) for p in PROMPTS]
    model, processor, family, _ = pieces[0]
    singles = [p[3] for p in pieces]
    batch = _stack(singles)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the first row is padded
    rows = [family.tokens_for(model, processor, test_image.size, batch, row=r) for r in range(2)]
    alone_tokens = [family.tokens_for(model, processor, test_image.size, s) for s in singles]
    kept = _kept_sets(rows[0].num_candidates, seed=10 + k)[1:]  # different sizes: fillers on top of padding
    with torch.no_grad(), prune(model, rows, layer=k, keep=kept):
        logits = model(**batch).logits[:, -1]
    with torch.no_grad(), prune(model, rows, layer=k, keep=kept):
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    for r in range(2):
        ref_logits, ref_ids, _ = _alone(model, alone_tokens[r], singles[r], kept[r], k)
        assert (logits[r] - ref_logits).abs().max() <= 1e-5
        assert torch.equal(ids[r, batch["input_ids"].shape[1] :], ref_ids)


def test_select_runs_once_per_row_with_that_rows_inputs(tiny_models, test_image):
    model, processor, family, inputs = _prompt_inputs(tiny_models, "tiny-llava", "sdpa", test_image, PROMPTS[0])
    batch = _stack([inputs, inputs])
    rows = [family.tokens_for(model, processor, test_image.size, batch, row=r) for r in range(2)]
    seen = []

    def select(inputs):
        seen.append(inputs.row)
        return torch.arange(inputs.row + 3)  # a different count per row

    with torch.no_grad(), prune(model, rows, layer=2, select=select) as state:
        model(**batch)
    assert seen == [0, 1]
    assert [r.num_kept for r in state.rows] == [3, 4]
    assert torch.equal(state.rows[0].hidden, state.rows[1].hidden)  # the same prompt in both rows


def test_batched_bad_input_says_what_was_expected(tiny_models, test_image):
    model, processor, family, inputs = _prompt_inputs(tiny_models, "tiny-llava", "sdpa", test_image, PROMPTS[0])
    tokens = family.tokens_for(model, processor, test_image.size, inputs)
    batch = _stack([inputs, inputs])
    with pytest.raises(ValueError, match=r"one index tensor per batch row \(2\), got 3"):
        prune(model, [tokens, tokens], layer=1, keep=[torch.arange(2)] * 3).__enter__()
    out_of_range = [torch.arange(2), torch.tensor([3, 64])]
    with (
        pytest.raises(ValueError, match=r"indices of row 1 must lie in \[0, 64\)"),
        torch.no_grad(),
        prune(model, [tokens, tokens], layer=1, keep=out_of_range),
    ):
        model(**batch)
    with (
        pytest.raises(ValueError, match=r"the batch has 2 rows but prune\(\) was given 3"),
        torch.no_grad(),
        prune(model, [tokens] * 3, layer=1, keep=[torch.arange(2)] * 3),
    ):
        model(**batch)
    with pytest.raises(ValueError, match="non-empty list"):
        prune(model, [], layer=1).__enter__()
