"""The pruning mechanism on tiny models of all four families, sdpa and eager, K ∈ {1, 2}.

References are independent of the mechanism: the unmodified model, and a hand run that calls the model's own
decoder layers on an explicitly reduced sequence.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_NAMES, cache_argument, cache_of
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from d2pruner.families import family_for
from d2pruner.pruning import prune

ATTNS = ("sdpa", "eager")
KS = (1, 2)
MATRIX = [(name, attn, k) for name in FAMILY_NAMES for attn in ATTNS for k in KS]
PROMPT = "Describe the red box."


def _setup(tiny_models, name, attn, image):
    tm = tiny_models.get(name, attn)
    family = family_for(tm.model)
    inputs = family.build_inputs(tm.model, tm.processor, image, PROMPT)
    return tm.model, family, inputs, family.tokens_for(tm.model, tm.processor, image.size, inputs)


def _top_attention(n):
    return lambda s: torch.topk(s.attention, n).indices


def _extend(inputs, new_tokens):
    """Inputs for the prompt followed by ``new_tokens`` (1-D), for a full no-cache recomputation."""
    out = dict(inputs)
    extra = new_tokens.view(1, -1).to(inputs["input_ids"].dtype)
    out["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros_like(extra, dtype=inputs["mm_token_type_ids"].dtype)
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    return out


def _lm_inputs(model, family, inputs):
    """inputs_embeds and position ids the language model receives in an unmodified forward."""
    lm = family.language_model(model)
    seen = {}
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    embeds = seen["inputs_embeds"]
    pos = seen.get("position_ids")
    if pos is None:
        pos = torch.arange(embeds.shape[1]).unsqueeze(0)
    if pos.ndim == 3 and pos.shape[0] == 4:  # Qwen: text positions first
        pos = pos[1:]
    injected = (seen.get("visual_pos_masks"), seen.get("deepstack_visual_embeds"))  # Qwen3-VL's DeepStack
    return embeds, pos, injected


def _causal(n):
    return torch.full((n, n), float("-inf")).triu(1)[None, None]


def _inject(h, injected, i, keep):
    """Qwen3-VL's DeepStack by hand: after layer i, add feature map i to the visual tokens the sequence still holds
    (each kept visual token its own row of the map; ``keep`` = the held positions, None = all)."""
    mask, features = injected
    if features is None or i >= len(features):
        return h
    held = torch.arange(mask.shape[1]) if keep is None else keep
    rank = mask[0].long().cumsum(0) - 1
    visual = mask[0, held]
    h = h.clone()
    h[0, visual] += features[i][rank[held][visual]].to(h.dtype)
    return h


def _hand_run(model, family, embeds, pos, keep, k, injected=(None, None)):
    """Run the decoder layers by hand: all tokens below ``k``, then only sequence positions ``keep``.

    Returns (last-token logits, hidden states entering layer k, layer-(k−1) pre-RoPE keys)."""
    lm = family.language_model(model)
    cos, sin = lm.rotary_emb(embeds, pos)
    h = embeds
    entering = keys = None
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            if i == k - 1:
                keys = layer.self_attn.k_proj(layer.input_layernorm(h))[0]
            if i == k:
                entering = h[0].clone()
                h, cos, sin = h[:, keep], cos[..., keep, :], sin[..., keep, :]
            h = layer(h, attention_mask=_causal(h.shape[1]), position_embeddings=(cos, sin))
            h = _inject(h, injected, i, keep if i >= k else None)
        logits = model.lm_head(lm.norm(h[:, -1]))[0]
    return logits, entering, keys


def _expected_keep(tokens, kept):
    seq = torch.ones(tokens.seq_len, dtype=torch.bool)
    seq[tokens.positions] = False
    seq[tokens.positions[kept]] = True
    return seq.nonzero().flatten()


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_keep_all_is_identical(tiny_models, test_image, name, attn, k):
    model, _, inputs, tokens = _setup(tiny_models, name, attn, test_image)
    everything = torch.arange(tokens.num_candidates)
    with torch.no_grad():
        ref_logits = model(**inputs).logits
        ref_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        with prune(model, tokens, layer=k, keep=everything):
            logits = model(**inputs).logits
        with prune(model, tokens, layer=k, select=lambda s: torch.arange(s.hidden.shape[0])) as state:
            gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(gen, ref_gen)
    assert state.num_kept == tokens.num_candidates


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_pruned_prefill_matches_hand_reference(tiny_models, test_image, name, attn, k):
    model, family, inputs, tokens = _setup(tiny_models, name, attn, test_image)
    n = max(1, round(0.25 * tokens.num_candidates))
    with torch.no_grad(), prune(model, tokens, layer=k, select=_top_attention(n)) as state:
        out = model(**inputs, use_cache=True)
    keep = _expected_keep(tokens, state.kept)
    assert state.num_kept == n
    assert torch.equal(state.keep_positions.cpu(), keep)
    # the cache holds every token below K and the kept ones from K on
    cache = cache_of(out)
    assert cache.get_seq_length(k - 1) == tokens.seq_len
    assert cache.get_seq_length(k) == keep.numel() == tokens.seq_len - tokens.num_candidates + n
    embeds, pos, injected = _lm_inputs(model, family, inputs)
    ref, entering, keys = _hand_run(model, family, embeds, pos, keep, k, injected)
    assert (out.logits[0, -1] - ref).abs().max() <= 1e-5
    assert (state.hidden - entering[tokens.positions]).abs().max() <= 1e-5
    assert (state.keys - keys[tokens.positions]).abs().max() <= 1e-5
    # a different, fixed selection gives different logits (the test can fail)
    other = torch.arange(0, tokens.num_candidates, 3)
    with torch.no_grad(), prune(model, tokens, layer=k, keep=other):
        out2 = model(**inputs)
    ref2, _, _ = _hand_run(model, family, embeds, pos, _expected_keep(tokens, other), k, injected)
    assert (out2.logits[0, -1] - ref2).abs().max() <= 1e-5
    assert (ref2 - ref).abs().max() > 1e-4


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_cached_generation_matches_recomputation(tiny_models, test_image, name, attn, k):
    model, family, inputs, tokens = _setup(tiny_models, name, attn, test_image)
    n = max(1, round(0.25 * tokens.num_candidates))
    steps = 4
    with torch.no_grad(), prune(model, tokens, layer=k, select=_top_attention(n)) as state:
        gen = model.generate(
            **inputs,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = gen.sequences[0, tokens.seq_len :]
    assert new.numel() == steps
    for i in range(steps):
        seq_inputs = _extend(inputs, new[:i])
        embeds, pos, injected = _lm_inputs(model, family, seq_inputs)
        keep = torch.cat([state.keep_positions.cpu(), torch.arange(tokens.seq_len, tokens.seq_len + i)])
        ref, _, _ = _hand_run(model, family, embeds, pos, keep, k, injected)
        assert (gen.logits[i][0] - ref).abs().max() <= 1e-4, f"step {i}"
        assert int(ref.argmax()) == int(new[i])


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_attention_row_matches_eager_output_attentions(tiny_models, test_image, name, attn, k):
    model, _, inputs, tokens = _setup(tiny_models, name, attn, test_image)
    eager = tiny_models.get(name, "eager").model
    with torch.no_grad():
        out = eager(**inputs, output_attentions=True)
        with prune(model, tokens, layer=k) as state:  # observe mode
            model(**inputs)
    expected = out.attentions[k - 1][0, :, -1].mean(0)
    assert state.attention_row.shape == (tokens.seq_len,)
    assert (state.attention_row - expected).abs().max() <= 1e-5
    assert (state.attention - expected[tokens.positions]).abs().max() <= 1e-5
    assert abs(float(state.attention_row.sum()) - 1.0) <= 1e-5
    assert state.kept is None


def _snapshot(model):
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    return hooks, model.config.text_config._attn_implementation


def _registered():
    return [
        k
        for k in (*AttentionInterface._global_mapping, *AttentionMaskInterface._global_mapping)
        if k.startswith("d2pruner")
    ]


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_context_always_removes_itself(tiny_models, test_image, name, attn):
    model, _, inputs, tokens = _setup(tiny_models, name, attn, test_image)
    before = _snapshot(model)
    with torch.no_grad():
        ref = model(**inputs).logits
        with prune(model, tokens, layer=2, select=_top_attention(3)):
            assert _snapshot(model) != before
            assert len(_registered()) == 2
            model(**inputs)
        assert _snapshot(model) == before and _registered() == []
        with pytest.raises(RuntimeError, match="boom"), prune(model, tokens, layer=1, keep=torch.tensor([0])):
            model(**inputs)
            raise RuntimeError("boom")
        assert _snapshot(model) == before and _registered() == []

        def bad_select(s):
            raise KeyError("inside selection")

        with pytest.raises(KeyError), prune(model, tokens, layer=1, select=bad_select):
            model(**inputs)
        assert _snapshot(model) == before and _registered() == []
        assert before[1] == attn
        assert torch.equal(model(**inputs).logits, ref)


@pytest.mark.parametrize("attn", ATTNS)
def test_continuation_from_existing_cache_is_not_pruned(tiny_models, test_image, attn):
    model, _, inputs, tokens = _setup(tiny_models, "tiny-llava", attn, test_image)
    nxt = torch.tensor([[65]])
    with torch.no_grad():
        first = model(**inputs, use_cache=True)
        mask = torch.ones(1, tokens.seq_len + 1, dtype=torch.long)
        ref = model(input_ids=nxt, attention_mask=mask, **cache_argument(cache_of(first))).logits
        again = model(**inputs, use_cache=True)
        with prune(model, tokens, layer=1, keep=torch.tensor([0])) as state:
            out = model(input_ids=nxt, attention_mask=mask, **cache_argument(cache_of(again))).logits
    assert state.inactive and state.kept is None
    assert torch.allclose(out, ref, atol=1e-6)


def test_newlines_are_protected(tiny_models, test_image):
    model, _, inputs, tokens = _setup(tiny_models, "tiny-llava-next", "sdpa", test_image)
    assert tokens.protected.numel() == tokens.grids[1].rows > 0
    with torch.no_grad(), prune(model, tokens, layer=2, keep=torch.tensor([5])) as state:
        model(**inputs)
    kept = set(state.keep_positions.tolist())
    assert set(tokens.protected.tolist()) <= kept
    assert len(kept) == tokens.seq_len - tokens.num_candidates + 1
    image_id = model.config.image_token_id
    assert int((inputs["input_ids"][0] == image_id).sum()) == tokens.num_candidates + tokens.protected.numel()


def test_selection_inputs(tiny_models, test_image):
    model, _, inputs, tokens = _setup(tiny_models, "tiny-internvl", "sdpa", test_image)
    seen = {}

    def spy(s):
        seen["s"] = s
        return torch.tensor([3, 1, 3])

    with torch.no_grad(), prune(model, tokens, layer=2, select=spy) as state:
        model(**inputs)
    s = seen["s"]
    n = tokens.num_candidates
    assert s.hidden.shape == (n, 64) and s.attention.shape == (n,) and s.keys.shape == (n, 32)
    assert s.grids == [(4, 4)] * 5 and s.grid == [(4, 4)] * 5
    assert state.kept.tolist() == [1, 3]  # sorted, unique


@pytest.mark.parametrize("attn", ATTNS)
def test_bad_arguments(tiny_models, test_image, attn):
    model, _, inputs, tokens = _setup(tiny_models, "tiny-qwen2.5-vl", attn, test_image)
    for layer in (0, 4, -1):
        with pytest.raises(ValueError, match="layer"), prune(model, tokens, layer=layer):
            pass
    with pytest.raises(ValueError, match="either"), prune(model, tokens, layer=1, keep=[0], select=lambda s: [0]):
        pass
    with pytest.raises(ValueError, match=r"\[0, 24\)"), prune(model, tokens, layer=1, keep=[24]):
        model(**inputs)
    batch = {
        k: (torch.cat([v, v]) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
        for k, v in inputs.items()
    }
    rows = r"the batch has 2 rows but prune\(\) was given 1"
    with pytest.raises(ValueError, match=rows), prune(model, tokens, layer=1, keep=[0]):
        model(**batch)
    assert _registered() == []


def _left_pad(inputs, pad):
    out = dict(inputs)
    ids = inputs["input_ids"]
    out["input_ids"] = torch.cat([torch.zeros(1, pad, dtype=ids.dtype), ids], dim=1)
    out["attention_mask"] = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(ids)], dim=1)
    if "mm_token_type_ids" in inputs:
        t = inputs["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([torch.zeros(1, pad, dtype=t.dtype), t], dim=1)
    return out


def _hand_run_padded(model, family, embeds, pos, keep, k, pad, injected=(None, None)):
    """Like ``_hand_run`` with the first ``pad`` keys masked out (a left-padded prompt)."""
    lm = family.language_model(model)
    cos, sin = lm.rotary_emb(embeds, pos)
    seq = torch.arange(embeds.shape[1])
    h = embeds
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            if i == k:
                h, cos, sin, seq = h[:, keep], cos[..., keep, :], sin[..., keep, :], seq[keep]
            allowed = (seq[None, :] <= seq[:, None]) & (seq[None, :] >= pad)
            allowed |= torch.eye(len(seq), dtype=torch.bool) & (seq[:, None] < pad)  # pad rows: not all-masked
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin))
            h = _inject(h, injected, i, keep if i >= k else None)
        return model.lm_head(lm.norm(h[:, -1]))[0]


@pytest.mark.parametrize(("name", "attn", "k"), [m for m in MATRIX if m[2] == 2])
def test_padding_mask_is_kept(tiny_models, test_image, name, attn, k):
    """A left-padded prompt: the padding mask reaches layers ≥ K (needs the AttentionMaskInterface entry)."""
    model, family, inputs, _ = _setup(tiny_models, name, attn, test_image)
    pad = 3
    padded = _left_pad(inputs, pad)
    tokens = family.tokens_for(model, tiny_models.get(name, attn).processor, test_image.size, padded)
    n = max(1, round(0.25 * tokens.num_candidates))
    with torch.no_grad():
        ref_full = model(**padded).logits[0, -1]
        with prune(model, tokens, layer=k, keep=torch.arange(tokens.num_candidates)):
            same = model(**padded).logits[0, -1]
        with prune(model, tokens, layer=k, select=_top_attention(n)) as state:
            out = model(**padded).logits[0, -1]
    assert torch.equal(same, ref_full)
    embeds, pos, injected = _lm_inputs(model, family, padded)
    ref = _hand_run_padded(model, family, embeds, pos, state.keep_positions.cpu(), k, pad, injected)
    assert (out - ref).abs().max() <= 1e-5
    unpadded = _hand_run(model, family, embeds, pos, state.keep_positions.cpu(), k, injected)[0]
    assert (unpadded - ref).abs().max() > 1e-4  # the padding matters, so the check above can fail


@pytest.mark.parametrize(("name", "attn", "k"), MATRIX)
def test_replayed_prefix_equals_recomputing_layers_below_k(tiny_models, test_image, name, attn, k):
    """Layers < K shared across methods: a replayed prefix gives the same logits, tokens and selection inputs
    as recomputing them, and layers < K then see one token only."""
    model, family, inputs, tokens = _setup(tiny_models, name, attn, test_image)
    layers = family.language_model(model).layers
    with torch.no_grad(), prune(model, tokens, layer=k, record=True) as vanilla:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    prefix = vanilla.prefix
    assert prefix.hidden.shape[1] == tokens.seq_len and len(prefix.cache) == k
    keep = torch.arange(0, tokens.num_candidates, 3)
    gen_kwargs = dict(
        max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    with torch.no_grad(), prune(model, tokens, layer=k, keep=keep) as full:
        expected = model.generate(**inputs, **gen_kwargs)
    seen = []

    def record_length(i):
        def hook(module, args, output):
            seen.append((i, (output[0] if isinstance(output, tuple) else output).shape[1]))

        return hook

    hooks = [layer.register_forward_hook(record_length(i)) for i, layer in enumerate(layers[:k])]
    try:
        with torch.no_grad(), prune(model, tokens, layer=k, keep=keep, replay=prefix) as replayed:
            got = model.generate(**inputs, **gen_kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(got.sequences, expected.sequences)
    for step, (a, b) in enumerate(zip(got.logits, expected.logits, strict=True)):
        assert (a - b).abs().max() <= 1e-5, f"step {step}"
    assert torch.equal(replayed.hidden, full.hidden) and torch.equal(replayed.attention, full.attention)
    assert torch.equal(replayed.keep_positions, full.keep_positions)
    assert seen[:k] == [(i, 1) for i in range(k)]  # the prefill ran layers < K on one token only
    assert replayed.prefill_seconds >= prefix.seconds


def test_cache_is_found_by_type_under_any_name():
    from transformers import DynamicCache

    from d2pruner.pruning import find_cache

    cache = DynamicCache()
    assert find_cache((), {"cache": cache}) is cache
    assert find_cache((), {"past_key_values": cache}) is cache
    assert find_cache((), {"kv_store_renamed_in_a_future_release": cache, "use_cache": True}) is cache
    assert find_cache((torch.zeros(1), cache), {}) is cache
    assert find_cache((), {"past_key_values": None, "use_cache": True}) is None


def test_decoding_generates_identically_whatever_the_cache_keyword(tiny_models, test_image, monkeypatch):
    """generate() under prune decodes from the cache; the decision never reads a keyword, so a decoder that receives
    the cache under another name (simulated: every known name hidden, found by type only) behaves the same."""
    import d2pruner.pruning.hooks as base

    model, _, inputs, tokens = _setup(tiny_models, "tiny-llava", "sdpa", test_image)
    keep = torch.arange(0, tokens.num_candidates, 3)
    with torch.no_grad(), prune(model, tokens, layer=2, keep=keep):
        ref = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    monkeypatch.setattr(base, "CACHE_ARGUMENT_NAMES", ("no_such_name",))
    with torch.no_grad(), prune(model, tokens, layer=2, keep=keep):
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, ref)


def test_a_cache_that_cannot_be_found_fails_loudly(tiny_models, test_image, monkeypatch):
    """If a future release hid the cache completely, decoding must fail with a clear error, not run wrong."""
    import transformers

    import d2pruner.pruning.hooks as base

    model, _, inputs, tokens = _setup(tiny_models, "tiny-llava", "sdpa", test_image)
    monkeypatch.setattr(base, "find_cache", lambda args, kwargs: None)
    with (
        pytest.raises(RuntimeError, match=rf"no cache .*transformers {transformers.__version__}"),
        torch.no_grad(),
        prune(model, tokens, layer=2, keep=torch.arange(4)),
    ):
        model.generate(**inputs, max_new_tokens=3, do_sample=False)


def test_a_replayed_prefill_whose_cache_was_not_restored_fails_loudly():
    from transformers import DynamicCache

    from d2pruner.ops import GridView
    from d2pruner.pruning import PruneState, RowState
    from d2pruner.tokens import VisualTokens

    tokens = VisualTokens(torch.arange(4), [GridView("image", 2, 2, 0)], torch.zeros(0, dtype=torch.long), 10)
    state = PruneState(layer=1, rows=[RowState(tokens)], fixed=[torch.arange(2)], replay=object())
    state.prefill_length = 10
    cache = DynamicCache()
    cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), 0)  # one (dummy) token where 10 belong
    with pytest.raises(RuntimeError, match="replayed prefill"):
        state.begin_call(cache)
