"""Running prepared prompts through the model: batches, the shared unpruned run, batched pruned generation.

One analysis runs the vision tower once, one unpruned generation that records what layers < K computed, then
**all methods in one batched generation** — one row per method, each row with its own kept positions, the layers
below K shared once (the recorded prefix broadcast to the rows), decoding in lockstep with each row stopping at its
own end token. Rows are split into chunks only when the estimated memory of the batch does not fit (and the result
says so). Evaluation batches (different prompts, left-padded) go through the same :func:`generate_rows`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from d2pruner.analysis.prepared import Prepared
from d2pruner.pruning import Prefix, PruneState, prune
from d2pruner.pruning.cache import cache_argument, growing_cache
from d2pruner.tokens import VisualTokens

#: inputs that hold one row per image (concatenated, not padded, when prompts are batched)
IMAGE_LEVEL_INPUTS = ("image_sizes", "image_grid_thw")
#: inputs laid along the sequence (left-padded when prompts of different lengths are batched)
SEQUENCE_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")


@dataclass
class Batch:
    """Rows ready for one ``generate``: batched inputs (image features pre-encoded) and each row's visual tokens."""

    inputs: dict
    tokens: list[VisualTokens]

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def make_batch(family, model, prepared: Sequence[Prepared], encoded: Sequence[dict], pad_token_id: int) -> Batch:
    """One batch of ``prepared`` prompts (left-padded to one length) with their pre-encoded image features."""
    length = max(int(p.inputs["input_ids"].shape[1]) for p in prepared)
    inputs: dict = {}
    for name in SEQUENCE_INPUTS:
        if name in prepared[0].inputs:
            fill = pad_token_id if name == "input_ids" else 0
            inputs[name] = torch.cat([_pad_left(p.inputs[name], length, fill) for p in prepared])
    for name in IMAGE_LEVEL_INPUTS:
        if name in prepared[0].inputs:
            inputs[name] = torch.cat([p.inputs[name] for p in prepared])
    inputs["mm_encoder_outputs"] = family.merge_encoded(list(encoded))
    tokens = [family.visual_tokens(model, inputs, p.layout, row=r) for r, p in enumerate(prepared)]
    return Batch(inputs, tokens)


def _pad_left(tensor: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.full((tensor.shape[0], missing), fill, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], dim=1)


def generate_rows(
    model,
    batch: Batch,
    *,
    layer: int,
    generation: dict,
    keep: Sequence[torch.Tensor] | None = None,
    select=None,
    replay: Prefix | None = None,
    record: bool = False,
    capture_layers: bool = False,
    capture_sequence: bool = False,
) -> tuple[torch.Tensor, PruneState, float]:
    """Generate for every row of ``batch`` under :func:`~d2pruner.pruning.prune`: kept sets ``keep`` (one per row)
    or ``select``, or nothing pruned (observe). The KV cache appends in place
    (:func:`~d2pruner.pruning.cache.growing_cache`). Returns the generated ids, the state and the wall time."""
    sync(model)
    start = time.perf_counter()
    cache = cache_argument(model, growing_cache(model))
    with torch.inference_mode(), prune(model, batch.tokens, layer=layer, keep=keep, select=select, replay=replay,
                                       record=record, capture_layers=capture_layers,
                                       capture_sequence=capture_sequence) as state:
        ids = model.generate(**batch.inputs, **cache, **generation)
    sync(model)
    return ids, state, time.perf_counter() - start


def standalone_prefill(model, one: Batch, *, layer: int, keep: torch.Tensor, replay: Prefix) -> float:
    """Seconds of one pruned prefill forward of a one-row batch (layers < K replayed, then their recorded time
    added, as for every prefill time of an analysis)."""
    with torch.inference_mode(), prune(model, one.tokens, layer=layer, keep=[keep], replay=replay) as state:
        model(**one.inputs, use_cache=True)
    return float(state.prefill_seconds)


def rows_per_chunk(model, *, rows: int, length: int, kept_length: int, max_new_tokens: int, layer: int,
                   free_bytes: float | None) -> int:
    """How many rows one batched generation may hold: the KV cache of a row (layers < K at the full length,
    layers ≥ K at the kept one, both grown by the answer) plus one layer's activations, against half the free
    memory. All rows when the free memory is unknown."""
    if free_bytes is None:
        return rows
    text = model.config.get_text_config()
    heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    layers = int(text.num_hidden_layers)
    width = 2 * heads * head_dim * model.dtype.itemsize
    cache = width * (layer * (length + max_new_tokens) + (layers - layer) * (kept_length + max_new_tokens))
    activations = length * (4 * text.hidden_size + 3 * text.intermediate_size) * 4
    logits = int(getattr(text, "vocab_size", 0)) * 4 * 2
    per_row = cache + activations + logits
    return max(1, min(rows, int(0.5 * free_bytes // per_row)))


def sync(model) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
