"""What one :func:`~d2pruner.pruning.prune` context knows: per-row captures and kept sets, and what layers ≥ K do
in the current forward (the plan). Pure tensor logic; the hooks that feed it live in ``hooks.py``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from d2pruner.pruning import slicing
from d2pruner.tokens import VisualTokens

#: every name under which a supported transformers release passes the KV cache to the decoder and its layers
#: (5.23: ``past_key_values``; 5.24 renamed it ``cache`` and keeps the old name as a deprecated alias)
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values", "past_key_value")


def transformers_version() -> str:
    import transformers

    return transformers.__version__


@dataclass
class PruneInputs:
    """What a selection function receives at layer K for one batch row (N = the row's candidate visual tokens).

    Attributes:
        hidden: [N, D] visual hidden states entering layer K (output of layer K−1), fp32.
        attention: [N] last-prompt-token attention to the visual tokens at layer K−1, mean over heads, fp32.
        keys: [N, H_kv·d] pre-RoPE layer-(K−1) keys of the visual tokens, fp32, or None.
        grids: [(rows, cols), …] whose sizes sum to N.
        row: the batch row.
        seq_keys / seq_normed / visual_index / text_mask: the whole prompt, for ``dart-official`` (captured with
            ``prune(..., capture_sequence=True)``, else None): [L, H_kv·d] post-RoPE layer-(K−1) keys, [L, D] the
            hidden states entering layer K after the decoder's final norm, [N] the candidates' sequence positions,
            [L] True at text tokens.
    """

    hidden: torch.Tensor
    attention: torch.Tensor
    keys: torch.Tensor | None
    grids: list[tuple[int, int]]
    row: int = 0
    seq_keys: torch.Tensor | None = None
    seq_normed: torch.Tensor | None = None
    visual_index: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None

    def sequence_inputs(self) -> dict:
        """The whole-prompt inputs as ``d2pruner.select`` keywords (empty when they were not captured)."""
        if self.seq_keys is None:
            return {}
        return {"seq_keys": self.seq_keys, "seq_normed": self.seq_normed, "visual_index": self.visual_index,
                "text_mask": self.text_mask}

    @property
    def grid(self) -> tuple[int, int] | list[tuple[int, int]]:
        """A single (rows, cols) when there is one grid, else the list — the form ``d2pruner.select`` takes."""
        return self.grids[0] if len(self.grids) == 1 else list(self.grids)


SelectFn = Callable[[PruneInputs], torch.Tensor]


@dataclass
class Prefix:
    """What the layers below K computed for one prompt — enough to run layers ≥ K again without them.

    Recorded by ``prune(..., record=True)`` during an unpruned prefill of one prompt and replayed by
    ``prune(..., replay=prefix)`` — also into a batch whose rows all hold that prompt: then layers < K run on one
    dummy token only, and at layer K the recorded hidden states, attention row, keys and KV cache of layers < K are
    put back (broadcast to the rows). The results are identical to recomputing them (tested); ``seconds`` is the
    time the recorded prefill spent before layer K, which a replayed prefill adds to its own measured time.
    """

    hidden: torch.Tensor  # [1, L, D] entering layer K
    attention_row: torch.Tensor  # [L] layer K-1, last prompt token
    keys: torch.Tensor | None  # [L, Dk] layer K-1 k_proj output
    cache: list[tuple[torch.Tensor, torch.Tensor]]  # keys, values of layers < K, [1, H_kv, L, d]
    seconds: float


@dataclass
class RowState:
    """One batch row after the prefill: ``attention_row`` [L] (the last-token row at layer K−1), ``attention`` [N],
    ``hidden`` [N, D], ``keys`` [N, Dk] or None, ``kept`` (sorted indices into the N candidates; None when only
    observing) and ``keep_positions`` (sorted sequence positions layers ≥ K see)."""

    tokens: VisualTokens
    attention_row: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    keep_positions: torch.Tensor | None = None
    seq_keys: torch.Tensor | None = None  # [L, Dk] post-RoPE layer-(K-1) keys (capture_sequence)
    seq_normed: torch.Tensor | None = None  # [L, D] entering layer K, after the final norm (capture_sequence)

    def text_mask(self) -> torch.Tensor:
        """[L] True at every token that is not visual (candidates and protected ones)."""
        mask = torch.ones(self.tokens.seq_len, dtype=torch.bool)
        mask[self.tokens.positions.cpu()] = False
        mask[self.tokens.protected.cpu()] = False
        return mask

    def selection_inputs(self, row: int) -> PruneInputs:
        """What the selection receives for this row."""
        captured = self.seq_keys is not None
        return PruneInputs(
            hidden=self.hidden, attention=self.attention, keys=self.keys, grids=self.tokens.grid_shapes, row=row,
            seq_keys=self.seq_keys, seq_normed=self.seq_normed,
            visual_index=self.tokens.positions.to(self.hidden.device) if captured else None,
            text_mask=self.text_mask().to(self.hidden.device) if captured else None,
        )

    @property
    def num_kept(self) -> int | None:
        return None if self.kept is None else int(self.kept.numel())


@dataclass
class PruneState:
    """Per-call state of one :func:`~d2pruner.pruning.prune` context (reset for every context; no globals).

    ``rows`` holds one :class:`RowState` per batch row; for a single row the row's fields are also attributes of
    the state (``state.kept``, ``state.hidden``, …). ``prefill_seconds`` is the whole batch's prefill;
    ``inactive`` is True when the context started on a non-empty cache (nothing is pruned).
    """

    layer: int
    rows: list[RowState]
    select_fn: SelectFn | None = None
    fixed: list[torch.Tensor] | None = None
    record: bool = False
    replay: Prefix | None = None
    additive_masks: bool = False  # eager attention takes float masks; sdpa boolean ones
    capture_sequence: bool = False  # also keep the whole prompt's post-RoPE keys and normed hidden (dart-official)
    capture_layers: bool = False  # keep the last prompt token's attention row of every layer, per head
    layer_rows: dict = field(default_factory=dict)  # layer index -> [B, H, L] (capture_layers)
    prefix: Prefix | None = None  # filled during the prefill when ``record``
    prefill_length: int | None = None
    prefill_seconds: float | None = None
    inactive: bool = False
    _mode: str | None = field(default=None, repr=False)  # what layers >= K do in this forward
    _slots: torch.Tensor | None = field(default=None, repr=False)  # [B, S] kept sequence positions (fillers first)
    _fillers: torch.Tensor | None = field(default=None, repr=False)  # [B, S] True for filler slots
    _call_past: int = field(default=0, repr=False)  # cached tokens when the current decoder call started
    _call_cache: Any = field(default=None, repr=False)  # the current decoder call's Cache object, if any
    _prefill_forward: bool = field(default=False, repr=False)  # the current decoder call is the prefill
    _keys_full: torch.Tensor | None = field(default=None, repr=False)  # [B, L, Dk] layer K-1 k_proj output
    _memo: dict = field(default_factory=dict, repr=False)  # per forward: sliced tensors by id of the input
    _t0: float | None = field(default=None, repr=False)

    # ---- single-row conveniences ----------------------------------------------------------------------------
    def _only(self) -> RowState:
        if len(self.rows) != 1:
            raise AttributeError(f"this state has {len(self.rows)} batch rows: read state.rows[r] instead")
        return self.rows[0]

    tokens = property(lambda self: self._only().tokens)
    attention_row = property(lambda self: self._only().attention_row)
    attention = property(lambda self: self._only().attention)
    hidden = property(lambda self: self._only().hidden)
    keys = property(lambda self: self._only().keys)
    kept = property(lambda self: self._only().kept)
    keep_positions = property(lambda self: self._only().keep_positions)
    num_kept = property(lambda self: self._only().num_kept)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def observe_only(self) -> bool:
        return self.select_fn is None and self.fixed is None

    # ---- once per decoder forward ---------------------------------------------------------------------------
    def begin_call(self, cache) -> None:
        """Start one decoder forward: remember its cache and how many tokens it already holds.

        Prefill vs continuation is decided here, from the Cache object itself (found by type, not by argument
        name) and from this state — never from which keyword a decoder layer happens to receive."""
        past = int(cache.get_seq_length()) if cache is not None else 0
        replayed = self.replay is not None and self.prefill_length is not None and not self.inactive
        if past and replayed and past < self.prefill_length:
            raise RuntimeError(
                f"the cache holds {past} tokens after a replayed prefill of {self.prefill_length}: the decoder "
                f"layers did not receive the cache under any known name ({', '.join(CACHE_ARGUMENT_NAMES)}) — "
                f"transformers {transformers_version()} is outside the range d2pruner supports"
            )
        self._call_past, self._call_cache = past, cache
        self._prefill_forward = self.prefill_length is None and not self.inactive and past == 0

    @property
    def in_prefill(self) -> bool:
        """True while the first forward from an empty cache runs (the one that is pruned)."""
        return self.prefill_length is None and not self.inactive and self._call_past == 0

    def start_timer(self, sync: Callable[[], None]) -> None:
        if self.prefill_length is None and self.prefill_seconds is None:
            sync()
            self._t0 = time.perf_counter()

    def stop_timer(self, sync: Callable[[], None]) -> None:
        if self.prefill_seconds is None and self._t0 is not None:
            sync()
            self.prefill_seconds = time.perf_counter() - self._t0 + (self.replay.seconds if self.replay else 0.0)

    # ---- layer K-1: the attention row -----------------------------------------------------------------------
    def capture_rows(self, query, key, mask, scaling: float) -> None:
        """Layer K−1: every batch row's last-query-row attention probabilities, mean over heads: [L_k] (fp32)."""
        probs = attention_probabilities(query, key, mask, scaling).mean(1)
        for b, state in enumerate(self.rows):
            state.attention_row = probs[b]
        if self.capture_sequence:
            keys = key.detach().float()  # [B, H_kv, L, d] after RoPE
            for b, state in enumerate(self.rows):
                state.seq_keys = keys[b].transpose(0, 1).reshape(keys.shape[2], -1)

    def capture_layer(self, layer: int, query, key, mask, scaling: float) -> None:
        """Any layer of the unpruned prefill: the last query row per head, [B, H, L_k] (``capture_layers``)."""
        self.layer_rows[layer] = attention_probabilities(query, key, mask, scaling)

    def capture_normed(self, normed: torch.Tensor) -> None:
        """Layer K: the hidden states entering it after the decoder's final norm, per row [L, D]."""
        for b, state in enumerate(self.rows):
            state.seq_normed = normed[b].detach().float()

    # ---- layer K: enter, select, plan -----------------------------------------------------------------------
    def enter_layer_k(self, hidden: torch.Tensor, cache) -> torch.Tensor:
        """At layer K of the prefill: record the prefix, or put a replayed one back. Returns the hidden states
        that enter layer K."""
        if self.replay is not None:
            return self._restore(self.replay, hidden.shape[0], cache)
        if self.record:
            if hidden.shape[0] != 1:
                raise ValueError(f"record=True needs a single prompt, got a batch of {hidden.shape[0]}")
            if hidden.is_cuda:
                torch.cuda.synchronize(hidden.device)
            seconds = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
            kv = [] if cache is None else [(c.keys.clone(), c.values.clone()) for c in cache.layers[: self.layer]]
            keys = None if self._keys_full is None else self._keys_full[0]
            self.prefix = Prefix(hidden.detach().clone(), self.rows[0].attention_row, keys, kv, seconds)
        return hidden

    def _restore(self, prefix: Prefix, batch: int, cache) -> torch.Tensor:
        if prefix.hidden.shape[1] != self.rows[0].tokens.seq_len or any(
            r.tokens.seq_len != prefix.hidden.shape[1] for r in self.rows
        ):
            raise ValueError("the replayed prefix belongs to a prompt of another length")
        if cache is not None:
            for i, (keys, values) in enumerate(prefix.cache):
                layer = cache.layers[i]
                layer.keys = keys.expand(batch, *keys.shape[1:]).clone()
                layer.values = values.expand(batch, *values.shape[1:]).clone()
        for state in self.rows:
            state.attention_row = prefix.attention_row
        if prefix.keys is not None:
            self._keys_full = prefix.keys.unsqueeze(0).expand(batch, *prefix.keys.shape)
        return prefix.hidden.expand(batch, *prefix.hidden.shape[1:])

    def begin_forward(self, hidden: torch.Tensor) -> None:
        """Decide what layers ≥ K do in this forward: prune the prefill once, map later forwards' columns."""
        if hidden.shape[0] != len(self.rows):
            raise ValueError(f"the batch has {hidden.shape[0]} rows but prune() was given {len(self.rows)} "
                             "VisualTokens (one per row)")
        self._mode, self._memo = None, {}
        if self.prefill_length is None:
            if self._call_past > 0 or self.inactive:
                self.inactive = True  # continuing from an existing cache: never (re-)prune
                return
            self._select(hidden)
            if not self.observe_only:
                self._plan_slots()
                self._mode = "prefill"
            return
        if self.inactive or self.observe_only:
            return
        if self._call_past == 0:  # a full forward again (no cache): same kept prefix, new tokens kept
            if hidden.shape[1] < self.prefill_length:
                raise RuntimeError(
                    f"a forward of {hidden.shape[1]} new token(s) after a prefill of {self.prefill_length} came "
                    f"with no cache that d2pruner could find (looked for {', '.join(CACHE_ARGUMENT_NAMES)} and "
                    f"any Cache argument): transformers {transformers_version()} passes the cache in a way "
                    "this d2pruner release does not know"
                )
            self._mode = "full"
        else:  # decode / continuation: all new queries kept, key columns mapped
            self._mode = "decode"

    def _select(self, hidden: torch.Tensor) -> None:
        seq_len = hidden.shape[1]
        for r, state in enumerate(self.rows):
            tokens = state.tokens
            if seq_len != tokens.seq_len:
                raise ValueError(
                    f"the prompt has {seq_len} tokens but the visual-token map of row {r} was built for "
                    f"{tokens.seq_len}"
                )
            if state.attention_row is None:
                raise RuntimeError("the attention row of layer K-1 was not captured (is the prune context active?)")
            pos = tokens.positions.to(hidden.device)
            state.hidden = hidden[r].index_select(0, pos).float()
            state.attention = state.attention_row.index_select(0, pos.to(state.attention_row.device))
            if self._keys_full is not None:
                state.keys = self._keys_full[r].index_select(0, pos.to(self._keys_full.device)).float()
            if self.observe_only:
                continue
            kept = self.fixed[r] if self.fixed is not None else self.select_fn(state.selection_inputs(r))
            state.kept = _checked_kept(kept, tokens.num_candidates, r)
            keep = torch.ones(seq_len, dtype=torch.bool)
            keep[tokens.positions.cpu()] = False
            keep[tokens.positions.cpu()[state.kept]] = True
            state.keep_positions = keep.nonzero().flatten().to(hidden.device)
        self.prefill_length = seq_len

    def _plan_slots(self) -> None:
        """One slot per kept position, rows padded in front with fillers to the longest row."""
        width = max(int(s.keep_positions.numel()) for s in self.rows)
        slots, fillers = [], []
        for state in self.rows:
            kept = state.keep_positions
            pad = width - kept.numel()
            slots.append(torch.cat([kept[:1].expand(pad), kept]))
            fillers.append(torch.arange(width, device=kept.device) < pad)
        self._slots, self._fillers = torch.stack(slots), torch.stack(fillers)

    # ---- layers >= K: what they receive ---------------------------------------------------------------------
    def _query_slots(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and fillers of this forward's queries: the kept prefix plus every token after the prompt."""
        if self._mode == "prefill":
            return self._slots, self._fillers
        tail = torch.arange(self.prefill_length, width, device=self._slots.device)
        rows = self._slots.shape[0]
        slots = torch.cat([self._slots, tail.expand(rows, -1)], dim=1)
        fillers = torch.cat([self._fillers, torch.zeros(rows, tail.numel(), dtype=torch.bool,
                                                        device=self._fillers.device)], dim=1)
        return slots, fillers

    def slice_inputs(self, hidden: torch.Tensor | None, kwargs: dict) -> tuple[torch.Tensor | None, dict]:
        """The hidden states (layer K only) and keyword arguments a layer ≥ K receives in this forward."""
        if self._mode is None:
            return hidden, kwargs
        kwargs = dict(kwargs)
        if self._mode in ("prefill", "full"):
            width = self.prefill_length if self._mode == "prefill" else _sequence_width(hidden, kwargs)
            slots, fillers = self._query_slots(width)
            if hidden is not None:
                hidden = slicing.take(hidden, slots, -2)
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                kwargs["position_embeddings"] = tuple(self._memoised(t, lambda t: slicing.take(t, slots, -2))
                                                      for t in pe)
            for name in ("position_ids", "cache_position"):
                t = kwargs.get(name)
                if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[-1] == width:
                    kwargs[name] = self._memoised(t, lambda t: _take_ids(t, slots))
            kwargs["attention_mask"] = self._memoised_mask(kwargs.get("attention_mask"), slots, slots, fillers,
                                                           fillers)
        else:
            mask = kwargs.get("attention_mask")
            queries = _query_count(hidden, kwargs)
            width = mask.shape[-1] if isinstance(mask, torch.Tensor) else self._call_past + queries
            slots, fillers = self._query_slots(width)
            kwargs["attention_mask"] = self._memoised_mask(mask, None, slots, fillers, None, queries=queries)
        return hidden, kwargs

    def sliced_injection(self, hidden: torch.Tensor, mask: torch.Tensor, features: torch.Tensor):
        """A per-visual-token feature injection (Qwen3-VL's DeepStack: ``hidden[mask] += features``) made to fit
        this forward's sequence: unchanged at full length; for a pruned sequence each kept visual token gets its own
        features and filler slots none; None for the replayed prefill's one-token stand-in (it is discarded at
        layer K, where the recorded hidden states — with their injections — are put back).

        Arguments: ``hidden`` [B, S, D] after the layer; ``mask`` [B, L] True at visual positions of the full
        sequence; ``features`` [M, D], one row per True in ``mask`` (row-major). Returns (mask [B, S], features).
        """
        if hidden.shape[1] == mask.shape[1]:
            return mask, features
        if self._mode is None or self._mode == "decode":
            if self.replay is not None and self.in_prefill:
                return None
            raise RuntimeError(f"a feature injection on {hidden.shape[1]} positions of a {mask.shape[1]}-token "
                               "sequence that is not being pruned")
        slots, fillers = self._query_slots(mask.shape[1])
        full = mask.to(slots.device)
        counts = full.sum(1)
        offsets = counts.cumsum(0) - counts
        rank = full.long().cumsum(1) - 1
        kept = full.gather(1, slots) & ~fillers
        index = (offsets[:, None] + rank.gather(1, slots))[kept]
        return kept, features[index.to(features.device)]

    def _memoised(self, tensor: torch.Tensor, fn):
        key = id(tensor)
        if key not in self._memo:
            self._memo[key] = (tensor, fn(tensor))
        return self._memo[key][1]

    def _memoised_mask(self, mask, query_slots, key_slots, key_fillers, query_fillers, *, queries=None):
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim != 4):
            raise ValueError(
                f"unsupported attention mask {type(mask).__name__} for pruning (use sdpa or eager attention)"
            )
        if mask is None and not bool(key_fillers.any()):
            return None  # no padding and no fillers: the layers' own causal attention is right
        key = ("mask", id(mask))
        if key not in self._memo:
            if mask is None:
                rows, width = key_slots.shape
                q = width if query_slots is not None else queries
                built = slicing.causal_mask(rows, q, width, additive=self.additive_masks, dtype=torch.float32,
                                            device=key_slots.device)
            else:
                built = slicing.gather_mask(mask, query_slots, key_slots)
            self._memo[key] = (mask, slicing.mask_fillers(built, key_fillers, query_fillers))
        return self._memo[key][1]


def attention_probabilities(query, key, mask, scaling: float) -> torch.Tensor:
    """The last query row's attention probabilities per head: [B, H, L_k] (fp32, softmax over the whole sequence
    with the mask as the model applies it; KV heads repeated for GQA)."""
    q = query[:, :, -1].float()  # [B, H, d]
    k = key.float()  # [B, H_kv, L_k, d]
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # GQA: query head h uses KV head h // groups
    scores = torch.einsum("bhd,bhld->bhl", q, k) * scaling
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
            raise ValueError(f"unsupported attention mask type {type(mask).__name__} for attention capture")
        row = mask[:, :, -1, : k.shape[2]]  # [B|1, 1, L_k]
        scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row.float()
    return torch.softmax(scores, dim=-1)


def _checked_kept(kept, num_candidates: int, row: int) -> torch.Tensor:
    kept = torch.as_tensor(kept, dtype=torch.long).flatten().cpu()
    if kept.numel() and (kept.min() < 0 or kept.max() >= num_candidates):
        raise ValueError(f"selected indices of row {row} must lie in [0, {num_candidates}), got "
                         f"{int(kept.min())}..{int(kept.max())}")
    return torch.unique(kept)  # sorted, unique


def _take_ids(ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    if ids.ndim == 1:  # a position vector shared by the batch (older releases' cache_position)
        return ids.index_select(0, slots[0].to(ids.device))
    return slicing.take(ids, slots, -1)


def _sequence_width(hidden: torch.Tensor | None, kwargs: dict) -> int:
    if hidden is not None:
        return int(hidden.shape[1])
    pe = kwargs.get("position_embeddings")
    if pe is not None:
        return int(pe[0].shape[-2])
    raise RuntimeError("cannot tell the sequence length of a full forward (no hidden states, no position embeddings)")


def _query_count(hidden: torch.Tensor | None, kwargs: dict) -> int:
    """Queries of a decode step (its new tokens): layers ≥ K see them unsliced."""
    return _sequence_width(hidden, kwargs)
