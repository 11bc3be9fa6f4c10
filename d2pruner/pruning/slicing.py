"""Per-row slicing of what decoder layers ≥ K receive: hidden states, position embeddings and ids, 4-D masks.

Every batch row keeps its own sequence positions (``slots`` [B, S], sorted per row). Rows that keep fewer tokens
than the longest row get *filler* slots in front (like left padding): a copy of the row's first kept position whose
key column is masked for every query, and whose own query attends only to itself, so its values stay finite and
no real token ever sees it. The sequence axis is −2 for hidden states and position embeddings (cos/sin, also
Qwen's M-RoPE ones after their sections are recomposed) and −1 for position ids; the batch axis is the one before
it, with size B or 1 (a tensor shared by all rows is broadcast).
"""

from __future__ import annotations

import torch


def take(tensor: torch.Tensor, slots: torch.Tensor, seq_dim: int, batch_dim: int | None = None) -> torch.Tensor:
    """``tensor`` with its sequence axis ``seq_dim`` gathered per batch row at ``slots`` [B, S].

    ``batch_dim`` defaults to the axis just before the sequence axis; a size-1 batch axis is broadcast to B rows."""
    seq_dim %= tensor.ndim
    batch_dim = seq_dim - 1 if batch_dim is None else batch_dim % tensor.ndim
    rows, width = slots.shape
    shape = list(tensor.shape)
    if shape[batch_dim] not in (1, rows):
        raise ValueError(f"a tensor of shape {tuple(tensor.shape)} does not have {rows} batch rows")
    shape[batch_dim] = rows
    tensor = tensor.expand(*shape)
    index_shape = [1] * tensor.ndim
    index_shape[batch_dim], index_shape[seq_dim] = rows, width
    shape[seq_dim] = width
    index = slots.to(tensor.device).view(index_shape).expand(*shape)
    return tensor.gather(seq_dim, index)


def is_additive(mask: torch.Tensor) -> bool:
    """True for a float mask added to the scores (eager), False for a boolean one (sdpa: True = attend)."""
    return mask.dtype != torch.bool


def blocked_value(mask: torch.Tensor):
    return torch.finfo(mask.dtype).min if is_additive(mask) else False


def open_value(mask: torch.Tensor):
    return 0.0 if is_additive(mask) else True


def mask_fillers(mask: torch.Tensor, filler_cols: torch.Tensor, filler_rows: torch.Tensor | None) -> torch.Tensor:
    """Block the filler key columns of a [B, 1, Q, K] mask for every query; let filler queries see only
    themselves (their diagonal: query i ↔ key i, for the first Q keys when Q ≤ K)."""
    if not bool(filler_cols.any()):
        return mask
    mask = mask.clone()
    cols = filler_cols[:, None, None, :].to(mask.device)
    mask = mask.masked_fill(cols, blocked_value(mask))
    if filler_rows is not None and bool(filler_rows.any()):
        q = mask.shape[-2]
        diagonal = torch.eye(q, mask.shape[-1], dtype=torch.bool, device=mask.device)
        rows = filler_rows[:, None, :, None].to(mask.device) & diagonal[None, None]
        mask = mask.masked_fill(rows, open_value(mask))
    return mask


def causal_mask(rows: int, queries: int, keys: int, *, additive: bool, dtype: torch.dtype, device) -> torch.Tensor:
    """A [B, 1, Q, K] causal mask whose last query is the last key (what a model builds without padding)."""
    q = torch.arange(queries, device=device)[:, None] + (keys - queries)
    allowed = torch.arange(keys, device=device)[None, :] <= q
    allowed = allowed[None, None].expand(rows, 1, queries, keys)
    if not additive:
        return allowed.clone()
    mask = torch.zeros(rows, 1, queries, keys, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def gather_mask(mask: torch.Tensor, query_slots: torch.Tensor | None, key_slots: torch.Tensor) -> torch.Tensor:
    """A [B|1, 1, Q, K] mask with its rows gathered at ``query_slots`` [B, S] (None: all queries kept) and its
    columns at ``key_slots`` [B, S'] (the batch axis is 0)."""
    if query_slots is not None:
        mask = take(mask, query_slots, -2, batch_dim=0)
    return take(mask, key_slots, -1, batch_dim=0)
