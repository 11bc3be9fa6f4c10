"""The in-place growing KV cache: the same keys and values as transformers' DynamicLayer, whatever sets them."""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicLayer

from d2pruner.pruning.cache import GrowingLayer, cache_argument, growing_cache


def test_appends_equal_dynamic_layer_and_stay_in_one_buffer():
    grow, ref = GrowingLayer(), DynamicLayer()
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(2, 3, n, 4, generator=gen) for n in (5, 1, 1, 70, 1)]
    pointers = set()
    for k in steps:
        v = k * 2
        got, want = grow.update(k, v), ref.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        assert grow.get_seq_length() == ref.get_seq_length()
        pointers.add(grow.keys.data_ptr())
    assert len(pointers) == 2  # one regrowth when the 70-token chunk exceeded the headroom


def test_keys_set_from_outside_are_taken_over():
    """The hooks put a replayed prefix back by assigning keys / values; the next append continues from them."""
    grow, ref = GrowingLayer(), DynamicLayer()
    first = torch.ones(1, 2, 3, 4)
    grow.update(first, first)
    ref.update(first, first)
    prefix = torch.arange(2 * 2 * 6 * 4, dtype=torch.float32).view(2, 2, 6, 4)  # another batch size and length
    grow.keys, grow.values = prefix.clone(), prefix.clone()
    ref.keys, ref.values = prefix.clone(), prefix.clone()
    new = torch.full((2, 2, 1, 4), -1.0)
    got, want = grow.update(new, new), ref.update(new, new)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_cache_for_a_model_and_the_keyword_of_this_release(tiny_models):
    model = tiny_models.get("tiny-llava").model
    cache = growing_cache(model)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    (name,) = cache_argument(model, cache)
    assert name in inspect.signature(model.forward).parameters and name in ("cache", "past_key_values")
