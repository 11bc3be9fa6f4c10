"""Token → image-region maps: where each visual token of a multimodal LLM looks in the original image.

Pure geometry, no model: for each family, the functions below replay the exact size arithmetic of the
Hugging Face image processor (transformers 5.23; resize, crop, pad, tiling) and of the model's feature
packing (LLaVA-NeXT unpadding + newline tokens, Qwen2.5-VL 2×2 merge, InternVL pixel shuffle), and return a
:class:`VisualLayout`: the token grids in sequence order and one box per visual token in ORIGINAL image
pixels. The token indices are indices into the model's run of image placeholder tokens (the N visual tokens
the pruning methods see); surrounding wrapper tokens (InternVL's ``<img>``/``</img>``, Qwen's
``<|vision_start|>``/``<|vision_end|>``) are not part of it.

Coordinates: boxes are ``(x1, y1, x2, y2)`` float64 with pixel *edges* as integers (pixel ``i`` spans
``[i, i + 1)``), so an image of width ``W`` spans ``[0, W]``. A resize from ``W`` to ``W'`` maps edges by
``x ↦ x · W / W'``, which is what PIL and torchvision (half-pixel centres) do.

Each layout also fixes one *model frame*: the image the model is said to "see" as a whole, in which a
family's grounding coordinates are expressed (see :mod:`d2pruner.grounding`):

=============  ==========================================================================================
family         model frame
=============  ==========================================================================================
llava          the processed 336×336 input (the centre crop of the shortest-edge resize by default, the
               padded square with ``do_pad=True``)
llava_next     the base view: the whole image squashed to 336×336
qwen2_5_vl     the ``smart_resize``-d input (``w_bar × h_bar`` pixels)
internvl       the tiled canvas: the whole image resized to ``cols·448 × rows·448``
=============  ==========================================================================================

``original = frame_origin + frame_scale · frame`` (per axis) maps a frame point to original pixels.

Sources (transformers 5.23): ``image_processing_pil_llava.py`` + ``image_transforms.get_resize_output_image_size``
/ ``center_crop``; ``image_processing_pil_llava_next.py`` + ``image_processing_utils.select_best_resolution``
/ ``get_patch_output_size``, ``modeling_llava_next.pack_image_features`` / ``unpad_image``,
``processing_llava_next._get_number_of_features``; ``image_processing_pil_qwen2_vl.smart_resize``;
``image_processing_pil_got_ocr2.get_optimal_tiled_canvas`` / ``crop_image_to_patches``,
``modeling_internvl.pixel_shuffle``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "INTERNVL_DEFAULTS",
    "LLAVA_NEXT_GRID_PINPOINTS",
    "QWEN2_5_VL_MAX_PIXELS",
    "QWEN2_5_VL_MIN_PIXELS",
    "TokenGrid",
    "VisualLayout",
    "internvl_layout",
    "internvl_tile_grid",
    "layout_for",
    "layout_from_processor",
    "llava_layout",
    "llava_next_layout",
    "qwen2_5_vl_layout",
    "select_best_resolution",
    "smart_resize",
    "tile_arrangement",
]

#: ``image_grid_pinpoints`` of the llava-hf LLaVA-NeXT (v1.6) checkpoints, as (height, width).
LLAVA_NEXT_GRID_PINPOINTS: tuple[tuple[int, int], ...] = (
    (336, 672),
    (672, 336),
    (672, 672),
    (1008, 336),
    (336, 1008),
)
#: ``min_pixels`` / ``max_pixels`` of the Qwen2.5-VL checkpoints' ``preprocessor_config.json``
#: (the processor class defaults are 56·56 and 28·28·1280; the released checkpoints override the maximum).
QWEN2_5_VL_MIN_PIXELS = 56 * 56
QWEN2_5_VL_MAX_PIXELS = 28 * 28 * 16384  # 12 845 056
#: InternVL "-hf" processor defaults (tile 448, 1..12 tiles, ``crop_to_patches=True`` set by InternVLProcessor).
INTERNVL_DEFAULTS = {"tile_size": 448, "min_tiles": 1, "max_tiles": 12}

Box = tuple[float, float, float, float]


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
        family: ``"llava"`` | ``"llava_next"`` | ``"qwen2_5_vl"`` | ``"internvl"``.
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
        """The highest-resolution view: all grids except LLaVA-NeXT's ``base`` and InternVL's ``thumbnail``."""
        return tuple(g for g in self.grids if g.name not in ("base", "thumbnail"))

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

    def paint(
        self,
        values: np.ndarray,
        grids: Sequence[str] | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Rasterise per-token ``values`` [num_tokens] onto the original image as a heatmap.

        Arguments:
            values: one number per visual token (newline tokens ignored).
            grids: names of the grids to paint; default :attr:`detail_grids`. Where several painted grids
                cover a pixel (InternVL tiles never overlap; ``base`` + ``highres`` do) their values are
                averaged.
            out_size: ``(width, height)`` of the heatmap; default the original image size. Pixel centres
                are sampled.

        Returns:
            [height, width] float64; NaN where no painted grid sees the pixel.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.num_tokens,):
            raise ValueError(f"expected values of shape ({self.num_tokens},), got {values.shape}")
        w_img, h_img = self.image_size
        out_w, out_h = out_size if out_size is not None else self.image_size
        xs = (np.arange(out_w) + 0.5) * (w_img / out_w)
        ys = (np.arange(out_h) + 0.5) * (h_img / out_h)
        total = np.zeros((out_h, out_w))
        count = np.zeros((out_h, out_w))
        selected = self.detail_grids if grids is None else tuple(self.grid(n) for n in grids)
        for g in selected:
            if g.rows * g.cols == 0:
                continue
            idx = g.token_indices()
            reg = self.regions[idx]  # [rows, cols, 4]
            col_x1 = _first_finite(reg[:, :, 0], axis=0)
            col_x2 = _first_finite(reg[:, :, 2], axis=0)
            row_y1 = _first_finite(reg[:, :, 1], axis=1)
            row_y2 = _first_finite(reg[:, :, 3], axis=1)
            ci, cok = _locate(xs, col_x1, col_x2)
            ri, rok = _locate(ys, row_y1, row_y2)
            vals = values[idx][ri[:, None], ci[None, :]]
            ok = rok[:, None] & cok[None, :] & np.isfinite(self.regions[idx][ri[:, None], ci[None, :], 0])
            total += np.where(ok, vals, 0.0)
            count += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ----------------------------------------------------------------------------------------------------
# Processor arithmetic (replayed from transformers 5.23, integer-exact).


def select_best_resolution(
    original_size: tuple[int, int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """LLaVA-NeXT's choice of canvas; ``original_size`` and the result are ``(height, width)``.

    Same rule as ``transformers.image_processing_utils.select_best_resolution``: maximise the effective
    (downscaled, capped at original) resolution, then minimise wasted canvas.
    """
    original_height, original_width = original_size
    best_fit = None
    max_effective = 0
    min_wasted = float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted = effective, wasted
            best_fit = (int(height), int(width))
    if best_fit is None:
        raise ValueError("possible_resolutions is empty")
    return best_fit


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL input size ``(h_bar, w_bar)``: multiples of ``factor``, pixel count in range.

    Identical to ``transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.smart_resize``; raises
    ``ValueError`` for aspect ratios above 200 as the processor does.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def internvl_tile_grid(
    image_size: tuple[int, int], tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12
) -> tuple[int, int]:
    """InternVL / GOT-OCR2 dynamic tiling: ``(num_columns, num_rows)`` for an image ``(width, height)``.

    Same rule as ``get_optimal_tiled_canvas``: the tile arrangement (``min_tiles ≤ cols·rows ≤ max_tiles``,
    sorted by tile count) whose aspect ratio is closest to the image's; on a tie the later (more tiles)
    wins while the image area exceeds half the arrangement's area.
    """
    width, height = image_size
    arrangements = sorted(
        ((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles),
        key=lambda a: a[0] * a[1],
    )
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in arrangements:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def _shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """``get_resize_output_image_size(default_to_square=False)``: returns ``(new_width, new_height)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _patch_output_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """``get_patch_output_size``: size ``(h, w)`` of the image fitted inside canvas ``target`` (h, w)."""
    target_h, target_w = target
    scale_w = target_w / width
    scale_h = target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def _llava_next_unpad(height: int, width: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """``unpad_image`` on a feature canvas ``cur_h × cur_w``: kept rows ``[r0, r1)`` and cols ``[c0, c1)``."""
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(width * (cur_h / height), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


# ----------------------------------------------------------------------------------------------------
# Region helpers.


def _cells(rows: int, cols: int, cell_w: float, cell_h: float, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """[rows·cols, 4] row-major cell boxes of a regular grid starting at (x0, y0), in canvas pixels."""
    xs = x0 + np.arange(cols) * cell_w
    ys = y0 + np.arange(rows) * cell_h
    x1 = np.broadcast_to(xs[None, :], (rows, cols))
    y1 = np.broadcast_to(ys[:, None], (rows, cols))
    return np.stack([x1, y1, x1 + cell_w, y1 + cell_h], axis=-1).reshape(-1, 4).astype(np.float64)


def _to_original(
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


def _union_box(regions: np.ndarray) -> Box:
    if regions.size == 0 or np.all(np.isnan(regions[:, 0])):
        return (math.nan, math.nan, math.nan, math.nan)
    return (
        float(np.nanmin(regions[:, 0])),
        float(np.nanmin(regions[:, 1])),
        float(np.nanmax(regions[:, 2])),
        float(np.nanmax(regions[:, 3])),
    )


def _first_finite(a: np.ndarray, axis: int) -> np.ndarray:
    """Along ``axis``, the first finite value (the grid's column / row edges; NaN if none)."""
    finite = np.isfinite(a)
    pos = np.argmax(finite, axis=axis)
    vals = np.take_along_axis(a, np.expand_dims(pos, axis), axis=axis).squeeze(axis)
    return np.where(finite.any(axis=axis), vals, np.nan)


def _locate(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the interval ``[lo_i, hi_i)`` (sorted, non-overlapping, NaN = absent) containing each point."""
    lo_f = np.where(np.isfinite(lo), lo, np.inf)
    idx = np.clip(np.searchsorted(lo_f, points, side="right") - 1, 0, len(lo) - 1)
    ok = np.isfinite(lo[idx]) & (points >= lo[idx]) & (points < hi[idx])
    return idx, ok


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in image_size)
    if w < 1 or h < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    return w, h


def _build(
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
        grid = TokenGrid(name, rows, cols, offset, newline, _union_box(reg))
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


# ----------------------------------------------------------------------------------------------------
# Families.


def llava_layout(
    image_size: tuple[int, int],
    *,
    crop_size: int = 336,
    shortest_edge: int = 336,
    patch_size: int = 14,
    do_center_crop: bool = True,
    do_pad: bool = False,
) -> VisualLayout:
    """LLaVA-1.5 (llava-hf, ``LlavaImageProcessor``): one ``(crop/patch)²`` grid, 24×24 by default.

    Default (llava-hf checkpoints): resize the shortest edge to ``shortest_edge`` (long edge
    ``int(336·long/short)``), centre-crop ``crop_size``² with ``top = (h' − 336) // 2``; the tokens see only
    the crop. ``do_pad=True`` replays the original LLaVA repo's ``pad_to_square`` (pad the short side
    symmetrically, offset ``(long − short) // 2``, then resize): tokens wholly in the padding get NaN
    regions. Assumes ``vision_feature_select_strategy="default"`` (CLS dropped).

    Arguments:
        image_size: original ``(width, height)``.
    """
    w, h = _check_size(image_size)
    if do_pad:
        side = max(w, h)
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        rw, rh = _shortest_edge_size(side, side, shortest_edge)
        # padded-square pixel u ↦ original u − pad; resized ↦ padded: · side / r
        sx, sy = side / rw, side / rh
        ox, oy = -float(pad_x), -float(pad_y)
    else:
        rw, rh = _shortest_edge_size(w, h, shortest_edge)
        sx, sy = w / rw, h / rh
        ox = oy = 0.0
    if do_center_crop:
        left, top = (rw - crop_size) // 2, (rh - crop_size) // 2  # floor, also when negative (pads)
        pw, ph = crop_size, crop_size
    else:
        left = top = 0
        pw, ph = rw, rh
    rows, cols = ph // patch_size, pw // patch_size
    origin = (ox + sx * left, oy + sy * top)
    scale = (sx, sy)
    reg = _to_original(_cells(rows, cols, patch_size, patch_size), origin, scale, (w, h))
    return _build("llava", (w, h), [("image", rows, cols, False, reg)], (pw, ph), origin, scale, (rw, rh))


def llava_next_layout(
    image_size: tuple[int, int],
    *,
    grid_pinpoints: Sequence[Sequence[int]] = LLAVA_NEXT_GRID_PINPOINTS,
    crop_size: int = 336,
    patch_size: int = 14,
) -> VisualLayout:
    """LLaVA-NeXT (llava-hf v1.6, ``LlavaNextImageProcessor`` + ``pack_image_features``).

    Token order (``pack_image_features``): the ``base`` grid first — the whole image resized (squashed,
    no crop) to ``crop_size``², 24×24 tokens — then the ``highres`` grid: the image resized into the best
    ``grid_pinpoints`` canvas (``select_best_resolution``; fitted size ``get_patch_output_size`` with
    ``ceil``; centred with ``paste = (canvas − fitted) // 2``), split into ``crop_size`` tiles whose
    24×24 features are stitched into one canvas, then ``unpad_image`` drops ``(cur − round(·)) // 2`` feature
    rows (or cols) on both sides, and a newline token follows every kept row. Kept edge tokens may still
    overlap padding (clipped), and a few image pixels at the trimmed edges can lie in dropped rows.
    Count equals ``LlavaNextProcessor._get_number_of_features − 1`` ("default" strategy, CLS dropped).

    Arguments:
        image_size: original ``(width, height)``.
        grid_pinpoints: candidate canvases as ``(height, width)``, multiples of ``crop_size``.
    """
    w, h = _check_size(image_size)
    side = crop_size // patch_size
    base = _to_original(_cells(side, side, patch_size, patch_size), (0.0, 0.0), (w / crop_size, h / crop_size), (w, h))
    best_h, best_w = select_best_resolution((h, w), grid_pinpoints)
    fit_h, fit_w = _patch_output_size(h, w, (best_h, best_w))
    paste_x, paste_y = (best_w - fit_w) // 2, (best_h - fit_h) // 2
    cur_h, cur_w = (best_h // crop_size) * side, (best_w // crop_size) * side
    r0, r1, c0, c1 = _llava_next_unpad(h, w, cur_h, cur_w)
    sx, sy = w / fit_w, h / fit_h
    origin = (-paste_x * sx, -paste_y * sy)
    cells = _cells(r1 - r0, c1 - c0, patch_size, patch_size, c0 * patch_size, r0 * patch_size)
    high = _to_original(cells, origin, (sx, sy), (w, h))
    tiles = tuple(
        (origin[0] + sx * tx, origin[1] + sy * ty, origin[0] + sx * (tx + crop_size), origin[1] + sy * (ty + crop_size))
        for ty in range(0, best_h, crop_size)
        for tx in range(0, best_w, crop_size)
    )
    parts = [("base", side, side, False, base), ("highres", r1 - r0, c1 - c0, True, high)]
    return _build(
        "llava_next",
        (w, h),
        parts,
        (crop_size, crop_size),
        (0.0, 0.0),
        (w / crop_size, h / crop_size),
        (fit_w, fit_h),
        tiles,
    )


def qwen2_5_vl_layout(
    image_size: tuple[int, int],
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int = QWEN2_5_VL_MIN_PIXELS,
    max_pixels: int = QWEN2_5_VL_MAX_PIXELS,
) -> VisualLayout:
    """Qwen2.5-VL (``Qwen2VLImageProcessor``): ``smart_resize`` (factor ``patch·merge`` = 28), resize only,
    one token per 28×28 block, grid ``(h_bar/28, w_bar/28)`` row-major (the vision tower's window
    reordering is undone before the merger output). ``image_grid_thw = (1, h_bar/14, w_bar/14)``.

    Arguments:
        image_size: original ``(width, height)``; aspect ratio ≤ 200 (else ``ValueError``, as the processor).
        min_pixels, max_pixels: defaults are the released checkpoints' values (3136, 12845056).
    """
    w, h = _check_size(image_size)
    factor = patch_size * merge_size
    h_bar, w_bar = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    rows, cols = h_bar // factor, w_bar // factor
    scale = (w / w_bar, h / h_bar)
    reg = _to_original(_cells(rows, cols, factor, factor), (0.0, 0.0), scale, (w, h))
    return _build(
        "qwen2_5_vl", (w, h), [("image", rows, cols, False, reg)], (w_bar, h_bar), (0.0, 0.0), scale, (w_bar, h_bar)
    )


def internvl_layout(
    image_size: tuple[int, int],
    *,
    tile_size: int = 448,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    patch_size: int = 14,
    downsample_ratio: float = 0.5,
    crop_to_patches: bool = True,
) -> VisualLayout:
    """InternVL "-hf" (``GotOcr2ImageProcessor`` with ``crop_to_patches=True`` as InternVLProcessor sets it).

    The image is resized (aspect not kept) to a ``cols·448 × rows·448`` canvas chosen by
    :func:`internvl_tile_grid`, cut into 448² tiles row-major (``tile0`` …), each giving
    ``(448/14·0.5)² = 16×16`` tokens (pixel shuffle keeps row-major order); when there is more than one tile
    (and ``use_thumbnail``) a ``thumbnail`` tile — the whole image resized to 448² — comes last. With
    ``crop_to_patches=False`` or ``max_tiles ≤ 1`` the whole image is one 448² tile.

    Arguments:
        image_size: original ``(width, height)``.
    """
    w, h = _check_size(image_size)
    if crop_to_patches and max_tiles > 1:
        cols, rows = internvl_tile_grid((w, h), tile_size, min_tiles, max_tiles)
    else:
        cols, rows = 1, 1
    side = int(tile_size // patch_size * downsample_ratio)
    cell = tile_size / side
    canvas_w, canvas_h = cols * tile_size, rows * tile_size
    scale = (w / canvas_w, h / canvas_h)
    parts: list[tuple[str, int, int, bool, np.ndarray]] = []
    tiles: list[Box] = []
    for i in range(cols * rows):
        tx, ty = (i % cols) * tile_size, (i // cols) * tile_size
        reg = _to_original(_cells(side, side, cell, cell, tx, ty), (0.0, 0.0), scale, (w, h))
        parts.append((f"tile{i}", side, side, False, reg))
        tiles.append((tx * scale[0], ty * scale[1], (tx + tile_size) * scale[0], (ty + tile_size) * scale[1]))
    if use_thumbnail and cols * rows > 1:
        reg = _to_original(_cells(side, side, cell, cell), (0.0, 0.0), (w / tile_size, h / tile_size), (w, h))
        parts.append(("thumbnail", side, side, False, reg))
    return _build(
        "internvl", (w, h), parts, (canvas_w, canvas_h), (0.0, 0.0), scale, (canvas_w, canvas_h), tuple(tiles)
    )


# ----------------------------------------------------------------------------------------------------
# Entry points by family name / from a live processor.

def tile_arrangement(layout: VisualLayout) -> tuple[int, int]:
    """(rows, cols) in which InternVL's tiles cover the image (row-major, as in the token sequence); (1, 1) for
    every other family and for a single tile."""
    if layout.family != "internvl" or not layout.tiles:
        return (1, 1)
    return (len({round(t[1], 3) for t in layout.tiles}), len({round(t[0], 3) for t in layout.tiles}))


_BUILDERS = {
    "llava": llava_layout,
    "llava_next": llava_next_layout,
    "qwen2_5_vl": qwen2_5_vl_layout,
    "internvl": internvl_layout,
}


def layout_for(family: str, image_size: tuple[int, int], **params) -> VisualLayout:
    """Registry entry: ``layout_for("qwen2_5_vl", (w, h), max_pixels=...)`` → the family's layout function."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(_BUILDERS)}")
    return _BUILDERS[family](image_size, **params)


def _size_get(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def layout_from_processor(family: str, image_size: tuple[int, int], processor, **overrides) -> VisualLayout:
    """The layout for ``image_size`` with the geometry parameters read from a live HF (image) processor.

    Duck-typed (no transformers import): ``processor`` is a processor with an ``image_processor``
    attribute, or an image processor. Reads ``size`` / ``crop_size`` / ``do_center_crop`` / ``do_pad``
    (LLaVA), ``image_grid_pinpoints`` / ``crop_size`` (LLaVA-NeXT), ``size.shortest_edge`` /
    ``size.longest_edge`` (= min / max pixels), ``patch_size``, ``merge_size`` (Qwen2.5-VL), ``size``,
    ``min_patches``, ``max_patches`` (InternVL; ``crop_to_patches`` is taken as True because
    ``InternVLProcessor`` passes it on every call, whatever the image processor's attribute says). A
    processor's ``patch_size`` (LLaVA / NeXT processors carry it) is used when present. ``overrides``
    win over everything read. Pass the same per-call kwargs here that you pass to the processor.
    """
    ip = getattr(processor, "image_processor", processor)
    params: dict = {}
    if family == "llava":
        params["shortest_edge"] = _size_get(ip.size, "shortest_edge") or 336
        crop = getattr(ip, "crop_size", None)
        params["crop_size"] = _size_get(crop, "height") or 336
        params["do_center_crop"] = bool(getattr(ip, "do_center_crop", True))
        params["do_pad"] = bool(getattr(ip, "do_pad", False))
        if getattr(processor, "patch_size", None):
            params["patch_size"] = int(processor.patch_size)
    elif family == "llava_next":
        params["grid_pinpoints"] = [tuple(p) for p in ip.image_grid_pinpoints]
        params["crop_size"] = _size_get(getattr(ip, "crop_size", None), "height") or 336
        if getattr(processor, "patch_size", None):
            params["patch_size"] = int(processor.patch_size)
    elif family == "qwen2_5_vl":
        params["min_pixels"] = _size_get(ip.size, "shortest_edge") or QWEN2_5_VL_MIN_PIXELS
        params["max_pixels"] = _size_get(ip.size, "longest_edge") or QWEN2_5_VL_MAX_PIXELS
        params["patch_size"] = int(getattr(ip, "patch_size", 14))
        params["merge_size"] = int(getattr(ip, "merge_size", 2))
    elif family == "internvl":
        params["tile_size"] = _size_get(ip.size, "height") or 448
        params["min_tiles"] = int(getattr(ip, "min_patches", 1))
        params["max_tiles"] = int(getattr(ip, "max_patches", 12))
    params.update(overrides)
    return layout_for(family, image_size, **params)
