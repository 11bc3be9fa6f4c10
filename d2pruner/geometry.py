"""Token geometry shared by every family: token grids, where each visual token looks in the original image, and
the model frame grounding boxes are expressed in.

A family file (``d2pruner/families/*.py``) replays its image processor's size arithmetic and its model's feature
packing and returns a :class:`VisualLayout` built with :func:`build_layout`: the token grids in sequence order and
one box per visual token in ORIGINAL image pixels. Token indices are indices into the model's run of image
placeholder tokens (the visual tokens the pruning methods see); wrapper tokens (InternVL's ``<img>``, Qwen's
``<|vision_start|>``) are not part of it.

Coordinates: boxes are ``(x1, y1, x2, y2)`` float64 with pixel *edges* as integers (pixel ``i`` spans
``[i, i + 1)``), so an image of width ``W`` spans ``[0, W]``. A resize from ``W`` to ``W'`` maps edges by
``x ↦ x · W / W'``, which is what PIL and torchvision (half-pixel centres) do.

Each layout also fixes one *model frame*: the image the model is said to "see" as a whole, in which the family's
grounding coordinates are expressed (each family file says which); ``original = frame_origin + frame_scale ·
frame`` (per axis) maps a frame point to original pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "OVERVIEW_GRIDS",
    "Box",
    "TokenGrid",
    "VisualLayout",
    "build_layout",
    "cells",
    "check_size",
    "to_original",
    "union_box",
]

Box = tuple[float, float, float, float]
#: grid names of a layout's coarse overview (a second view of the whole image beside the detailed grids)
OVERVIEW_GRIDS = frozenset({"base", "thumbnail"})


@dataclass(frozen=True)
class TokenGrid:
    """One 2-D block of visual tokens, row-major in the token sequence.

    Arguments:
        name: ``"image"`` (LLaVA, Qwen2.5-VL), ``"base"`` / ``"highres"`` (LLaVA-NeXT),
            ``"tile0"``, ``"tile1"``, … / ``"thumbnail"`` (InternVL).
        rows, cols: grid shape in tokens.
        offset: index of the grid's first token in the visual-token sequence.
        newline_after_row: one extra (region-less) token follows each row (LLaVA-NeXT high-res grid).
        box: union of the grid's token regions in original pixels ``(x1, y1, x2, y2)`` (the part of the
            image this grid sees); NaNs if it sees nothing.
    """

    name: str
    rows: int
    cols: int
    offset: int
    newline_after_row: bool = False
    box: Box = (math.nan, math.nan, math.nan, math.nan)

    @property
    def num_tokens(self) -> int:
        """Tokens in this grid including its newline tokens."""
        return self.rows * (self.cols + int(self.newline_after_row))

    def token_indices(self) -> np.ndarray:
        """[rows, cols] int64 indices (into the visual-token sequence) of the grid cells."""
        stride = self.cols + int(self.newline_after_row)
        r = np.arange(self.rows)[:, None]
        c = np.arange(self.cols)[None, :]
        return (self.offset + r * stride + c).astype(np.int64)

    def newline_indices(self) -> np.ndarray:
        """[rows] indices of the newline tokens (empty unless ``newline_after_row``)."""
        if not self.newline_after_row:
            return np.zeros(0, dtype=np.int64)
        stride = self.cols + 1
        return (self.offset + np.arange(self.rows) * stride + self.cols).astype(np.int64)


@dataclass(frozen=True)
class VisualLayout:
    """Where every visual token of one image looks, for one model family.

    Arguments:
        family: the family name (``"llava"``, ``"llava_next"``, ``"qwen2_5_vl"``, ``"internvl"``, …).
        image_size: original ``(width, height)``.
        grids: token grids in sequence order.
        num_tokens: number of image placeholder tokens (newline tokens included) — equals what the
            processor inserts into ``input_ids``.
        regions: ``[num_tokens, 4]`` float64 ``x1, y1, x2, y2`` in original pixels, clipped to the image;
            a NaN row for tokens without a visible region (newline tokens, tokens wholly in padding).
        grid_tokens: indices of the tokens that belong to a 2-D grid (all but newline tokens), in order.
        frame_size: ``(width, height)`` of the model frame (see module docstring) in frame pixels.
        frame_origin, frame_scale: ``original = frame_origin + frame_scale · frame`` per axis (x, y).
        processed_size: ``(width, height)`` of the resized image before any crop / pad / tiling split
            (LLaVA: shortest-edge resize; NeXT: the image inside the best-resolution canvas; Qwen: the
            smart-resized input; InternVL: the tile canvas).
        tiles: original-pixel box of each processor tile (NeXT: the 336² high-res tiles, padding
            included, unclipped; InternVL: the 448² tiles, thumbnail excluded); empty otherwise.
    """

    family: str
    image_size: tuple[int, int]
    grids: tuple[TokenGrid, ...]
    num_tokens: int
    regions: np.ndarray = field(repr=False)
    grid_tokens: np.ndarray = field(repr=False)
    frame_size: tuple[int, int]
    frame_origin: tuple[float, float]
    frame_scale: tuple[float, float]
    processed_size: tuple[int, int]
    tiles: tuple[Box, ...] = ()

    def grid(self, name: str) -> TokenGrid:
        """The grid called ``name`` (KeyError if absent)."""
        for g in self.grids:
            if g.name == name:
                return g
        raise KeyError(f"no grid {name!r} in {self.family} layout; have {[g.name for g in self.grids]}")

    @property
    def newline_tokens(self) -> np.ndarray:
        """Indices of the newline tokens (LLaVA-NeXT), sorted."""
        parts = [g.newline_indices() for g in self.grids]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    @property
    def detail_grids(self) -> tuple[TokenGrid, ...]:
        """The highest-resolution view: all grids except the overview ones (LLaVA-NeXT's / OneVision's ``base``,
        InternVL's ``thumbnail``)."""
        return tuple(g for g in self.grids if g.name not in OVERVIEW_GRIDS)

    def to_grid(self, values: np.ndarray, name: str) -> np.ndarray:
        """Scatter per-token ``values`` [num_tokens, ...] into grid ``name``'s shape [rows, cols, ...]."""
        values = np.asarray(values)
        if values.shape[0] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} values, got {values.shape[0]}")
        return values[self.grid(name).token_indices()]

    def frame_to_original(self, boxes: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map boxes ``[..., 4]`` from model-frame pixels to original pixels (no clipping)."""
        b = np.asarray(boxes, dtype=np.float64)
        ox, oy = self.frame_origin
        sx, sy = self.frame_scale
        return b * np.array([sx, sy, sx, sy]) + np.array([ox, oy, ox, oy])

    def original_to_frame(self, boxes: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map boxes ``[..., 4]`` from original pixels to model-frame pixels (no clipping)."""
        b = np.asarray(boxes, dtype=np.float64)
        ox, oy = self.frame_origin
        sx, sy = self.frame_scale
        return (b - np.array([ox, oy, ox, oy])) / np.array([sx, sy, sx, sy])


# ----------------------------------------------------------------------------------------------------
# Building layouts.


def cells(rows: int, cols: int, cell_w: float, cell_h: float, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """[rows·cols, 4] row-major cell boxes of a regular grid starting at (x0, y0), in canvas pixels."""
    xs = x0 + np.arange(cols) * cell_w
    ys = y0 + np.arange(rows) * cell_h
    x1 = np.broadcast_to(xs[None, :], (rows, cols))
    y1 = np.broadcast_to(ys[:, None], (rows, cols))
    return np.stack([x1, y1, x1 + cell_w, y1 + cell_h], axis=-1).reshape(-1, 4).astype(np.float64)


def to_original(
    boxes: np.ndarray, origin: tuple[float, float], scale: tuple[float, float], size: tuple[int, int]
) -> np.ndarray:
    """Affine-map canvas boxes to original pixels, clip to the image, NaN the empty ones."""
    ox, oy = origin
    sx, sy = scale
    out = boxes * np.array([sx, sy, sx, sy]) + np.array([ox, oy, ox, oy])
    w, h = size
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, h)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    out[empty] = np.nan
    return out


def union_box(regions: np.ndarray) -> Box:
    if regions.size == 0 or np.all(np.isnan(regions[:, 0])):
        return (math.nan, math.nan, math.nan, math.nan)
    return (
        float(np.nanmin(regions[:, 0])),
        float(np.nanmin(regions[:, 1])),
        float(np.nanmax(regions[:, 2])),
        float(np.nanmax(regions[:, 3])),
    )


def check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    return w, h


def build_layout(
    family: str,
    image_size: tuple[int, int],
    parts: list[tuple[str, int, int, bool, np.ndarray]],
    frame_size: tuple[int, int],
    frame_origin: tuple[float, float],
    frame_scale: tuple[float, float],
    processed_size: tuple[int, int],
    tiles: tuple[Box, ...] = (),
) -> VisualLayout:
    """Assemble a layout from ``(name, rows, cols, newline_after_row, regions[rows·cols, 4])`` parts."""
    grids: list[TokenGrid] = []
    all_regions: list[np.ndarray] = []
    offset = 0
    for name, rows, cols, newline, reg in parts:
        if newline:
            full = np.full((rows, cols + 1, 4), np.nan)
            full[:, :cols] = reg.reshape(rows, cols, 4)
            full = full.reshape(-1, 4)
        else:
            full = reg
        grid = TokenGrid(name, rows, cols, offset, newline, union_box(reg))
        grids.append(grid)
        all_regions.append(full)
        offset += grid.num_tokens
    regions = np.concatenate(all_regions, axis=0) if all_regions else np.zeros((0, 4))
    grid_tokens = np.concatenate([g.token_indices().reshape(-1) for g in grids]).astype(np.int64)
    return VisualLayout(
        family=family,
        image_size=image_size,
        grids=tuple(grids),
        num_tokens=offset,
        regions=regions,
        grid_tokens=np.sort(grid_tokens),
        frame_size=frame_size,
        frame_origin=frame_origin,
        frame_scale=frame_scale,
        processed_size=processed_size,
        tiles=tiles,
    )
