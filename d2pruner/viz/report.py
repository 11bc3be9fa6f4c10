"""The PNG report of one analysis: every panel composed into one image with PIL (no browser, no kaleido — works on a
Space), from the same arrays as the plotly figures. Every cell has the same size whatever the image's shape (a 10-px
wide or a 40:1 image is letterboxed, and the colour bars keep their width); a random model's report carries its
warning in red at the top."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import get_colorscale, sample_colorscale

from d2pruner.analysis.scoring import box_score
from d2pruner.viz.figures import Panel, thin_edges
from d2pruner.viz.geometry import Box, TokenGeometry, as_rgb
from d2pruner.viz.style import (
    GT_COLOR,
    HEATMAP_OPACITY,
    METHOD_COLORS,
    MUTED,
    NODE_COLOR,
    OUTSIDE_SHADE,
    PRUNED_SHADE,
    SEMANTIC_EDGE_COLOR,
    SPATIAL_EDGE_COLOR,
    TEXT,
    VANILLA_COLOR,
    color_values,
    fmt,
    value_range,
)

_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "DejaVuSans.ttf",
)
WARNING_COLOR = "#B91C1C"


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    for path in _FONT_CANDIDATES:
        if bold:
            path = path.replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8)
def _lut(colorscale: str) -> np.ndarray:
    """[256, 3] uint8 colours of a plotly colour scale (the same colours the figures use)."""
    colors = sample_colorscale(get_colorscale(colorscale), list(np.linspace(0, 1, 256)), colortype="tuple")
    arr = np.asarray(colors, dtype=np.float64)
    return np.clip(np.round(arr * (255 if arr.max() <= 1.0 else 1)), 0, 255).astype(np.uint8)


def _hex_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _fit(image: Image.Image, box: int) -> Image.Image:
    """The image scaled to fit a box×box square (up or down), at least 1 px per side."""
    scale = box / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR if scale < 1 else Image.NEAREST)


def _blend(base: np.ndarray, mask: np.ndarray, rgb, alpha: float) -> np.ndarray:
    return np.where(mask[..., None], (1 - alpha) * base + alpha * np.asarray(rgb, dtype=np.float64), base)


def _outside_mask(geometry: TokenGeometry, size: tuple[int, int]) -> np.ndarray:
    """Pixels of a display copy that no token of the detail view covers."""
    return geometry.raster(0, size) < 0


def _overlay(image: Image.Image, geometry: TokenGeometry, colour: np.ndarray, zrange: tuple[float, float],
             colorscale: str, alpha: float = HEATMAP_OPACITY) -> Image.Image:
    """Blend per-token colour values over a display copy of the image (detail view)."""
    index = geometry.raster(0, image.size)
    lo, hi = zrange
    with np.errstate(invalid="ignore"):
        t = np.clip((colour - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = _lut(colorscale)[np.nan_to_num(t * 255).astype(np.int64)]
    base = np.asarray(image, dtype=np.float64)
    tok = np.clip(index, 0, None)
    valid = (index >= 0) & np.isfinite(colour[tok])
    out = np.where(valid[..., None], (1 - alpha) * base + alpha * rgb[tok], base)
    return Image.fromarray(np.round(_shade_outside(out, index < 0)).astype(np.uint8))


def _shade_outside(arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    r, g, b, a = OUTSIDE_SHADE
    return _blend(arr, mask, (r, g, b), a)


def _shade_pruned(image: Image.Image, geometry: TokenGeometry, kept: np.ndarray | None) -> Image.Image:
    index = geometry.raster(0, image.size)
    base = np.asarray(image, dtype=np.float64)
    if kept is not None:
        pruned = np.ones(geometry.num_tokens, dtype=bool)
        pruned[np.asarray(kept, dtype=np.int64)] = False
        r, g, b, a = PRUNED_SHADE
        base = _blend(base, (index >= 0) & pruned[np.clip(index, 0, None)], (r, g, b), a)
    return Image.fromarray(np.round(_shade_outside(base, index < 0)).astype(np.uint8))


def _draw_box(draw: ImageDraw.ImageDraw, box: Box, scale: float, color: str, width: int, dash: int = 0) -> None:
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    rgb = _hex_rgb(color)
    if not dash:
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=rgb, width=width)
        return
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = math.hypot(bx - ax, by - ay)
        for s in range(max(1, int(length // (2 * dash)))):
            t0, t1 = (2 * s) * dash / max(length, 1e-9), min(1.0, (2 * s + 1) * dash / max(length, 1e-9))
            if t0 >= 1:
                break
            draw.line([ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1],
                      fill=rgb, width=width)


def _colorbar(width: int, colorscale: str, lo: float, hi: float, label: str, log: bool) -> Image.Image:
    """A colour bar ``width`` wide (at least 60 px, whatever the image's width)."""
    width = max(60, int(width))
    bar = Image.new("RGB", (width, 34), "white")
    strip = np.repeat(_lut(colorscale)[np.linspace(0, 255, width - 20).astype(np.int64)][None], 9, axis=0)
    bar.paste(Image.fromarray(strip), (10, 2))
    d = ImageDraw.Draw(bar)
    f = _font(11)
    text = (lambda v: f"1e{v:.1f}") if log else fmt
    d.text((10, 13), text(lo), fill=_hex_rgb(MUTED), font=f)
    right = text(hi)
    d.text((width - 10 - d.textlength(right, font=f), 13), right, fill=_hex_rgb(MUTED), font=f)
    d.text(((width - d.textlength(label, font=f)) / 2, 13), label, fill=_hex_rgb(MUTED), font=f)
    return bar


def _wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for w in para.split(" "):
            cand = (line + " " + w).strip()
            if draw.textlength(cand, font=font) <= width or not line:
                line = cand
            else:
                lines.append(line)
                line = w
        lines.append(line)
    return lines


def report_png(
    image,
    geometry: TokenGeometry,
    *,
    heatmaps: Sequence[tuple[str, np.ndarray, str, tuple[float, float] | None, bool, str]],
    edges: np.ndarray,
    kinds: Sequence[str],
    panels: Sequence[Panel],
    gt_box: Box | None = None,
    reference_box: Box | None = None,
    header: Sequence[str] = (),
    footer: Sequence[str] = (),
    warning: str | None = None,
    highlight: np.ndarray | None = None,
    graph_title: str = "hybrid graph",
    tile: int = 300,
    columns: int = 4,
    max_edges: int = 4000,
) -> Image.Image:
    """All panels of an analysis in one PIL image (detail view of multi-grid layouts).

    Arguments:
        heatmaps: (title, [N] colour values, colour scale, (min, max) or None, log, colour-bar label) each,
            drawn over the image like :func:`~d2pruner.viz.figures.token_heatmap`.
        edges, kinds: the hybrid graph (thinned like :func:`~d2pruner.viz.figures.graph_figure`).
        panels: facets like :func:`~d2pruner.viz.figures.facet_figure` (kept tokens shaded, boxes, IoU or
            "no box" in the caption).
        warning: drawn in red above everything (e.g. the random-weights warning).
        highlight: graph nodes drawn in D²Pruner's colour (e.g. the tokens it kept).
        header / footer: text lines above / below the tiles (wrapped).
        tile: the side of every image cell in pixels (images are scaled to fit it).
    """
    if tile < 60:
        raise ValueError(f"tile must be at least 60 px, got {tile}")
    disp = _fit(as_rgb(image), tile)
    scale = disp.width / geometry.image_size[0]
    tiles: list[tuple[str, Image.Image, Image.Image | None, str]] = []

    plain = _shade_pruned(disp, geometry, None)
    d = ImageDraw.Draw(plain)
    if reference_box is not None:
        _draw_box(d, reference_box, scale, VANILLA_COLOR, 2, dash=4)
    if gt_box is not None:
        _draw_box(d, gt_box, scale, GT_COLOR, 3, dash=6)
    tiles.append(("input image", plain, None, TEXT))

    for title, values, cscale, zrange, log, label in heatmaps:
        values = np.asarray(values, dtype=np.float64)
        colour, _ = color_values(values, log)
        rng = zrange if zrange is not None else value_range(values, log=log)
        tiles.append((title, _overlay(disp, geometry, colour, rng, cscale), _colorbar(tile, cscale, *rng, label, log),
                      TEXT))

    graph = _shade_pruned(disp, geometry, None)
    dg = ImageDraw.Draw(graph)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    chosen, _ = thin_edges(edges, kinds, max_edges)
    in_view = np.zeros(geometry.num_tokens, dtype=bool)
    in_view[geometry.view_tokens(0)] = True
    centres = geometry.centres() * scale
    kinds_arr = np.asarray(list(kinds))
    for e in chosen:
        i, j = edges[e]
        if in_view[i] and in_view[j] and np.isfinite(centres[[i, j]]).all():
            color = _hex_rgb(SEMANTIC_EDGE_COLOR if kinds_arr[e] == "semantic" else SPATIAL_EDGE_COLOR)
            dg.line([*centres[i], *centres[j]], fill=color, width=2)
    rad = max(1.5, min(4.0, 0.18 * disp.width / max(g.cols for g in geometry.grids)))
    marked = np.zeros(geometry.num_tokens, dtype=bool)
    if highlight is not None:
        marked[np.asarray(highlight, dtype=np.int64)] = True
    for t in geometry.view_tokens(0):
        x, y = centres[t]
        if np.isfinite(x) and np.isfinite(y):
            r_ = rad * (1.25 if marked[t] else 1.0)
            dg.ellipse([x - r_, y - r_, x + r_, y + r_], outline=(17, 24, 39),
                       fill=_hex_rgb(METHOD_COLORS["d2pruner"] if marked[t] else NODE_COLOR))
    n_sem = int((kinds_arr == "semantic").sum())
    tiles.append((f"{graph_title} · {len(edges) - n_sem:,} spatial + {n_sem:,} semantic edges", graph, None, TEXT))

    n = geometry.num_tokens
    for p in panels:
        img = _shade_pruned(disp, geometry, p.kept)
        dp = ImageDraw.Draw(img)
        if gt_box is not None:
            _draw_box(dp, gt_box, scale, GT_COLOR, 3, dash=6)
        if reference_box is not None and p.kept is not None:
            _draw_box(dp, reference_box, scale, VANILLA_COLOR, 2, dash=3)
        if p.box is not None:
            _draw_box(dp, p.box, scale, p.color, 3)
        caption = f"{p.label} · {n if p.kept is None else len(p.kept)}/{n} tokens"
        score = box_score(p.box, gt_box)
        if score.iou is not None:
            caption += f" · IoU {score.iou:.2f}"
        elif gt_box is not None:
            caption += " · no box"
        tiles.append((caption, img, None, p.color if p.kept is not None else TEXT))

    pad, cap_h, bar_h = 14, 22, 34
    cell_w, cell_h = tile + pad, cap_h + tile + bar_h + pad
    ncols = min(columns, len(tiles))
    nrows = math.ceil(len(tiles) / ncols)
    width = pad + ncols * cell_w
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    body, bold = _font(13), _font(14, bold=True)
    warn_lines = _wrap(warning, bold, width - 2 * pad, probe) if warning else []
    head_lines = [line for text in header for line in _wrap(text, body, width - 2 * pad, probe)]
    foot_lines = [line for text in footer for line in _wrap(text, body, width - 2 * pad, probe)]
    line_h = 18
    top = pad + 26 + (line_h * len(warn_lines) + 6 if warn_lines else 0) + line_h * len(head_lines) + pad
    height = top + nrows * cell_h + line_h * len(foot_lines) + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    dc = ImageDraw.Draw(canvas)
    dc.text((pad, pad), "D²Pruner lab — analysis report", fill=_hex_rgb(TEXT), font=_font(18, bold=True))
    y = pad + 28
    if warn_lines:
        dc.rectangle([pad - 4, y - 3, width - pad + 4, y + line_h * len(warn_lines) + 1], outline=_hex_rgb(
            WARNING_COLOR), width=2)
        for line in warn_lines:
            dc.text((pad, y), line, fill=_hex_rgb(WARNING_COLOR), font=bold)
            y += line_h
        y += 6
    for line in head_lines:
        dc.text((pad, y), line, fill=_hex_rgb(TEXT), font=body)
        y += line_h
    cap_font = _font(12, bold=True)
    for i, (caption, img, bar, color) in enumerate(tiles):
        r, c = divmod(i, ncols)
        x0, y0 = pad + c * cell_w, top + r * cell_h
        text = caption
        while dc.textlength(text, font=cap_font) > tile and len(text) > 4:
            text = text[:-2]
        if text != caption:
            text = text[:-1] + "…"
        dc.text((x0, y0 + 3), text, fill=_hex_rgb(color), font=cap_font)
        canvas.paste(img, (x0 + (tile - img.width) // 2, y0 + cap_h + (tile - img.height) // 2))
        if bar is not None:
            canvas.paste(bar, (x0, y0 + cap_h + tile))
    y = top + nrows * cell_h
    for line in foot_lines:
        dc.text((pad, y), line, fill=_hex_rgb(TEXT), font=body)
        y += line_h
    return canvas
