"""The only code that touches transformers internals: one small hooks object, registered and removed in one
``try/finally``.

How it works (transformers 5.23–5.24; batch rows each with their own kept set):

1. An attention function registered with ``AttentionInterface`` under a unique name (with the matching
   ``AttentionMaskInterface`` entry — without it ``create_causal_mask`` silently drops the padding mask) is set on
   the *text config of this model instance only*; the previous ``_attn_implementation`` is restored on exit. It
   wraps the real implementation (sdpa, eager) unchanged; at layer K−1 of the prefill it also computes every row's
   last-prompt-token attention row from the post-RoPE q and k it receives (softmax over the whole sequence with the
   mask, fp32, mean over heads, KV heads repeated for GQA).
2. A forward hook on ``layers[K-1].self_attn.k_proj`` keeps the layer-(K−1) keys (*pre-RoPE*, all KV heads
   concatenated) for DART — pre-RoPE so that two tokens' similarity does not depend on their distance.
3. A forward pre-hook on the decoder decides, once per forward, whether this forward is the prefill or a
   continuation — from the Cache object it receives (found by type, under whatever name) and from the state, never
   from the name of a keyword the layers receive (5.24 renamed ``past_key_values`` to ``cache``).
4. Forward pre-hooks (``with_kwargs=True``) on every decoder layer ≥ K. At layer K of the prefill the visual
   hidden states entering layer K are handed to the selection, row by row; text and protected tokens plus each
   row's kept visual tokens stay, in original order, and original positions are kept. Hidden states (layer K
   only), position embeddings (also Qwen's M-RoPE ones), position ids and 4-D masks are sliced per row for every
   layer ≥ K (:mod:`d2pruner.pruning.slicing`). Later forwards (decode steps, continuations) are never pruned again:
   their masks' key columns are mapped to each row's kept prefix plus everything after the prompt, which is
   exactly what layers ≥ K hold in the cache.
5. Everything is undone in ``finally``: hooks removed, the registry entries deleted, the config restored.

Nothing is patched at import time and no class is modified.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
from collections.abc import Callable, Iterator, Sequence

import torch

from d2pruner.families import family_for
from d2pruner.pruning.state import (
    CACHE_ARGUMENT_NAMES,
    Prefix,
    PruneState,
    RowState,
    SelectFn,
    transformers_version,
)
from d2pruner.tokens import VisualTokens

_COUNTER = itertools.count()
SUPPORTED_ATTENTION = ("sdpa", "eager")


def find_cache(args: tuple, kwargs: dict):
    """The ``transformers`` Cache object of one call, whatever its argument is called (None if there is none).

    Known names are looked at first, then every argument by type — a renamed argument is still found."""
    from transformers.cache_utils import Cache

    for name in CACHE_ARGUMENT_NAMES:
        if isinstance(kwargs.get(name), Cache):
            return kwargs[name]
    for value in (*kwargs.values(), *args):
        if isinstance(value, Cache):
            return value
    return None


class PruneHooks:
    """The hooks of one :func:`prune` context; each hook is a method, :meth:`active` registers and removes them.

    Arguments: as for :func:`prune`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokens: VisualTokens | Sequence[VisualTokens],
        *,
        layer: int,
        select: SelectFn | None = None,
        keep: torch.Tensor | Sequence[torch.Tensor] | None = None,
        record: bool = False,
        replay: Prefix | None = None,
        capture_sequence: bool = False,
        capture_layers: bool = False,
    ):
        self.model = model
        family = family_for(model)
        self.decoder = family.language_model(model)
        self.layers = self.decoder.layers
        self.injection = family.feature_injection if family.injected_layers(model) else None
        if self.injection is not None and not callable(getattr(self.decoder, self.injection, None)):
            raise RuntimeError(
                f"{family.label} adds visual features after its first decoder layers through "
                f"{type(self.decoder).__name__}.{self.injection}, which transformers {transformers_version()} does "
                "not have: pruning could not keep those features on the kept tokens"
            )
        rows = [tokens] if isinstance(tokens, VisualTokens) else list(tokens)
        if not rows or not all(isinstance(t, VisualTokens) for t in rows):
            raise ValueError("tokens must be a VisualTokens or a non-empty list of them (one per batch row)")
        num_layers = len(self.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_layers:
            raise ValueError(f"layer must be an integer in [1, {num_layers}), got {layer!r}")
        if select is not None and keep is not None:
            raise ValueError("give either select or keep, not both")
        self.layer = layer
        self.inner = self.decoder.config._attn_implementation or "sdpa"
        if self.inner not in SUPPORTED_ATTENTION:
            # flash / flex attention take 2-D masks or position-id packing, which pruned positions would break
            raise ValueError(f"pruning supports the sdpa and eager attention implementations, not {self.inner!r}")
        self.state = PruneState(
            layer=layer,
            rows=[RowState(t) for t in rows],
            select_fn=select,
            fixed=_fixed_rows(keep, len(rows)),
            record=record,
            replay=replay,
            additive_masks=self.inner == "eager",
            capture_sequence=capture_sequence,
            capture_layers=capture_layers,
        )
        self.key = f"d2pruner_{next(_COUNTER)}"

    # ---- the hooks ----------------------------------------------------------------------------------------
    def attention(self, module, query, key, value, attention_mask, **kwargs):
        """The registered attention function: the real one, plus the attention-row capture at layer K−1."""
        inner = _eager_for(module) if self.inner == "eager" else _registered(self.inner)
        state = self.state
        index = getattr(module, "layer_idx", None)
        full = query.shape[-2] == key.shape[-2]  # a forward from an empty cache
        scaling = kwargs.get("scaling") or module.scaling
        if full and index == self.layer - 1 and state.replay is None and state.in_prefill:
            state.capture_rows(query, key, attention_mask, scaling)
        if full and index is not None and state.capture_layers and state.observe_only and state._prefill_forward:
            state.capture_layer(index, query, key, attention_mask, scaling)
        return inner(module, query, key, value, attention_mask, **kwargs)

    def on_keys(self, module, args, output) -> None:
        if self.state.in_prefill:
            self.state._keys_full = output.detach()

    def on_model_call(self, module, args, kwargs) -> None:
        for name in ("input_ids", "inputs_embeds"):
            t = kwargs.get(name)
            if t is None and name == "input_ids" and args:
                t = args[0]
            if isinstance(t, torch.Tensor) and t.shape[0] != self.state.batch_size:
                raise ValueError(f"the batch has {t.shape[0]} rows but prune() was given {self.state.batch_size} "
                                 "VisualTokens (one per row)")
        self.state.start_timer(self._sync)

    def on_model_return(self, module, args, kwargs, output) -> None:
        self.state.stop_timer(self._sync)

    def on_decoder_call(self, module, args, kwargs) -> None:
        self.state.begin_call(find_cache(args, kwargs))

    def on_replayed_layer(self, module, args, kwargs):
        """Layers < K of a replayed prefill see only the last token (a cheap stand-in, discarded at layer K)."""
        if not self.state.in_prefill:
            return None  # decode steps / continuations: layers < K run normally on their (restored) cache
        hidden = args[0] if args else kwargs["hidden_states"]
        return _last_token_only(hidden, args, kwargs)

    def on_pruned_layer(self, index: int, module, args, kwargs):
        """Layers ≥ K: at layer K decide this forward's plan; every layer gets its inputs sliced per row."""
        state = self.state
        received = args[0] if args else kwargs.get("hidden_states")
        hidden = received
        if index == self.layer:
            if state.in_prefill:
                hidden = state.enter_layer_k(hidden, state._call_cache or find_cache(args, kwargs))
                if state.capture_sequence:
                    state.capture_normed(self.decoder.norm(hidden))
            state.begin_forward(hidden)
        if state._mode is None:
            return None if hidden is received else _with_hidden(hidden, args, kwargs)
        new_hidden, new_kwargs = state.slice_inputs(hidden if index == self.layer else None, kwargs)
        if index == self.layer:
            return _with_hidden(new_hidden, args, new_kwargs)
        return args, new_kwargs

    def on_injection(self, original: Callable, hidden, mask, features):
        """Wraps the family's feature injection (this model instance only): features follow the kept tokens."""
        sliced = self.state.sliced_injection(hidden, mask, features)
        return hidden if sliced is None else original(hidden, *sliced)

    # ---- registration -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self) -> Iterator[PruneState]:
        """Register every hook, yield the state, and undo everything on exit (also on error)."""
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface

        config = self.decoder.config
        previous = config._attn_implementation
        handles = []
        try:
            AttentionInterface.register(self.key, self.attention)
            AttentionMaskInterface.register(self.key, ALL_MASK_ATTENTION_FUNCTIONS[self.inner])
            config._attn_implementation = self.key
            handles += [
                self.model.register_forward_pre_hook(self.on_model_call, with_kwargs=True),
                self.model.register_forward_hook(self.on_model_return, with_kwargs=True),
                self.decoder.register_forward_pre_hook(self.on_decoder_call, with_kwargs=True),
            ]
            k_proj = getattr(getattr(self.layers[self.layer - 1], "self_attn", None), "k_proj", None)
            if k_proj is not None:
                handles.append(k_proj.register_forward_hook(self.on_keys))
            if self.state.replay is not None:
                handles += [layer.register_forward_pre_hook(self.on_replayed_layer, with_kwargs=True)
                            for layer in self.layers[: self.layer]]
            handles += [
                layer.register_forward_pre_hook(functools.partial(self.on_pruned_layer, i), with_kwargs=True)
                for i, layer in enumerate(self.layers) if i >= self.layer
            ]
            if self.injection is not None:
                original = getattr(self.decoder, self.injection)
                setattr(self.decoder, self.injection, functools.partial(self.on_injection, original))
            yield self.state
        finally:
            if self.injection is not None:
                self.decoder.__dict__.pop(self.injection, None)
            for handle in handles:
                handle.remove()
            config._attn_implementation = previous
            AttentionInterface._global_mapping.pop(self.key, None)
            AttentionMaskInterface._global_mapping.pop(self.key, None)
            self.state._keys_full = self.state._call_cache = self.state._mode = None
            self.state._memo = {}

    def _sync(self) -> None:
        try:
            device = next(self.model.parameters()).device
        except StopIteration:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)


@contextlib.contextmanager
def prune(
    model: torch.nn.Module,
    tokens: VisualTokens | Sequence[VisualTokens],
    *,
    layer: int,
    select: SelectFn | None = None,
    keep: torch.Tensor | Sequence[torch.Tensor] | None = None,
    record: bool = False,
    replay: Prefix | None = None,
    capture_sequence: bool = False,
    capture_layers: bool = False,
) -> Iterator[PruneState]:
    """Prune visual tokens inside ``model`` at decoder layer ``layer`` for the forwards run inside the block.

    Arguments:
        model: a supported ``*ForConditionalGeneration`` instance (see ``d2pruner.families.FAMILIES``).
        tokens: the prompt's :class:`~d2pruner.tokens.VisualTokens` (``family.visual_tokens(...)``), or one per
            batch row: rows may hold one prompt replicated (every method of an analysis) or different, left-padded
            prompts (evaluation).
        layer: K, 1 ≤ K < num_layers. Layers < K see every token, layers ≥ K the kept ones.
        select: ``fn(PruneInputs) -> indices`` called once per row at layer K of the prefill.
        keep: precomputed indices into the N candidates ("fixed indices" mode) — one tensor (one row) or one per
            row; exclusive with ``select``. With neither, nothing is pruned and the state only records attention /
            hidden / keys ("observe").
        record: keep what layers < K computed in ``state.prefix`` (a :class:`~d2pruner.pruning.Prefix`; one row).
        replay: a :class:`~d2pruner.pruning.Prefix` of the *same prompt*, broadcast to every row: layers < K are not
            recomputed.
        capture_sequence: also keep the whole prompt's post-RoPE layer-(K−1) keys and the hidden states entering
            layer K after the final norm (what ``dart-official`` selects from).
        capture_layers: in observe mode, keep the last prompt token's attention row at every layer, per head
            (``state.layer_rows``: layer → [B, H, L]).

    Yields:
        The :class:`~d2pruner.pruning.PruneState`, filled during the first (prefill) forward inside the block.

    The first forward inside the block that starts from an empty cache is the prefill and is pruned once;
    decode steps and continuations are never re-pruned. A context entered on a non-empty cache does nothing.
    Rows may keep different numbers of tokens: shorter rows get masked filler slots in front, like padding.
    """
    hooks = PruneHooks(model, tokens, layer=layer, select=select, keep=keep, record=record, replay=replay,
                       capture_sequence=capture_sequence, capture_layers=capture_layers)
    with hooks.active() as state:
        yield state


class _EarlyExit(Exception):
    """Raised by :func:`capture` once layer K's inputs are recorded; never escapes it."""


def capture(model: torch.nn.Module, tokens: VisualTokens | Sequence[VisualTokens], inputs: dict, *,
            layer: int, capture_layers: bool = False) -> PruneState:
    """Run only what the selection needs — the vision tower and layers < K — and stop (early exit).

    The state holds ``attention_row`` / ``attention`` (layer K−1), ``hidden`` (entering layer K) and ``keys``
    exactly as in a full prefill under :func:`prune`; layers ≥ K, the final norm and the LM head never run.
    Used for prior calibration and for looking at attention without generating.

    Arguments:
        model, tokens: as for :func:`prune`.
        inputs: the model's forward inputs for the prompt(s).
        layer: K.
        capture_layers: keep every layer's (< K) last-token attention row per head in ``state.layer_rows``.
    """

    def stop(module, args, kwargs):
        raise _EarlyExit

    hooks = PruneHooks(model, tokens, layer=layer, capture_layers=capture_layers)
    with hooks.active() as state:
        handle = hooks.layers[layer].register_forward_pre_hook(stop, with_kwargs=True)  # after prune's own hook
        try:
            with torch.inference_mode():
                model(**inputs, use_cache=False)
        except _EarlyExit:
            pass
        finally:
            handle.remove()
    if state.rows[0].hidden is None:
        raise RuntimeError("early exit: layer K was never reached (is the prompt's image in the inputs?)")
    return state


def _fixed_rows(keep, rows: int) -> list[torch.Tensor] | None:
    if keep is None:
        return None
    if isinstance(keep, torch.Tensor) and (keep.ndim <= 1 or rows == 1):
        keep = [keep]
    keep = [torch.as_tensor(k, dtype=torch.long).flatten() for k in keep]
    if len(keep) != rows:
        raise ValueError(f"keep must hold one index tensor per batch row ({rows}), got {len(keep)}")
    return keep


def _with_hidden(hidden: torch.Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _last_token_only(hidden: torch.Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Slice a decoder layer's inputs to the last sequence position (hidden, cos/sin, ids, 4-D mask)."""
    last = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
    kwargs = dict(kwargs)
    pe = kwargs.get("position_embeddings")
    if pe is not None:
        kwargs["position_embeddings"] = tuple(
            t.index_select(-2, last.to(t.device)) if t.shape[-2] > 1 else t for t in pe
        )
    for name in ("position_ids", "cache_position"):
        t = kwargs.get(name)
        if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[-1] > 1:
            kwargs[name] = t.index_select(-1, last.to(t.device))
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[-2] > 1:
        kwargs["attention_mask"] = mask[..., -1:, -1:]
    return _with_hidden(hidden[:, -1:] if hidden.shape[1] > 1 else hidden, args, kwargs)


def _registered(name: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def _eager_for(module) -> Callable:
    """The ``eager_attention_forward`` of the module's own modeling file (eager is not in the global registry)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"{type(module).__name__} has no eager_attention_forward to wrap")
    return fn
