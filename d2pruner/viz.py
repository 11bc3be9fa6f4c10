"""Figures of one analysis, from arrays only (never a model): plotly figures for the app, a PIL report image.

Every function takes numbers — an image, the token geometry (grids + one region per token), per-token values,
index arrays, boxes — and returns a ``plotly.graph_objects.Figure`` (or a PIL image). Nothing here runs or
imports a model, so the figures are unit-testable on made-up arrays.

Coordinates: image pixels of the image the regions refer to, x to the right, y down; an image of width W spans
[0, W]. Boxes are ``(x1, y1, x2, y2)``.

Token geometry: N candidate tokens in one or several row-major grids (``TokenGeometry``). Multi-grid layouts
have two *views* of the same picture — LLaVA-NeXT's high-res grid and its coarse base grid, InternVL's tiles and
the thumbnail. Image figures draw the detail view and add buttons that switch views in the browser.

Figures:
    token_heatmap      per-token values (attention, prior, relative attention) over the image; hover shows
                       token index, grid position and value; optional shared range and log colour.
    graph_figure       the hybrid graph over the image: nodes at token centres, spatial and semantic edges
                       styled apart, large graphs thinned (``thin_edges``) with a note.
    methods_figure     one facet per method: pruned tokens shaded, kept count, predicted box beside the
                       reference (vanilla) and ground-truth boxes, IoU against the ground truth.
    sweep_figure       a metric (IoU or answer agreement) against keep ratio, one line per method.
    maps_figure        bare 2-D maps side by side (priors, blank-image attention) with one colour scale.
    marginals_figure   row and column marginals of 2-D maps, normalised to mean 1.
    report_png         the panels above composed into one PNG with PIL (no browser, no kaleido).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import get_colorscale, sample_colorscale
from plotly.subplots import make_subplots

from d2pruner.grounding import box_iou
from d2pruner.ops import GridView

__all__ = [
    "ATTENTION_COLORSCALE",
    "GT_COLOR",
    "METHOD_COLORS",
    "METHOD_LABELS",
    "RELATIVE_COLORSCALE",
    "SEMANTIC_EDGE_COLOR",
    "SPATIAL_EDGE_COLOR",
    "VANILLA_COLOR",
    "Panel",
    "TokenGeometry",
    "graph_figure",
    "image_data_uri",
    "maps_figure",
    "marginals_figure",
    "methods_figure",
    "report_png",
    "sweep_figure",
    "thin_edges",
    "token_heatmap",
]

Box = tuple[float, float, float, float]

#: display names of the methods (``d2pruner.METHODS`` keys)
METHOD_LABELS: dict[str, str] = {
    "fastv": "FastV",
    "dart": "DART",
    "divprune": "DivPrune",
    "mmr": "MMR",
    "d2pruner": "D²Pruner",
    "d2pruner-di": "DI only",
    "d2pruner-nospatial": "SD w/o spatial",
}
#: one colour per method, used for every line, box and facet of that method
METHOD_COLORS: dict[str, str] = {
    "fastv": "#F59E0B",
    "dart": "#3B82F6",
    "divprune": "#8B5CF6",
    "mmr": "#EC4899",
    "d2pruner": "#EF4444",
    "d2pruner-di": "#14B8A6",
    "d2pruner-nospatial": "#A16207",
}
VANILLA_COLOR = "#E5E7EB"
GT_COLOR = "#22C55E"
SPATIAL_EDGE_COLOR = "#38BDF8"
SEMANTIC_EDGE_COLOR = "#F472B6"
NODE_COLOR = "#F8FAFC"
ATTENTION_COLORSCALE = "Inferno"
RELATIVE_COLORSCALE = "Viridis"
PRUNED_SHADE = (8, 10, 24, 0.78)
HEATMAP_OPACITY = 0.72
DISPLAY_MAX_SIDE = 640
FONT_FAMILY = "Inter, 'Source Sans Pro', 'DejaVu Sans', Arial, sans-serif"
_TEXT = "#1F2937"
_MUTED = "#6B7280"


# ----------------------------------------------------------------------------------------------------
# Geometry.


@dataclass(frozen=True)
class TokenGeometry:
    """Where the N candidate tokens look in the image.

    Arguments:
        grids: the token grids in candidate order (offsets 0, size₀, size₀ + size₁, …).
        regions: [N, 4] float (x1, y1, x2, y2) of each token in image pixels; rows of a grid share their
            y-extent and columns their x-extent (true of every supported family's layout).
        image_size: (width, height) of the image the regions refer to.
    """

    grids: tuple[GridView, ...]
    regions: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        regions = np.asarray(self.regions, dtype=np.float64)
        object.__setattr__(self, "regions", regions)
        total = sum(g.size for g in self.grids)
        if regions.ndim != 2 or regions.shape != (total, 4):
            raise ValueError(f"regions must be [{total}, 4] for grids {self.shapes}, got {regions.shape}")
        offset = 0
        for g in self.grids:
            if g.offset != offset or g.rows < 1 or g.cols < 1:
                raise ValueError(f"grids must be non-empty and contiguous in order; got {self.grids}")
            offset += g.size
        w, h = self.image_size
        if w < 1 or h < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    @classmethod
    def from_grids(cls, grids: Sequence, regions: np.ndarray, image_size: tuple[int, int]) -> TokenGeometry:
        """From any grid objects with ``name``, ``rows``, ``cols``, ``offset`` (e.g. an analysis result's)."""
        specs = tuple(GridView(str(g.name), int(g.rows), int(g.cols), int(g.offset)) for g in grids)
        return cls(specs, np.asarray(regions, dtype=np.float64), (int(image_size[0]), int(image_size[1])))

    @property
    def num_tokens(self) -> int:
        return int(self.regions.shape[0])

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(g.rows, g.cols) for g in self.grids]

    def grid_edges(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Column edges [cols + 1] and row edges [rows + 1] of grid ``index`` in image pixels."""
        g = self.grids[index]
        reg = self.regions[g.offset : g.offset + g.size].reshape(g.rows, g.cols, 4)
        with np.errstate(all="ignore"):
            x1 = np.nanmin(reg[:, :, 0], axis=0)
            x2 = np.nanmax(reg[:, :, 2], axis=0)
            y1 = np.nanmin(reg[:, :, 1], axis=1)
            y2 = np.nanmax(reg[:, :, 3], axis=1)
        xs = _fill_edges(np.append(x1, x2[-1]))
        ys = _fill_edges(np.append(y1, y2[-1]))
        return xs, ys

    def centres(self) -> np.ndarray:
        """[N, 2] token centres (x, y); NaN where a token has no region."""
        r = self.regions
        return np.stack([(r[:, 0] + r[:, 2]) / 2, (r[:, 1] + r[:, 3]) / 2], axis=1)

    def positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per token: grid index, row, column (each [N] int64)."""
        gi, rr, cc = [], [], []
        for k, g in enumerate(self.grids):
            r, c = np.divmod(np.arange(g.size), g.cols)
            gi.append(np.full(g.size, k))
            rr.append(r)
            cc.append(c)
        return np.concatenate(gi), np.concatenate(rr), np.concatenate(cc)

    def views(self) -> list[tuple[str, tuple[int, ...]]]:
        """Groups of grids drawn together: the detail view first, then the overview (base / thumbnail)."""
        overview = tuple(k for k, g in enumerate(self.grids) if g.name in ("base", "thumbnail"))
        detail = tuple(k for k in range(len(self.grids)) if k not in overview)
        if not overview or not detail:
            return [(self._label(range(len(self.grids))), tuple(range(len(self.grids))))]
        return [(self._label(detail), detail), (self._label(overview), overview)]

    def _label(self, indices) -> str:
        names = [self.grids[k].name for k in indices]
        if len(names) > 1 and all(n.startswith("tile") for n in names):
            return f"{len(names)} tiles"
        label = " + ".join(names)
        return {"highres": "high-res grid", "base": "base grid", "image": "image grid"}.get(label, label)

    def view_tokens(self, view: int = 0) -> np.ndarray:
        """Sorted candidate indices of the tokens in view ``view``."""
        _, grid_ids = self.views()[view]
        return np.concatenate([np.arange(self.grids[k].offset, self.grids[k].offset + self.grids[k].size)
                               for k in grid_ids])

    def raster(self, view: int, out_size: tuple[int, int]) -> np.ndarray:
        """[H, W] int64 token index under each output pixel centre (−1 where no token of the view is)."""
        out_w, out_h = out_size
        w_img, h_img = self.image_size
        xs = (np.arange(out_w) + 0.5) * (w_img / out_w)
        ys = (np.arange(out_h) + 0.5) * (h_img / out_h)
        index = np.full((out_h, out_w), -1, dtype=np.int64)
        for k in self.views()[view][1]:
            g = self.grids[k]
            xe, ye = self.grid_edges(k)
            ci = np.searchsorted(xe, xs, side="right") - 1
            ri = np.searchsorted(ye, ys, side="right") - 1
            cok = (ci >= 0) & (ci < g.cols)
            rok = (ri >= 0) & (ri < g.rows)
            tok = g.offset + np.clip(ri, 0, g.rows - 1)[:, None] * g.cols + np.clip(ci, 0, g.cols - 1)[None, :]
            ok = rok[:, None] & cok[None, :] & np.isfinite(self.regions[tok, 0])
            index = np.where(ok, tok, index)
        return index


def _fill_edges(edges: np.ndarray) -> np.ndarray:
    """Interpolate NaN edges (rows/columns without a visible token) so the edges stay increasing."""
    edges = np.asarray(edges, dtype=np.float64)
    ok = np.isfinite(edges)
    if ok.all():
        return edges
    if ok.sum() < 2:
        return np.arange(len(edges), dtype=np.float64)
    idx = np.arange(len(edges))
    return np.interp(idx, idx[ok], edges[ok])


# ----------------------------------------------------------------------------------------------------
# Small helpers.


def _as_rgb(image) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _display_copy(image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    image = _as_rgb(image)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
    return image


def image_data_uri(image, max_side: int = DISPLAY_MAX_SIDE, quality: int = 85) -> str:
    """A ``data:image/jpeg;base64,…`` URI of the image, downscaled to ``max_side`` (for plotly layout images)."""
    buf = io.BytesIO()
    _display_copy(image, max_side).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _axis_suffix(k: int) -> str:
    return "" if k == 1 else str(k)


def _add_image(fig: go.Figure, uri: str, size: tuple[int, int], k: int = 1) -> None:
    """Place the image at pixel coordinates on subplot k and fix its axes (y down, 1:1 aspect, hidden)."""
    w, h = size
    s = _axis_suffix(k)
    fig.add_layout_image(
        source=uri, xref=f"x{s}", yref=f"y{s}", x=0, y=0, sizex=w, sizey=h,
        sizing="stretch", layer="below", xanchor="left", yanchor="top",
    )
    fig.update_layout({
        f"xaxis{s}": dict(range=[0, w], visible=False, constrain="domain", showgrid=False, zeroline=False),
        f"yaxis{s}": dict(range=[h, 0], visible=False, scaleanchor=f"x{s}", scaleratio=1, constrain="domain",
                          showgrid=False, zeroline=False),
    })


def _base_layout(fig: go.Figure, title: str | None, height: int, *, legend: bool = False) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15, color=_TEXT)) if title else None,
        height=height,
        margin=dict(l=8, r=8, t=56 if title else 16, b=8),
        paper_bgcolor="white",
        plot_bgcolor="white",
        font=dict(family=FONT_FAMILY, size=12, color=_TEXT),
        showlegend=legend,
        hoverlabel=dict(font=dict(family=FONT_FAMILY, size=12)),
    )
    return fig


def _view_buttons(fig: go.Figure, view_of_trace: Sequence[int | None], labels: Sequence[str], *,
                  top: bool = False) -> None:
    """Buttons (bottom right, or top right) that show one view's traces (None = trace visible in every view)."""
    if len(labels) < 2:
        return
    buttons = [
        dict(label=label, method="restyle",
             args=[{"visible": [v is None or v == i for v in view_of_trace]}])
        for i, label in enumerate(labels)
    ]
    fig.update_layout(updatemenus=[dict(
        type="buttons", direction="right", showactive=True, active=0, buttons=buttons,
        x=1.0, xanchor="right", y=1.0 if top else 0.0, yanchor="bottom" if top else "top", pad=dict(t=4, b=4, r=0),
        font=dict(size=11), bgcolor="#F3F4F6", bordercolor="#D1D5DB",
    )])
    if top:
        fig.update_layout(margin=dict(t=max(88, (fig.layout.margin.t or 0))))
    else:
        fig.update_layout(margin=dict(b=max(44, (fig.layout.margin.b or 0))))


def _color_values(values: np.ndarray, log: bool) -> tuple[np.ndarray, float]:
    """Values used for colour (log10 when asked; non-positive values clipped to a floor)."""
    values = np.asarray(values, dtype=np.float64)
    if not log:
        return np.where(np.isfinite(values), values, np.nan), 0.0
    finite = values[np.isfinite(values) & (values > 0)]
    floor = max(float(finite.min()) if finite.size else 1e-12, 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.where(np.isfinite(values), np.maximum(values, floor), np.nan)), floor


def value_range(*arrays: np.ndarray, log: bool = False) -> tuple[float, float]:
    """(min, max) over the finite colour values of all arrays (log10 when ``log``); a flat range is widened."""
    parts = [_color_values(a, log)[0].ravel() for a in arrays]
    allv = np.concatenate(parts) if parts else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    if allv.size == 0:
        return 0.0, 1.0
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def _log_ticks(lo: float, hi: float) -> dict:
    first, last = math.floor(lo), math.ceil(hi)
    step = max(1, (last - first) // 5)
    vals = list(range(first, last + 1, step))
    return dict(tickvals=vals, ticktext=[f"1e{v}" for v in vals])


def _fmt(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3g}"


# ----------------------------------------------------------------------------------------------------
# Heatmaps over the image.


def token_heatmap(
    image,
    geometry: TokenGeometry,
    values: np.ndarray,
    *,
    title: str,
    value_label: str = "value",
    colorscale: str = ATTENTION_COLORSCALE,
    color_values: np.ndarray | None = None,
    zrange: tuple[float, float] | None = None,
    log: bool = False,
    colorbar_title: str | None = None,
    height: int = 400,
) -> go.Figure:
    """Per-token values as a heatmap over the image.

    Arguments:
        image: the image (PIL or HxWx3 uint8) the geometry's regions refer to.
        geometry: the N tokens' grids and regions.
        values: [N] numbers shown on hover (token index, grid, row, column, value).
        color_values: [N] numbers that set the colour (default ``values``; e.g. a rescaled copy for a
            scale shared with other panels).
        zrange: (min, max) of the colour scale in colour units (log10 units when ``log``); default the
            data range. Pass the same range to several figures to share their scale.
        log: colour by log10 (attention has heavy tails: sinks take most of the mass).
    Returns:
        a figure with one heatmap trace per grid; multi-grid layouts get view buttons.
    """
    values = np.asarray(values, dtype=np.float64)
    n = geometry.num_tokens
    if values.shape != (n,):
        raise ValueError(f"values must have shape ({n},), got {values.shape}")
    colour_src = values if color_values is None else np.asarray(color_values, dtype=np.float64)
    if colour_src.shape != (n,):
        raise ValueError(f"color_values must have shape ({n},), got {colour_src.shape}")
    colour, _ = _color_values(colour_src, log)
    zmin, zmax = zrange if zrange is not None else value_range(colour_src, log=log)
    fig = go.Figure()
    image_size = geometry.image_size
    _add_image(fig, image_data_uri(image), image_size)
    views = geometry.views()
    view_of_trace: list[int | None] = []
    _, rows_of, cols_of = geometry.positions()
    for vi, (_, grid_ids) in enumerate(views):
        for k in grid_ids:
            g = geometry.grids[k]
            sl = slice(g.offset, g.offset + g.size)
            xe, ye = geometry.grid_edges(k)
            custom = np.stack([np.arange(g.offset, g.offset + g.size), rows_of[sl], cols_of[sl], values[sl]], axis=-1)
            fig.add_trace(go.Heatmap(
                z=colour[sl].reshape(g.rows, g.cols), x=xe, y=ye,
                customdata=custom.reshape(g.rows, g.cols, 4),
                coloraxis="coloraxis", opacity=HEATMAP_OPACITY, name=g.name, meta=g.name,
                hovertemplate=(
                    "token #%{customdata[0]:d} · grid %{meta}<br>row %{customdata[1]:d}, col %{customdata[2]:d}"
                    f"<br>{value_label}: %{{customdata[3]:.4g}}<extra></extra>"
                ),
                visible=vi == 0,
            ))
            view_of_trace.append(vi)
    colorbar = dict(title=dict(text=colorbar_title or value_label, side="right"), thickness=12, len=0.9)
    if log:
        colorbar.update(_log_ticks(zmin, zmax))
    fig.update_layout(coloraxis=dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=colorbar))
    _base_layout(fig, title, height)
    _view_buttons(fig, view_of_trace, [label for label, _ in views])
    return fig


# ----------------------------------------------------------------------------------------------------
# The hybrid graph.


def thin_edges(
    edges: np.ndarray, kinds: Sequence[str], max_edges: int, seed: int = 0
) -> tuple[np.ndarray, str | None]:
    """Choose at most ``max_edges`` edges to draw: all semantic edges first (rarer), then a uniform random
    sample (fixed seed) of the spatial ones.

    Returns:
        (sorted indices into ``edges``, a note saying what was left out, or None when all are drawn).
    """
    edges = np.asarray(edges).reshape(-1, 2)
    kinds = np.asarray(list(kinds))
    if len(kinds) != len(edges):
        raise ValueError(f"{len(edges)} edges but {len(kinds)} kinds")
    if max_edges < 0:
        raise ValueError(f"max_edges must be >= 0, got {max_edges}")
    total = len(edges)
    if total <= max_edges:
        return np.arange(total), None
    rng = np.random.default_rng(seed)
    semantic = np.flatnonzero(kinds == "semantic")
    spatial = np.flatnonzero(kinds != "semantic")
    if len(semantic) > max_edges:
        semantic = np.sort(rng.choice(semantic, size=max_edges, replace=False))
    room = max_edges - len(semantic)
    chosen_spatial = np.sort(rng.choice(spatial, size=min(room, len(spatial)), replace=False))
    chosen = np.sort(np.concatenate([semantic, chosen_spatial]))
    n_sem = int((kinds == "semantic").sum())
    note = (
        f"showing {len(chosen):,} of {total:,} edges ({len(semantic):,} of {n_sem:,} semantic, "
        f"{len(chosen_spatial):,} of {total - n_sem:,} spatial, sampled uniformly) to keep the plot responsive"
    )
    return chosen, note


def _segments(points: np.ndarray, pairs: np.ndarray) -> tuple[list, list]:
    """x, y lists with None separators drawing one segment per pair."""
    if len(pairs) == 0:
        return [], []
    a, b = points[pairs[:, 0]], points[pairs[:, 1]]
    nan = np.full(len(pairs), np.nan)
    xs = np.stack([a[:, 0], b[:, 0], nan], axis=1).ravel()
    ys = np.stack([a[:, 1], b[:, 1], nan], axis=1).ravel()
    return [None if np.isnan(v) else float(v) for v in xs], [None if np.isnan(v) else float(v) for v in ys]


def _node_size(n: int) -> float:
    return 9.0 if n <= 100 else 6.5 if n <= 400 else 4.5 if n <= 1200 else 3.0


def graph_figure(
    image,
    geometry: TokenGeometry,
    edges: np.ndarray,
    kinds: Sequence[str],
    *,
    title: str,
    highlight: np.ndarray | None = None,
    highlight_label: str = "kept",
    highlight_color: str = METHOD_COLORS["d2pruner"],
    max_edges: int = 2500,
    height: int = 400,
) -> go.Figure:
    """The hybrid token graph drawn over the image.

    Arguments:
        edges: [E, 2] token index pairs; ``kinds`` [E] ``"spatial"`` (grid neighbours joined by similarity
            too) or ``"semantic"`` (similarity alone). Spatial edges are solid blue, semantic dotted pink.
        highlight: token indices drawn as coloured nodes (e.g. the tokens D²Pruner kept).
        max_edges: larger graphs are thinned with :func:`thin_edges`; the note is shown under the title.
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    kinds = list(kinds)
    n = geometry.num_tokens
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"edge indices must lie in [0, {n})")
    centres = geometry.centres()
    grid_of, rows_of, cols_of = geometry.positions()
    degree = np.bincount(edges.ravel(), minlength=n) if edges.size else np.zeros(n, dtype=np.int64)
    chosen, note = thin_edges(edges, kinds, max_edges)
    kinds_arr = np.asarray(kinds)
    highlighted = np.zeros(n, dtype=bool)
    if highlight is not None:
        highlighted[np.asarray(highlight, dtype=np.int64)] = True

    fig = go.Figure()
    _add_image(fig, image_data_uri(image), geometry.image_size)
    views = geometry.views()
    view_of_trace: list[int | None] = []
    hidden_cross = 0
    for vi, _ in enumerate(views):
        tokens = geometry.view_tokens(vi)
        in_view = np.zeros(n, dtype=bool)
        in_view[tokens] = True
        sel = chosen[in_view[edges[chosen, 0]] & in_view[edges[chosen, 1]]] if len(chosen) else chosen
        if vi == 0 and len(chosen):
            hidden_cross = int((in_view[edges[chosen, 0]] != in_view[edges[chosen, 1]]).sum())
        for kind, color, dash, width in (("spatial", SPATIAL_EDGE_COLOR, "solid", 1.4),
                                         ("semantic", SEMANTIC_EDGE_COLOR, "dot", 1.6)):
            pairs = edges[sel[kinds_arr[sel] == kind]] if len(sel) else np.zeros((0, 2), dtype=np.int64)
            xs, ys = _segments(centres, pairs)
            total_kind = int((kinds_arr == kind).sum())
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", line=dict(color=color, width=width, dash=dash),
                name=f"{kind} edges ({total_kind:,})", legendgroup=kind, showlegend=vi == 0,
                hoverinfo="skip", visible=vi == 0,
            ))
            view_of_trace.append(vi)
        for is_hl in (False, True):
            idx = tokens[highlighted[tokens] == is_hl]
            if is_hl and highlight is None:
                continue
            custom = np.stack([idx, rows_of[idx], cols_of[idx], degree[idx]], axis=1)
            fig.add_trace(go.Scatter(
                x=centres[idx, 0], y=centres[idx, 1], mode="markers",
                marker=dict(size=_node_size(len(tokens)) * (1.15 if is_hl else 1.0),
                            color=highlight_color if is_hl else NODE_COLOR,
                            line=dict(color="#111827", width=0.8)),
                customdata=custom, text=[geometry.grids[g].name for g in grid_of[idx]],
                name=highlight_label if is_hl else "tokens", legendgroup="hl" if is_hl else "nodes",
                showlegend=vi == 0,
                hovertemplate=("token #%{customdata[0]:d} · grid %{text}<br>"
                               "row %{customdata[1]:d}, col %{customdata[2]:d}<br>degree %{customdata[3]:d}"
                               "<extra></extra>"),
                visible=vi == 0,
            ))
            view_of_trace.append(vi)
    notes = [n_ for n_ in (note,) if n_]
    if hidden_cross:
        notes.append(f"{hidden_cross:,} edges join tokens of different views and are not drawn")
    subtitle = "<br><span style='font-size:11px;color:#6B7280'>" + "; ".join(notes) + "</span>" if notes else ""
    _base_layout(fig, title + subtitle, height, legend=True)
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.01, yanchor="top", font=dict(size=11)),
                      margin=dict(t=96 if subtitle else 56, b=56))
    _view_buttons(fig, view_of_trace, [label for label, _ in views], top=True)
    return fig


# ----------------------------------------------------------------------------------------------------
# Per-method facets: kept tokens, boxes, IoU.


@dataclass
class Panel:
    """One facet of :func:`methods_figure`.

    Attributes:
        label: facet title, e.g. ``"FastV"``; color: its box colour.
        kept: sorted kept token indices, or None for "all tokens" (the unpruned model).
        box: the predicted box in image pixels, or None.
    """

    label: str
    color: str
    kept: np.ndarray | None = None
    box: Box | None = None


def panel_iou(box: Box | None, gt_box: Box | None) -> float | None:
    """IoU of a panel's box with the ground truth: None without a ground truth, 0.0 without a box."""
    if gt_box is None:
        return None
    return float(box_iou(box, gt_box))


def _pruned_colorscale() -> list:
    r, g, b, a = PRUNED_SHADE
    return [[0.0, "rgba(0,0,0,0)"], [0.5, "rgba(0,0,0,0)"], [0.5, f"rgba({r},{g},{b},{a})"],
            [1.0, f"rgba({r},{g},{b},{a})"]]


def _box_shape(box: Box, color: str, k: int, *, dash: str = "solid", width: float = 3.0, name: str | None = None,
               legend: bool = False) -> dict:
    s = _axis_suffix(k)
    x1, y1, x2, y2 = (float(v) for v in box)
    return dict(type="rect", xref=f"x{s}", yref=f"y{s}", x0=x1, y0=y1, x1=x2, y1=y2,
                line=dict(color=color, width=width, dash=dash), fillcolor="rgba(0,0,0,0)",
                name=name, showlegend=legend, legendgroup=name)


def methods_figure(
    image,
    geometry: TokenGeometry,
    panels: Sequence[Panel],
    *,
    gt_box: Box | None = None,
    reference_box: Box | None = None,
    title: str | None = None,
    cols: int = 4,
    facet_height: int | None = None,
) -> go.Figure:
    """One facet per panel: the image with the pruned tokens shaded, the panel's box (solid, its colour), the
    reference box (dotted grey; the vanilla answer's) and the ground truth (dashed green).

    Facet titles give the kept count (``kept / N``) and, with a ground truth, the IoU of the panel's box.
    """
    if not panels:
        raise ValueError("methods_figure needs at least one panel")
    n = geometry.num_tokens
    rows = math.ceil(len(panels) / cols)
    ncols = min(cols, len(panels))
    if facet_height is None:  # about 190 px wide facets: height from the image's aspect ratio
        w_img, h_img = geometry.image_size
        facet_height = int(np.clip(740 / ncols * h_img / w_img + 52, 150, 360))
    titles = []
    for p in panels:
        kept_n = n if p.kept is None else len(p.kept)
        parts = [f"{kept_n:,} / {n:,} tokens"]
        iou = panel_iou(p.box, gt_box)
        if iou is not None:
            parts.append(f"IoU {iou:.2f}")
        elif p.box is None and (reference_box is not None or gt_box is not None):
            parts.append("no box")
        titles.append(f"<b>{p.label}</b><br>" + " · ".join(parts))
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=titles, horizontal_spacing=0.015,
                        vertical_spacing=0.16 / rows)
    uri = image_data_uri(image, max_side=480)
    views = geometry.views()
    _, rows_of, cols_of = geometry.positions()
    view_of_trace: list[int | None] = []
    shapes = []
    legend_done = {"gt": False, "ref": False}
    for i, p in enumerate(panels):
        k = i + 1
        r, c = divmod(i, ncols)
        _add_image(fig, uri, geometry.image_size, k)
        pruned = np.ones(n, dtype=np.float64)
        if p.kept is None:
            pruned[:] = 0.0
        else:
            kept = np.asarray(p.kept, dtype=np.int64)
            if kept.size and (kept.min() < 0 or kept.max() >= n):
                raise ValueError(f"kept indices of {p.label!r} must lie in [0, {n})")
            pruned[kept] = 0.0
        for vi, (_, grid_ids) in enumerate(views):
            for gk in grid_ids:
                g = geometry.grids[gk]
                sl = slice(g.offset, g.offset + g.size)
                xe, ye = geometry.grid_edges(gk)
                custom = np.stack([np.arange(g.offset, g.offset + g.size), rows_of[sl], cols_of[sl]], axis=-1)
                state = np.where(pruned[sl] > 0, "pruned", "kept").reshape(g.rows, g.cols)
                fig.add_trace(go.Heatmap(
                    z=pruned[sl].reshape(g.rows, g.cols), x=xe, y=ye, zmin=0, zmax=1,
                    colorscale=_pruned_colorscale(), showscale=False, text=state, meta=g.name,
                    customdata=custom.reshape(g.rows, g.cols, 3), name=p.label,
                    hovertemplate=(f"{p.label}<br>token #%{{customdata[0]:d}} · grid %{{meta}}<br>"
                                   "row %{customdata[1]:d}, col %{customdata[2]:d} · %{text}<extra></extra>"),
                    visible=vi == 0,
                ), row=r + 1, col=c + 1)
                view_of_trace.append(vi)
        if gt_box is not None:
            shapes.append(_box_shape(gt_box, GT_COLOR, k, dash="dash", width=2.5, name="ground truth",
                                     legend=not legend_done["gt"]))
            legend_done["gt"] = True
        if reference_box is not None and p.kept is not None:
            shapes.append(_box_shape(reference_box, VANILLA_COLOR, k, dash="dot", width=2.0, name="vanilla box",
                                     legend=not legend_done["ref"]))
            legend_done["ref"] = True
        if p.box is not None:
            shapes.append(_box_shape(p.box, p.color, k, width=3.0))
    fig.update_layout(shapes=shapes)
    for ann, p in zip(fig.layout.annotations, panels, strict=False):
        ann.font = dict(size=12, color=p.color if p.kept is not None else _TEXT)
    _base_layout(fig, title, facet_height * rows + (110 if title else 80), legend=any(legend_done.values()))
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.01, yanchor="top", xanchor="left", font=dict(size=11)),
                      margin=dict(t=94 if title else 48, b=36))
    _view_buttons(fig, view_of_trace, [label for label, _ in views])
    return fig


# ----------------------------------------------------------------------------------------------------
# Sweep.


def sweep_figure(
    ratios: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    metric_label: str,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    height: int = 360,
) -> go.Figure:
    """A metric against keep ratio, one line per series (missing values are gaps). The x axis runs from
    the largest keep ratio to the smallest, i.e. towards stronger pruning."""
    ratios = [float(r) for r in ratios]
    fig = go.Figure()
    for name, values in series.items():
        if len(values) != len(ratios):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(ratios)} ratios")
        ys = [None if v is None or not np.isfinite(v) else float(v) for v in values]
        color = (colors or {}).get(name)
        fig.add_trace(go.Scatter(
            x=[r * 100 for r in ratios], y=ys, mode="lines+markers", name=name,
            line=dict(color=color, width=2.5), marker=dict(size=8, color=color),
            hovertemplate=f"{name}<br>keep %{{x:.0f}} %<br>{metric_label}: %{{y:.3f}}<extra></extra>",
        ))
    _base_layout(fig, title, height, legend=True)
    ticks = sorted({r * 100 for r in ratios})
    fig.update_xaxes(title="visual tokens kept (%)", autorange="reversed", tickvals=ticks,
                     ticktext=[f"{t:g}" for t in ticks], showgrid=True, gridcolor="#E5E7EB", zeroline=False)
    fig.update_yaxes(title=metric_label, range=[-0.02, 1.05], showgrid=True, gridcolor="#E5E7EB", zeroline=False)
    fig.update_layout(legend=dict(orientation="v", x=1.01, y=1, xanchor="left"), margin=dict(l=60, r=8, b=50))
    return fig


# ----------------------------------------------------------------------------------------------------
# Bare maps (bias explorer).


def maps_figure(
    maps: Mapping[str, np.ndarray],
    *,
    title: str | None = None,
    value_label: str = "attention",
    colorscale: str = ATTENTION_COLORSCALE,
    log: bool = False,
    normalise: bool = False,
    zrange: tuple[float, float] | None = None,
    height: int = 340,
) -> go.Figure:
    """2-D maps side by side with one colour scale; hover shows map, row, column and value.

    With ``normalise`` each map is coloured by value / its mean ("× uniform": 1 = an even spread), so maps of
    different sizes (a coarse and a fine grid) share a meaningful scale; hover still shows the raw value.
    """
    if not maps:
        raise ValueError("maps_figure needs at least one map")
    arrays = {name: np.asarray(m, dtype=np.float64) for name, m in maps.items()}
    for name, m in arrays.items():
        if m.ndim != 2 or min(m.shape) < 1:
            raise ValueError(f"map {name!r} must be 2-D and non-empty, got shape {m.shape}")
    shown = {name: (m / m.mean() if normalise and m.mean() > 0 else m) for name, m in arrays.items()}
    zmin, zmax = zrange if zrange is not None else value_range(*shown.values(), log=log)
    names = list(arrays)
    widths = [arrays[n].shape[1] / arrays[n].shape[0] for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{n} ({arrays[n].shape[0]}×{arrays[n].shape[1]})"
                                                                  for n in names],
                        column_widths=[w / sum(widths) for w in widths], horizontal_spacing=0.06)
    for i, name in enumerate(names):
        m = arrays[name]
        colour, _ = _color_values(shown[name], log)
        rr, cc = np.indices(m.shape)
        fig.add_trace(go.Heatmap(
            z=colour, customdata=np.stack([rr, cc, m], axis=-1), coloraxis="coloraxis", meta=name,
            hovertemplate=f"%{{meta}}<br>row %{{customdata[0]:d}}, col %{{customdata[1]:d}}<br>{value_label}: "
                          "%{customdata[2]:.4g}<extra></extra>",
        ), row=1, col=i + 1)
        s = _axis_suffix(i + 1)
        fig.update_layout({
            f"xaxis{s}": dict(visible=False, constrain="domain"),
            f"yaxis{s}": dict(autorange="reversed", visible=False, scaleanchor=f"x{s}", constrain="domain"),
        })
    label = "× uniform" if normalise else value_label
    colorbar = dict(title=dict(text=("log₁₀ " if log else "") + label, side="right"), thickness=12, len=0.9)
    if log:
        colorbar.update(_log_ticks(zmin, zmax))
    fig.update_layout(coloraxis=dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=colorbar))
    _base_layout(fig, title, height)
    fig.update_layout(margin=dict(t=76 if title else 36))
    return fig


def marginals(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column marginals (means over columns / rows) of a 2-D map, each normalised to mean 1."""
    m = np.asarray(m, dtype=np.float64)
    rows, cols = m.mean(axis=1), m.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = rows / rows.mean() if rows.mean() > 0 else np.ones_like(rows)
        cols = cols / cols.mean() if cols.mean() > 0 else np.ones_like(cols)
    return rows, cols


def marginals_figure(
    maps: Mapping[str, np.ndarray],
    *,
    colors: Mapping[str, str] | None = None,
    dashes: Mapping[str, str] | None = None,
    title: str | None = None,
    height: int = 340,
) -> go.Figure:
    """Row (top → bottom) and column (left → right) marginals of each map, normalised to mean 1 (1 = uniform),
    against the relative position of the row / column centre, so maps of different sizes line up."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["rows (top → bottom)", "columns (left → right)"],
                        horizontal_spacing=0.1)
    for name, m in maps.items():
        m = np.asarray(m, dtype=np.float64)
        rows, cols = marginals(m)
        color = (colors or {}).get(name)
        dash = (dashes or {}).get(name, "solid")
        for j, (vals, axis) in enumerate(((rows, "row"), (cols, "column"))):
            pos = (np.arange(len(vals)) + 0.5) / len(vals)
            fig.add_trace(go.Scatter(
                x=pos, y=vals, mode="lines+markers" if len(vals) <= 32 else "lines", name=name, legendgroup=name,
                showlegend=j == 0, line=dict(color=color, width=2.2, dash=dash), marker=dict(size=5),
                customdata=np.arange(len(vals)),
                hovertemplate=f"{name}<br>{axis} %{{customdata:d}}<br>× uniform: %{{y:.3f}}<extra></extra>",
            ), row=1, col=j + 1)
    for j in (1, 2):
        fig.update_xaxes(title="relative position", range=[0, 1], showgrid=True, gridcolor="#E5E7EB", row=1, col=j)
        fig.update_yaxes(title="mean attention (× uniform)" if j == 1 else None, showgrid=True,
                         gridcolor="#E5E7EB", zeroline=False, row=1, col=j)
        fig.add_hline(y=1.0, line=dict(color="#9CA3AF", width=1, dash="dash"), row=1, col=j)
    _base_layout(fig, title, height, legend=True)
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.22, yanchor="top"), margin=dict(l=60, b=70))
    return fig


# ----------------------------------------------------------------------------------------------------
# The PNG report (PIL only: no browser, no kaleido, works on a Space).


_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "DejaVuSans.ttf",
)


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
    scale = get_colorscale(colorscale)
    colors = sample_colorscale(scale, list(np.linspace(0, 1, 256)), colortype="tuple")
    return np.clip(np.round(np.asarray(colors) * (255 if max(max(c) for c in colors) <= 1.0 else 1)), 0, 255
                   ).astype(np.uint8)


def _hex_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _overlay(image: Image.Image, geometry: TokenGeometry, colour: np.ndarray, zrange: tuple[float, float],
             colorscale: str, alpha: float = HEATMAP_OPACITY) -> Image.Image:
    """Blend per-token colour values over a display copy of the image (detail view)."""
    index = geometry.raster(0, image.size)
    lo, hi = zrange
    with np.errstate(invalid="ignore"):
        t = np.clip((colour - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    lut = _lut(colorscale)
    rgb = lut[np.nan_to_num(t * 255).astype(np.int64)]
    base = np.asarray(image, dtype=np.float64)
    covered = index >= 0
    tok_rgb = rgb[np.clip(index, 0, None)]
    valid = covered & np.isfinite(colour[np.clip(index, 0, None)])
    out = np.where(valid[..., None], (1 - alpha) * base + alpha * tok_rgb, base)
    return Image.fromarray(np.round(out).astype(np.uint8))


def _shade_pruned(image: Image.Image, geometry: TokenGeometry, kept: np.ndarray | None) -> Image.Image:
    if kept is None:
        return image.copy()
    index = geometry.raster(0, image.size)
    pruned = np.ones(geometry.num_tokens, dtype=bool)
    pruned[np.asarray(kept, dtype=np.int64)] = False
    mask = (index >= 0) & pruned[np.clip(index, 0, None)]
    r, g, b, a = PRUNED_SHADE
    base = np.asarray(image, dtype=np.float64)
    out = np.where(mask[..., None], (1 - a) * base + a * np.array([r, g, b]), base)
    return Image.fromarray(np.round(out).astype(np.uint8))


def _draw_box(draw: ImageDraw.ImageDraw, box: Box, scale: float, color: str, width: int, dash: int = 0) -> None:
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    rgb = _hex_rgb(color)
    if not dash:
        draw.rectangle([x1, y1, x2, y2], outline=rgb, width=width)
        return
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = math.hypot(bx - ax, by - ay)
        steps = max(1, int(length // (2 * dash)))
        for s in range(steps):
            t0, t1 = (2 * s) * dash / max(length, 1e-9), (2 * s + 1) * dash / max(length, 1e-9)
            if t0 >= 1:
                break
            t1 = min(t1, 1.0)
            draw.line([ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1],
                      fill=rgb, width=width)


def _colorbar(width: int, colorscale: str, lo: float, hi: float, label: str, log: bool) -> Image.Image:
    bar = Image.new("RGB", (width, 34), "white")
    grad = _lut(colorscale)[np.linspace(0, 255, width - 20).astype(np.int64)]
    strip = np.repeat(grad[None], 9, axis=0)
    bar.paste(Image.fromarray(strip), (10, 2))
    d = ImageDraw.Draw(bar)
    f = _font(11)
    fmt = (lambda v: f"1e{v:.1f}") if log else _fmt
    d.text((10, 13), fmt(lo), fill=_MUTED, font=f)
    right = fmt(hi)
    d.text((width - 10 - d.textlength(right, font=f), 13), right, fill=_MUTED, font=f)
    d.text(((width - d.textlength(label, font=f)) / 2, 13), label, fill=_MUTED, font=f)
    return bar


def _wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines: list[str] = []
    for para in str(text).split("\n"):
        words, line = para.split(" "), ""
        for w in words:
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
    highlight: np.ndarray | None = None,
    graph_title: str = "hybrid graph",
    tile: int = 300,
    columns: int = 4,
    max_edges: int = 4000,
) -> Image.Image:
    """All panels of an analysis in one PIL image (detail view of multi-grid layouts).

    Arguments:
        heatmaps: (title, [N] colour values, colour scale, (min, max) or None, log, colour-bar label) each,
            drawn over the image like :func:`token_heatmap`.
        edges, kinds: the hybrid graph (thinned like :func:`graph_figure`).
        panels: facets like :func:`methods_figure` (kept tokens shaded, boxes, IoU in the caption).
        highlight: graph nodes drawn in D²Pruner's colour (e.g. the tokens it kept).
        header / footer: text lines above / below the tiles (wrapped).
    """
    disp = _display_copy(image, tile)
    scale = disp.width / geometry.image_size[0]
    tiles: list[tuple[str, Image.Image, Image.Image | None, str]] = []

    plain = disp.copy()
    d = ImageDraw.Draw(plain)
    if reference_box is not None:
        _draw_box(d, reference_box, scale, VANILLA_COLOR, 2, dash=4)
    if gt_box is not None:
        _draw_box(d, gt_box, scale, GT_COLOR, 3, dash=6)
    tiles.append(("input image", plain, None, _TEXT))

    for title, values, cscale, zrange, log, label in heatmaps:
        colour, _ = _color_values(np.asarray(values, dtype=np.float64), log)
        rng = zrange if zrange is not None else value_range(np.asarray(values, dtype=np.float64), log=log)
        tiles.append((title, _overlay(disp, geometry, colour, rng, cscale), _colorbar(disp.width, cscale, *rng,
                      label, log), _TEXT))

    graph = disp.copy()
    dg = ImageDraw.Draw(graph)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    chosen, _ = thin_edges(edges, kinds, max_edges)
    in_view = np.zeros(geometry.num_tokens, dtype=bool)
    in_view[geometry.view_tokens(0)] = True
    centres = geometry.centres() * scale
    kinds_arr = np.asarray(list(kinds))
    for e in chosen:
        i, j = edges[e]
        if not (in_view[i] and in_view[j]) or not np.isfinite(centres[[i, j]]).all():
            continue
        color = _hex_rgb(SEMANTIC_EDGE_COLOR if kinds_arr[e] == "semantic" else SPATIAL_EDGE_COLOR)
        dg.line([*centres[i], *centres[j]], fill=color, width=2)
    rad = max(1.5, min(4.0, 0.18 * disp.width / max(g.cols for g in geometry.grids)))
    marked = np.zeros(geometry.num_tokens, dtype=bool)
    if highlight is not None:
        marked[np.asarray(highlight, dtype=np.int64)] = True
    for t in geometry.view_tokens(0):
        x, y = centres[t]
        if np.isfinite(x) and np.isfinite(y):
            fill = _hex_rgb(METHOD_COLORS["d2pruner"] if marked[t] else NODE_COLOR)
            r_ = rad * (1.25 if marked[t] else 1.0)
            dg.ellipse([x - r_, y - r_, x + r_, y + r_], fill=fill, outline=(17, 24, 39))
    n_sem = int((kinds_arr == "semantic").sum())
    tiles.append((f"{graph_title} · {len(edges) - n_sem:,} spatial + {n_sem:,} semantic edges", graph, None, _TEXT))

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
        kept_n = n if p.kept is None else len(p.kept)
        caption = f"{p.label} · {kept_n}/{n} tokens"
        iou = panel_iou(p.box, gt_box)
        if iou is not None:
            caption += f" · IoU {iou:.2f}"
        tiles.append((caption, img, None, p.color if p.kept is not None else _TEXT))

    pad, cap_h, bar_h = 14, 22, 34
    cell_w = disp.width + pad
    cell_h = cap_h + disp.height + bar_h + pad
    ncols = min(columns, len(tiles))
    nrows = math.ceil(len(tiles) / ncols)
    width = pad + ncols * cell_w
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    body = _font(13)
    head_lines = [line for text in header for line in _wrap(text, body, width - 2 * pad, probe)]
    foot_lines = [line for text in footer for line in _wrap(text, body, width - 2 * pad, probe)]
    line_h = 18
    top = pad + 26 + line_h * len(head_lines) + pad
    height = top + nrows * cell_h + line_h * len(foot_lines) + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    dc = ImageDraw.Draw(canvas)
    dc.text((pad, pad), "D²Pruner lab — analysis report", fill=_TEXT, font=_font(18, bold=True))
    y = pad + 28
    for line in head_lines:
        dc.text((pad, y), line, fill=_TEXT, font=body)
        y += line_h
    cap_font = _font(12, bold=True)
    for i, (caption, img, bar, color) in enumerate(tiles):
        r, c = divmod(i, ncols)
        x0, y0 = pad + c * cell_w, top + r * cell_h
        text = caption
        while dc.textlength(text, font=cap_font) > disp.width and len(text) > 4:
            text = text[:-2]
        if text != caption:
            text = text[:-1] + "…"
        dc.text((x0, y0 + 3), text, fill=_hex_rgb(color) if color.startswith("#") else color, font=cap_font)
        canvas.paste(img, (x0, y0 + cap_h))
        if bar is not None:
            canvas.paste(bar, (x0, y0 + cap_h + img.height))
    y = top + nrows * cell_h
    for line in foot_lines:
        dc.text((pad, y), line, fill=_TEXT, font=body)
        y += line_h
    return canvas
