"""A KV cache whose full-attention layers append in place, for batched generations over long prompts.

transformers' ``DynamicLayer`` concatenates the whole cache with each new token (``torch.cat``): every decode step
copies B × L keys and values per layer. With six rows of a 3,000-token LLaVA-NeXT prompt that copy alone cost about
as much as the step's matmuls on a CPU. :class:`GrowingLayer` keeps a buffer with headroom, writes each new token
into it and hands the attention a view (an amortised O(1) append; SDPA reads strided views as fast as contiguous
tensors — measured). Everything else is ``DynamicLayer``'s: ``keys`` / ``values`` stay attributes, so anything that
sets them (the hooks' replayed prefix) is taken over at the next update.
"""

from __future__ import annotations

import inspect

import torch


def _dynamic_layer():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class GrowingLayer(_dynamic_layer()):
    """A ``DynamicLayer`` that appends into a buffer with headroom instead of concatenating."""

    #: extra positions allocated beyond what is needed when the buffer (re)grows
    headroom = 64

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        new = key_states.shape[-2]
        if not self._writes_in_place(key_states, length + new):
            self._regrow(key_states, value_states, length, length + new)
        self._key_buffer[..., length : length + new, :] = key_states
        self._value_buffer[..., length : length + new, :] = value_states
        self.keys = self._key_buffer[..., : length + new, :]
        self.values = self._value_buffer[..., : length + new, :]
        return self.keys, self.values

    def _writes_in_place(self, key_states: torch.Tensor, needed: int) -> bool:
        buffer = getattr(self, "_key_buffer", None)
        if buffer is None or needed > buffer.shape[-2] or buffer.shape[:-2] != key_states.shape[:-2]:
            return False
        # the keys must still be the buffer's view (something may have set them, e.g. a replayed prefix)
        return self.keys.numel() == 0 or self.keys.data_ptr() == buffer.data_ptr()

    def _regrow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, needed: int) -> None:
        capacity = max(needed + self.headroom, 2 * getattr(self, "_key_buffer", key_states).shape[-2])
        shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
        keys = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
        values = torch.empty((*shape[:-1], value_states.shape[-1]), dtype=value_states.dtype,
                             device=value_states.device)
        if length:
            keys[..., :length, :] = self.keys
            values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer = keys, values


def growing_cache(model) -> object:
    """A ``DynamicCache`` for ``model`` whose plain full-attention layers are :class:`GrowingLayer` (sliding or
    other special layers are left as transformers makes them)."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config)
    plain = _dynamic_layer()
    cache.layers = [GrowingLayer() if type(layer) is plain else layer for layer in cache.layers]
    return cache


def cache_argument(model, cache) -> dict:
    """``{name: cache}`` for ``generate`` / ``forward``, by the name this release's model forward declares (``cache``
    since transformers 5.24, ``past_key_values`` before; both are read in the signature, never assumed)."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return {name: cache}
    raise RuntimeError(f"{type(model).__name__}.forward takes neither 'cache' nor 'past_key_values': this transformers "
                       "release passes the KV cache in a way d2pruner does not know")
