"""The shared pruning mechanism: an ``AttentionInterface`` wrapper plus decoder-layer pre-hooks.

How it works (transformers 5.23, batch size 1):

1. :func:`prune` registers a uniquely named attention function (and the matching ``AttentionMaskInterface``
   entry — without it ``create_causal_mask`` silently drops the padding mask) and sets it on the *text config
   of this model instance only*; the previous ``_attn_implementation`` is restored on exit. The function wraps
   the real implementation (sdpa, eager, …) unchanged; at layer K−1 during prefill it additionally computes the
   last-prompt-token attention row from the post-RoPE q and k it receives (softmax over the whole sequence with
   the mask, fp32, mean over heads, KV heads repeated for GQA).
2. A forward hook on ``layers[K-1].self_attn.k_proj`` keeps the layer-(K−1) keys of the visual tokens
   (*pre-RoPE*, all KV heads concatenated: [N, H_kv·d]) for DART — pre-RoPE so that the similarity of two tokens
   does not depend on their distance in the sequence.
3. Forward pre-hooks (``with_kwargs=True``) on every decoder layer ≥ K. At layer K of the prefill the visual
   hidden states entering layer K are handed to the selection; all text (and protected) tokens plus the kept
   visual tokens stay, in original order. Hidden states (layer K only), position embeddings (cos/sin, also the
   3-D M-RoPE ones: the sequence is always dim −2), position ids and 4-D masks (rows and columns) are sliced for
   every layer ≥ K. Original positions are kept. Later forwards (decode steps, continuations) are never pruned
   again; their masks' key columns are mapped to the kept prefix + everything after the prompt, which is exactly
   what layers ≥ K hold in the cache.
4. Everything is undone in ``finally``: hooks removed, the registry entries deleted, the config restored.

Nothing here is patched at import time and no class is modified.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from d2pruner.ops import GridView

_COUNTER = itertools.count()

#: every name under which a supported transformers release passes the KV cache to the decoder and its layers
#: (5.23: ``past_key_values``; 5.24 renamed it ``cache`` and keeps the old name as a deprecated alias)
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values", "past_key_value")


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


def transformers_version() -> str:
    import transformers

    return transformers.__version__


@dataclass
class ProcessorParts:
    """Tokenizer + image processor, for families whose full processor cannot be built (Qwen2.5-VL and InternVL
    need torchvision for their video processor). The family adapter expands the image tokens itself."""

    tokenizer: Any
    image_processor: Any


@dataclass
class VisualTokens:
    """Where the visual tokens of one prompt sit.

    Attributes:
        positions: [N] sequence positions of the *candidate* visual tokens, grid after grid, row-major. The
            selection's indices index this tensor.
        grids: the grids, in candidate order; their sizes sum to N.
        protected: sequence positions of visual tokens that are never pruned and are not candidates
            (LLaVA-NeXT's newline tokens).
        seq_len: prompt length L.
    """

    positions: torch.Tensor
    grids: list[GridView]
    protected: torch.Tensor
    seq_len: int

    def __post_init__(self) -> None:
        n = int(self.positions.numel())
        if sum(g.size for g in self.grids) != n:
            raise ValueError(f"grid sizes {[g.size for g in self.grids]} do not sum to {n} visual tokens")

    @property
    def num_candidates(self) -> int:
        return int(self.positions.numel())

    @property
    def grid_shapes(self) -> list[tuple[int, int]]:
        return [(g.rows, g.cols) for g in self.grids]


@dataclass
class PruneInputs:
    """What a selection function receives at layer K (N = number of candidate visual tokens).

    Attributes:
        hidden: [N, D] visual hidden states entering layer K (output of layer K−1), fp32.
        attention: [N] last-prompt-token attention to the visual tokens at layer K−1, mean over heads, fp32.
        keys: [N, H_kv·d] pre-RoPE layer-(K−1) keys of the visual tokens, fp32, or None.
        grids: [(rows, cols), …] whose sizes sum to N.
    """

    hidden: torch.Tensor
    attention: torch.Tensor
    keys: torch.Tensor | None
    grids: list[tuple[int, int]]

    @property
    def grid(self) -> tuple[int, int] | list[tuple[int, int]]:
        """A single (rows, cols) when there is one grid, else the list — the form ``d2pruner.select`` takes."""
        return self.grids[0] if len(self.grids) == 1 else list(self.grids)


SelectFn = Callable[[PruneInputs], torch.Tensor]


@dataclass
class Prefix:
    """What the layers below K computed for one prompt — enough to run layers ≥ K again without them.

    Recorded by ``prune(..., record=True)`` during an unpruned prefill and replayed by
    ``prune(..., replay=prefix)``: then layers < K run on one dummy token only, and at layer K the recorded
    hidden states, attention row, keys and KV cache of layers < K are put back. The results are identical to
    recomputing them (tested); ``seconds`` is the time the recorded prefill spent before layer K, which a
    replayed prefill adds to its own measured time so that timings stay comparable.
    """

    hidden: torch.Tensor  # [1, L, D] entering layer K
    attention_row: torch.Tensor  # [L] layer K-1, last prompt token
    keys: torch.Tensor | None  # [L, Dk] layer K-1 k_proj output
    cache: list[tuple[torch.Tensor, torch.Tensor]]  # keys, values of layers < K, [1, H_kv, L, d]
    seconds: float


@dataclass
class PruneState:
    """Per-call state of one :func:`prune` context (reset for every context; no globals).

    After the prefill: ``attention_row`` [L] (full last-token row at layer K−1), ``attention`` [N], ``hidden``
    [N, D], ``keys`` [N, Dk] or None, ``kept`` (sorted indices into the N candidates; None in observe mode),
    ``keep_positions`` (sorted sequence positions that layers ≥ K see), ``prefill_seconds``.
    """

    layer: int
    tokens: VisualTokens
    select_fn: SelectFn | None = None
    fixed: torch.Tensor | None = None
    attention_row: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    keep_positions: torch.Tensor | None = None
    prefill_length: int | None = None
    prefill_seconds: float | None = None
    inactive: bool = False  # True when the context started on a non-empty cache: nothing is pruned
    record: bool = False
    replay: Prefix | None = None
    prefix: Prefix | None = None  # filled during the prefill when ``record``
    _plan: tuple[torch.Tensor | None, torch.Tensor | None] | None = field(default=None, repr=False)
    _call_past: int = field(default=0, repr=False)  # cached tokens when the current decoder call started
    _call_cache: Any = field(default=None, repr=False)  # the current decoder call's Cache object, if any
    _keys_full: torch.Tensor | None = field(default=None, repr=False)
    _t0: float | None = field(default=None, repr=False)

    @property
    def observe_only(self) -> bool:
        return self.select_fn is None and self.fixed is None

    @property
    def num_kept(self) -> int | None:
        return None if self.kept is None else int(self.kept.numel())

    # -- called from the attention function at layer K-1 -------------------------------------------------
    def capture_row(self, module, query, key, mask, scaling: float) -> None:
        """Last-query-row attention probabilities, mean over heads: [L_k] (fp32)."""
        q = query[0, :, -1].float()  # [H, d]
        k = key[0].float()  # [H_kv, L_k, d]
        groups = q.shape[0] // k.shape[0]
        k = k.repeat_interleave(groups, dim=0)  # GQA: query head h uses KV head h // groups
        scores = torch.einsum("hd,hld->hl", q, k) * scaling
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
                raise ValueError(f"unsupported attention mask type {type(mask).__name__} for attention capture")
            row = mask[0, :, -1, : k.shape[1]]
            scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row.float()
        self.attention_row = torch.softmax(scores, dim=-1).mean(0)

    # -- called from the decoder's pre-hook, once per forward -------------------------------------------------
    def begin_call(self, cache) -> None:
        """Start one decoder forward: remember its cache and how many tokens it already holds.

        Prefill vs continuation is decided here, from the Cache object itself (found by type, not by argument
        name) and from this state — never from which keyword a decoder layer happens to receive."""
        past = int(cache.get_seq_length()) if cache is not None else 0
        if (
            past
            and self.replay is not None
            and self.prefill_length is not None
            and not self.inactive
            and past < self.prefill_length
        ):
            raise RuntimeError(
                f"the cache holds {past} tokens after a replayed prefill of {self.prefill_length}: the decoder layers "
                f"did not receive the cache under any known name ({', '.join(CACHE_ARGUMENT_NAMES)}) — transformers "
                f"{transformers_version()} is outside the range d2pruner supports"
            )
        self._call_past, self._call_cache = past, cache

    @property
    def in_prefill(self) -> bool:
        """True while the first forward from an empty cache runs (the one that is pruned)."""
        return self.prefill_length is None and not self.inactive and self._call_past == 0

    # -- called from the layer-K pre-hook ------------------------------------------------------------------
    def enter_layer_k(self, hidden: torch.Tensor, cache) -> torch.Tensor:
        """At layer K of the prefill: record the prefix, or put a replayed one back. Returns the hidden states
        that enter layer K."""
        if self.replay is not None:
            prefix = self.replay
            if prefix.hidden.shape[1] != self.tokens.seq_len:
                raise ValueError("the replayed prefix belongs to a prompt of another length")
            if cache is not None:
                for i, (keys, values) in enumerate(prefix.cache):
                    cache.layers[i].keys, cache.layers[i].values = keys.clone(), values.clone()
            self.attention_row, self._keys_full = prefix.attention_row, prefix.keys
            return prefix.hidden
        if self.record:
            if hidden.is_cuda:
                torch.cuda.synchronize(hidden.device)
            seconds = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
            kv = [] if cache is None else [(c.keys.clone(), c.values.clone()) for c in cache.layers[: self.layer]]
            self.prefix = Prefix(hidden.detach().clone(), self.attention_row, self._keys_full, kv, seconds)
        return hidden

    def begin_forward(self, hidden: torch.Tensor) -> None:
        """Decide what layers ≥ K do in this forward: prune the prefill once, map later forwards' columns."""
        past_len_at_k = self._call_past
        if hidden.shape[0] != 1:
            raise ValueError(f"pruning supports batch size 1 only, got a batch of {hidden.shape[0]}")
        self._plan = None
        if self.prefill_length is None:
            if past_len_at_k > 0 or self.inactive:
                self.inactive = True  # continuing from an existing cache: never (re-)prune
                return
            self._select(hidden)
            if self.keep_positions is None:
                return
            rows = self.keep_positions
            self._plan = (rows, rows)
            return
        if self.inactive or self.keep_positions is None:
            return
        if past_len_at_k == 0:  # a full forward again (no cache): same kept prefix, new tokens kept
            if hidden.shape[1] < self.prefill_length:
                raise RuntimeError(
                    f"a forward of {hidden.shape[1]} new token(s) after a prefill of {self.prefill_length} came "
                    f"with no cache that d2pruner could find (looked for {', '.join(CACHE_ARGUMENT_NAMES)} and "
                    f"any Cache argument): transformers {transformers_version()} passes the cache in a way "
                    "this d2pruner release does not know"
                )
            rows = self._extend(hidden.shape[1])
            self._plan = (rows, rows)
        else:  # decode / continuation: all new queries kept, key columns mapped
            self._plan = (None, None)

    def _extend(self, width: int) -> torch.Tensor:
        tail = torch.arange(self.prefill_length, width, device=self.keep_positions.device)
        return torch.cat([self.keep_positions, tail])

    def _select(self, hidden: torch.Tensor) -> None:
        tokens = self.tokens
        seq_len = hidden.shape[1]
        if seq_len != tokens.seq_len:
            raise ValueError(
                f"the prompt has {seq_len} tokens but the visual-token map was built for {tokens.seq_len}"
            )
        if self.attention_row is None:
            raise RuntimeError("the attention row of layer K-1 was not captured (is the prune context active?)")
        pos = tokens.positions.to(hidden.device)
        self.prefill_length = seq_len
        self.hidden = hidden[0].index_select(0, pos).float()
        self.attention = self.attention_row.index_select(0, pos.to(self.attention_row.device))
        if self._keys_full is not None:
            self.keys = self._keys_full.index_select(0, pos.to(self._keys_full.device)).float()
        if self.observe_only:
            return
        n_cand = tokens.num_candidates
        if self.fixed is not None:
            kept = self.fixed
        else:
            kept = self.select_fn(
                PruneInputs(hidden=self.hidden, attention=self.attention, keys=self.keys, grids=tokens.grid_shapes)
            )
        kept = torch.as_tensor(kept, dtype=torch.long).flatten().cpu()
        if kept.numel() and (kept.min() < 0 or kept.max() >= n_cand):
            raise ValueError(f"selected indices must lie in [0, {n_cand}), got {kept.min()}..{kept.max()}")
        kept = torch.unique(kept)  # sorted, unique
        self.kept = kept
        keep_mask = torch.ones(seq_len, dtype=torch.bool)
        keep_mask[tokens.positions.cpu()] = False
        keep_mask[tokens.positions.cpu()[kept]] = True
        self.keep_positions = keep_mask.nonzero().flatten().to(hidden.device)

    # -- slicing of the kwargs layers >= K receive -----------------------------------------------------------
    def slice_inputs(self, hidden: torch.Tensor | None, kwargs: dict) -> tuple[torch.Tensor | None, dict]:
        if self._plan is None:
            return hidden, kwargs
        rows, _ = self._plan
        kwargs = dict(kwargs)
        if rows is not None:
            if hidden is not None and hidden.shape[1] != rows.numel():
                hidden = hidden.index_select(1, rows)
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                kwargs["position_embeddings"] = tuple(
                    t.index_select(-2, rows) if t.shape[-2] != rows.numel() else t for t in pe
                )
            for name in ("position_ids", "cache_position"):
                t = kwargs.get(name)
                if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[-1] != rows.numel():
                    kwargs[name] = t.index_select(-1, rows)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
                raise ValueError(
                    f"unsupported attention mask {type(mask).__name__} for pruning (use sdpa or eager attention)"
                )
            if rows is not None and mask.shape[-2] != rows.numel():
                mask = mask.index_select(-2, rows)
            cols = self._extend(mask.shape[-1])
            mask = mask.index_select(-1, cols.to(mask.device))
            kwargs["attention_mask"] = mask
        return hidden, kwargs


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
    new_hidden = hidden[:, -1:] if hidden.shape[1] > 1 else hidden
    if args:
        return (new_hidden, *args[1:]), kwargs
    kwargs["hidden_states"] = new_hidden
    return args, kwargs


def _eager_for(module) -> Callable:
    """The ``eager_attention_forward`` of the module's own modeling file (eager is not in the global registry)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"{type(module).__name__} has no eager_attention_forward to wrap")
    return fn


@contextlib.contextmanager
def prune(
    model: torch.nn.Module,
    tokens: VisualTokens,
    *,
    layer: int,
    select: SelectFn | None = None,
    keep: torch.Tensor | None = None,
    record: bool = False,
    replay: Prefix | None = None,
) -> Iterator[PruneState]:
    """Prune visual tokens inside ``model`` at decoder layer ``layer`` for the forwards run inside the block.

    Arguments:
        model: a supported ``*ForConditionalGeneration`` instance (see ``d2pruner.adapters.FAMILIES``).
        tokens: the prompt's :class:`VisualTokens` (``adapter.visual_tokens(model, inputs)``).
        layer: K, 1 ≤ K < num_layers. Layers < K see every token, layers ≥ K the kept ones.
        select: ``fn(PruneInputs) -> indices`` called once at layer K of the prefill.
        keep: precomputed indices into the N candidates ("fixed indices" mode); exclusive with ``select``.
            With neither, nothing is pruned and the state only records attention / hidden / keys ("observe").
        record: keep what layers < K computed in ``state.prefix`` (a :class:`Prefix`).
        replay: a :class:`Prefix` of the *same prompt*: layers < K are not recomputed (see :class:`Prefix`).

    Yields:
        The :class:`PruneState`, filled during the first (prefill) forward inside the block.

    The first forward inside the block that starts from an empty cache is the prefill and is pruned once;
    decode steps and continuations are never re-pruned. A context entered on a non-empty cache does nothing.
    Batch size 1 only.
    """
    from d2pruner.adapters import adapter_for

    adapter = adapter_for(model)
    lm = adapter.language_model(model)
    layers = lm.layers
    num_layers = len(layers)
    if not isinstance(layer, int) or not 1 <= layer < num_layers:
        raise ValueError(f"layer must be an integer in [1, {num_layers}), got {layer!r}")
    if select is not None and keep is not None:
        raise ValueError("give either select or keep, not both")
    fixed = None if keep is None else torch.as_tensor(keep, dtype=torch.long).flatten()
    state = PruneState(layer=layer, tokens=tokens, select_fn=select, fixed=fixed, record=record, replay=replay)

    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    config = lm.config
    previous = config._attn_implementation
    inner_name = previous or "sdpa"
    if inner_name not in ("sdpa", "eager"):
        # flash / flex attention take 2-D masks or position-id packing, which pruned positions would break
        raise ValueError(f"pruning supports the sdpa and eager attention implementations, not {inner_name!r}")
    key = f"d2pruner_{next(_COUNTER)}"

    def attention(module, query, key_states, value, attention_mask, **kwargs):
        inner = _eager_for(module) if inner_name == "eager" else ALL_ATTENTION_FUNCTIONS[inner_name]
        if (
            getattr(module, "layer_idx", None) == layer - 1
            and state.replay is None
            and state.prefill_length is None
            and not state.inactive
            and query.shape[-2] == key_states.shape[-2]  # prefill from an empty cache
        ):
            if query.shape[0] != 1:
                raise ValueError(f"pruning supports batch size 1 only, got a batch of {query.shape[0]}")
            scaling = kwargs.get("scaling")
            state.capture_row(module, query, key_states, attention_mask, scaling if scaling else module.scaling)
        return inner(module, query, key_states, value, attention_mask, **kwargs)

    def keys_hook(module, args, output):
        if state.prefill_length is None and not state.inactive:
            state._keys_full = output[0].detach()

    def make_pre_hook(idx: int):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if idx == layer:
                if state.in_prefill:
                    hidden = state.enter_layer_k(hidden, state._call_cache or find_cache(args, kwargs))
                state.begin_forward(hidden)
            if state._plan is None:
                return None
            new_hidden, new_kwargs = state.slice_inputs(hidden if idx == layer else None, kwargs)
            if idx == layer:
                if args:
                    args = (new_hidden, *args[1:])
                else:
                    new_kwargs["hidden_states"] = new_hidden
            return args, new_kwargs

        return pre_hook

    def make_replay_hook(idx: int):
        """Layers < K of a replayed prefill see only the last token (a cheap stand-in, discarded at layer K)."""

        def replay_hook(module, args, kwargs):
            if not state.in_prefill:
                return None  # decode steps / continuations: layers < K run normally on their (restored) cache
            hidden = args[0] if args else kwargs["hidden_states"]
            return _last_token_only(hidden, args, kwargs)

        return replay_hook

    def top_pre_hook(module, args, kwargs):
        for name in ("input_ids", "inputs_embeds"):
            t = kwargs.get(name)
            if t is None and name == "input_ids" and args:
                t = args[0]
            if isinstance(t, torch.Tensor) and t.shape[0] != 1:
                raise ValueError(f"pruning supports batch size 1 only, got a batch of {t.shape[0]}")
        if state.prefill_length is None and state.prefill_seconds is None:
            _sync(model)
            state._t0 = time.perf_counter()
        return None

    def decoder_pre_hook(module, args, kwargs):
        state.begin_call(find_cache(args, kwargs))
        return None

    def top_hook(module, args, kwargs, output):
        if state.prefill_seconds is None and state._t0 is not None:
            _sync(model)
            state.prefill_seconds = time.perf_counter() - state._t0 + (replay.seconds if replay is not None else 0.0)

    handles = []
    registered = False
    try:
        AttentionInterface.register(key, attention)
        AttentionMaskInterface.register(key, ALL_MASK_ATTENTION_FUNCTIONS[inner_name])
        registered = True
        config._attn_implementation = key
        handles.append(model.register_forward_pre_hook(top_pre_hook, with_kwargs=True))
        handles.append(model.register_forward_hook(top_hook, with_kwargs=True))
        handles.append(lm.register_forward_pre_hook(decoder_pre_hook, with_kwargs=True))
        k_proj = getattr(getattr(layers[layer - 1], "self_attn", None), "k_proj", None)
        if k_proj is not None:
            handles.append(k_proj.register_forward_hook(keys_hook))
        if replay is not None:
            for idx in range(layer):
                handles.append(layers[idx].register_forward_pre_hook(make_replay_hook(idx), with_kwargs=True))
        for idx in range(layer, num_layers):
            handles.append(layers[idx].register_forward_pre_hook(make_pre_hook(idx), with_kwargs=True))
        yield state
    finally:
        for h in handles:
            h.remove()
        config._attn_implementation = previous
        if registered:
            AttentionInterface._global_mapping.pop(key, None)
            AttentionMaskInterface._global_mapping.pop(key, None)
        state._keys_full = None
        state._plan = None
        state._call_cache = None


class _EarlyExit(Exception):
    """Raised by :func:`capture` once layer K's inputs are recorded; never escapes it."""


def capture(model: torch.nn.Module, tokens: VisualTokens, inputs: dict, *, layer: int) -> PruneState:
    """Run only what the selection needs — the vision tower and layers < K — and stop (early exit).

    The state holds ``attention_row`` / ``attention`` (layer K−1), ``hidden`` (entering layer K) and ``keys``
    exactly as in a full prefill under :func:`prune`; layers ≥ K, the final norm and the LM head never run.
    Used for prior calibration and for looking at attention without generating.

    Arguments:
        model, tokens: as for :func:`prune`.
        inputs: the model's forward inputs for the prompt (batch size 1).
        layer: K.
    """
    from d2pruner.adapters import adapter_for

    def stop(module, args, kwargs):
        raise _EarlyExit

    layers = adapter_for(model).language_model(model).layers
    with prune(model, tokens, layer=layer) as state:
        handle = layers[layer].register_forward_pre_hook(stop, with_kwargs=True)  # runs after prune's own hook
        try:
            with torch.inference_mode():
                model(**inputs, use_cache=False)
        except _EarlyExit:
            pass
        finally:
            handle.remove()
    if state.hidden is None:
        raise RuntimeError("early exit: layer K was never reached (is the prompt's image in the inputs?)")
    return state


def _sync(model: torch.nn.Module) -> None:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FamilyAdapter:
    """What differs between model families; one subclass per file (llava.py, llava_next.py, …).

    Subclasses set ``name`` (the family), ``model_types`` (config ``model_type`` values), ``model_class``
    (the transformers class name) and implement :meth:`visual_tokens` and :meth:`build_inputs`.
    """

    name: str = ""
    model_types: tuple[str, ...] = ()
    model_class: str = ""
    #: images with more pixels than this are downscaled (aspect kept) before preprocessing
    max_image_pixels: int = 2048 * 2048

    def language_model(self, model) -> torch.nn.Module:
        """The decoder (``.layers``, ``.config``)."""
        return model.model.language_model

    def image_token_id(self, model) -> int:
        return int(model.config.image_token_id)

    def image_positions(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        """Sequence positions of every image placeholder token (batch size 1)."""
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"batch size 1 only, got input_ids of shape {tuple(input_ids.shape)}")
        pos = (input_ids[0] == self.image_token_id(model)).nonzero().flatten()
        if pos.numel() == 0:
            raise ValueError("the prompt contains no image tokens")
        return pos

    def visual_tokens(self, model, inputs) -> VisualTokens:  # pragma: no cover - abstract
        raise NotImplementedError

    def chat_text(self, processor, prompt: str) -> str:
        """The prompt with the family's chat template and one image placeholder."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        """Model inputs (batch size 1, ``return_tensors="pt"``) for one RGB PIL image and one prompt."""
        return dict(processor(images=image, text=self.chat_text(processor, prompt), return_tensors="pt"))

    def tokenizer(self, processor):
        return processor.tokenizer

    def layout_overrides(self, model) -> dict:
        """Geometry that ``d2pruner.layout.layout_from_processor`` cannot read from the processor."""
        return {}

    def encode_image(self, model, inputs) -> dict:
        """Run the vision tower + projector once: ``{"image": output}`` for ``mm_encoder_outputs=``.

        Passing it (instead of ``pixel_values``) to ``forward`` / ``generate`` reuses the visual features."""
        fn = model.model.get_image_features
        params = inspect.signature(fn).parameters
        names = ("pixel_values", "image_sizes", "image_grid_thw")
        kwargs = {k: inputs[k] for k in names if k in inputs and k in params}
        return {"image": fn(**kwargs, return_dict=True)}
