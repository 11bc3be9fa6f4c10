"""Plotly figures of one analysis, from arrays only (never a model).

Every function takes numbers — an image, the token geometry, per-token values, index arrays, boxes — and returns a
``plotly.graph_objects.Figure``. The photo goes in as a layout image: a data URI by default (a figure that stands
alone), or any URL through ``image_source`` (the app serves the photo once instead of embedding it in every panel).

Linked views: every trace drawn over the image carries ``meta = {"grid", "offset", "rows", "cols"}`` (heatmaps; the
token under a cell is ``offset + row·cols + col``, so no per-token index is sent) or token indices in ``customdata``
(graph nodes), and every
figure's ``layout.meta`` says what it shows (``{"panel": …, "log": …, "scale": …}``: a heatmap's true value is
``(10**z if log else z) / scale``), so a page script can find the same token in every panel.

Figures:
    token_heatmap      per-token values (attention, prior, relative attention) over the image.
    graph_figure       the hybrid graph over the image; large graphs thinned (``thin_edges``) with a note.
    facet_figure       one method: pruned tokens shaded, its box beside the vanilla and ground-truth boxes.
    step_figure        one method's selection after step s: kept, current pick, excluded, pivots.
    sweep_figure       a metric against keep ratio, one line per method, "no box" as gaps with a count.
    maps_figure        bare 2-D maps side by side at equal size (priors, blank-image attention).
    marginals_figure   row and column marginals of 2-D maps, normalised to mean 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from d2pruner.analysis.scoring import box_score
from d2pruner.viz.geometry import Box, TokenGeometry, image_data_uri
from d2pruner.viz.style import (
    ATTENTION_COLORSCALE,
    FONT_FAMILY,
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
    colorbar_ticks,
    compact,
    indices,
    pixels,
    value_range,
)

OUTSIDE_NOTE = "grey: outside what the model sees"


# ---------------------------------------------------------------------------------------------------- helpers


def _axis_suffix(k: int) -> str:
    return "" if k == 1 else str(k)


def _source(image, image_source: str | None, max_side: int = 640) -> str:
    return image_source if image_source else image_data_uri(image, max_side=max_side)


def _image_axes(size: tuple[int, int], k: int = 1) -> dict:
    """Axes of subplot k in image pixels (y down, 1:1 aspect, hidden, fixed)."""
    w, h = size
    s = _axis_suffix(k)
    return {
        f"xaxis{s}": dict(range=[0, w], visible=False, constrain="domain", showgrid=False, zeroline=False,
                          fixedrange=True),
        f"yaxis{s}": dict(range=[h, 0], visible=False, scaleanchor=f"x{s}", scaleratio=1, constrain="domain",
                          showgrid=False, zeroline=False, fixedrange=True),
    }


def _image(uri: str, size: tuple[int, int], k: int = 1) -> dict:
    s = _axis_suffix(k)
    return dict(source=uri, xref=f"x{s}", yref=f"y{s}", x=0, y=0, sizex=size[0], sizey=size[1], sizing="stretch",
                layer="below", xanchor="left", yanchor="top")


def _title(text: str | None, subtitle: str | None = None) -> dict | None:
    """Title and subtitle, left-aligned, centred in the top margin by plotly itself: an explicit ``y`` / ``yanchor``
    places a two-line title wrongly (its first line is cut at the top of the figure; measured in chromium)."""
    if not text and not subtitle:
        return None
    if not text:
        return dict(text=f"<span style='font-size:12px;color:{MUTED}'>{subtitle}</span>", x=0.01, xanchor="left",
                    pad=dict(l=2))
    full = text if not subtitle else f"{text}<br><span style='font-size:12px;color:{MUTED}'>{subtitle}</span>"
    return dict(text=full, x=0.01, xanchor="left", xref="paper", pad=dict(l=2), font=dict(size=14, color=TEXT))


def _base(title: str | None, height: int, *, legend: bool = False, subtitle: str | None = None,
          panel: dict | None = None) -> dict:
    top = (64 if subtitle else 44) if title else (30 if subtitle else 12)
    return dict(
        title=_title(title, subtitle), height=height, margin=dict(l=6, r=6, t=top, b=8),
        template="none", paper_bgcolor="white", plot_bgcolor="white",
        font=dict(family=FONT_FAMILY, size=12, color=TEXT), showlegend=legend,
        hoverlabel=dict(font=dict(family=FONT_FAMILY, size=12)),
        modebar=dict(orientation="v", bgcolor="rgba(255,255,255,0.7)"),  # beside the plot, never over the title
        meta=panel or {},
    )


def _base_layout(fig: go.Figure, title: str | None, height: int, *, legend: bool = False,
                 subtitle: str | None = None, panel: dict | None = None) -> go.Figure:
    fig.update_layout(_base(title, height, legend=legend, subtitle=subtitle, panel=panel))
    return fig


def _outside_shapes(geometry: TokenGeometry, view: int, k: int = 1, visible: bool = True) -> list[dict]:
    s = _axis_suffix(k)
    r, g, b, a = OUTSIDE_SHADE
    return [dict(type="rect", xref=f"x{s}", yref=f"y{s}", x0=x1, y0=y1, x1=x2, y1=y2, layer="above",
                 line=dict(width=0), fillcolor=f"rgba({r},{g},{b},{a})", visible=visible, name="outside")
            for x1, y1, x2, y2 in geometry.outside(view)]


def _menus(view_of_trace: Sequence[int | None], labels: Sequence[str], shapes_per_view: Sequence[list[dict]],
           *, top: bool = False, active: int = 0) -> list[dict]:
    """Buttons that show one view's traces (None = a trace visible in every view) and its shapes."""
    if len(labels) < 2:
        return []
    buttons = [dict(label=lab, method="update", args=[{"visible": [v is None or v == i for v in view_of_trace]},
                                                      {"shapes": shapes_per_view[i]}])
               for i, lab in enumerate(labels)]
    place = dict(x=1.0, xanchor="right", y=1.0, yanchor="bottom") if top else dict(x=0.0, xanchor="left", y=0.0,
                                                                                   yanchor="top")
    return [dict(type="buttons", direction="right", showactive=True, active=active, buttons=buttons,
                 pad=dict(t=4, b=2, r=0), font=dict(size=11, color=TEXT), bgcolor="#F3F4F6", bordercolor="#9CA3AF",
                 **place)]


def _image_figure(traces: list, geometry: TokenGeometry, uri: str, *, title: str, subtitle: str | None, height: int,
                  panel: dict, view_of_trace: Sequence[int | None], shapes_per_view: Sequence[list[dict]],
                  showlegend: bool = False, top_buttons: bool = False, active: int = 0, **layout) -> go.Figure:
    """A figure over the image, built in one go (plotly validates once: an order of magnitude faster than
    updating a figure step by step)."""
    full = _base(title, height, legend=showlegend, subtitle=subtitle, panel=panel)
    full.update(_image_axes(geometry.image_size))
    full["images"] = [_image(uri, geometry.image_size)]
    full["shapes"] = shapes_per_view[active]
    menus = _menus(view_of_trace, [label for label, _ in geometry.views()], shapes_per_view, top=top_buttons,
                   active=active)
    if menus:
        full["updatemenus"] = menus
        if not top_buttons:
            full["margin"]["b"] = max(40, full["margin"]["b"])
    for key, value in layout.items():
        if key == "margin":
            full["margin"].update(value)
        else:
            full[key] = value
    return go.Figure(data=traces, layout=full)


def _grid_meta(g) -> dict:
    return {"grid": g.name, "offset": g.offset, "rows": g.rows, "cols": g.cols}


def _grid_heatmaps(geometry: TokenGeometry, values: np.ndarray, *, active: int = 0,
                   style: Callable[[object], dict]) -> tuple[list[dict], list[int | None]]:
    """One heatmap trace per grid of every view (``values`` per token, laid out on each grid; the traces of view
    ``active`` visible), and the view of each trace. ``style(grid)`` adds the trace's other attributes."""
    traces, view_of_trace = [], []
    for vi, (_, grid_ids) in enumerate(geometry.views()):
        for k in grid_ids:
            g = geometry.grids[k]
            xe, ye = geometry.grid_edges(k)
            traces.append(dict(type="heatmap", z=values[g.offset : g.offset + g.size].reshape(g.rows, g.cols),
                               x=np.round(xe, 2), y=np.round(ye, 2), meta=_grid_meta(g), visible=vi == active,
                               **style(g)))
            view_of_trace.append(vi)
    return traces, view_of_trace


# ---------------------------------------------------------------------------------------------------- heatmaps


def token_heatmap(
    image,
    geometry: TokenGeometry,
    values: np.ndarray,
    *,
    title: str,
    subtitle: str | None = None,
    value_label: str = "value",
    colorscale: str = ATTENTION_COLORSCALE,
    value_scale: float = 1.0,
    zrange: tuple[float, float] | None = None,
    log: bool = False,
    colorbar_title: str | None = None,
    height: int = 400,
    image_source: str | None = None,
    panel: str = "heatmap",
) -> go.Figure:
    """Per-token values as a heatmap over the image.

    Arguments:
        image: the image (PIL or HxWx3 uint8) the geometry's regions refer to (unused with ``image_source``).
        geometry: the N tokens' grids and regions.
        values: [N] numbers.
        value_scale: colour = values × value_scale (e.g. relative attention × mean prior, to share a range with
            attention); the hover text names the scaled quantity.
        zrange: (min, max) of the colour scale in colour units (log10 units when ``log``); default the data range.
            Pass the same range to several figures to share their scale.
        log: colour by log10 (attention has heavy tails: sinks take most of the mass).
        image_source: the photo's URL (default: a data URI of ``image``).
        panel: what the panel shows (``layout.meta["panel"]``, for linked views).
    Returns:
        a figure with one heatmap trace per grid; multi-grid layouts get view buttons.
    """
    values = np.asarray(values, dtype=np.float64)
    n = geometry.num_tokens
    if values.shape != (n,):
        raise ValueError(f"values must have shape ({n},), got {values.shape}")
    if not np.isfinite(value_scale) or value_scale <= 0:
        raise ValueError(f"value_scale must be a positive number, got {value_scale}")
    colour, _ = color_values(values * value_scale, log)
    zmin, zmax = zrange if zrange is not None else value_range(values * value_scale, log=log)
    views = geometry.views()
    shown = ("log₁₀ " if log else "") + value_label + (f" × {value_scale:.3g}" if value_scale != 1.0 else "")
    traces, view_of_trace = _grid_heatmaps(geometry, compact(colour), style=lambda g: dict(
        coloraxis="coloraxis", opacity=HEATMAP_OPACITY, name=g.name,
        hovertemplate=f"{g.name} grid<br>{shown}: %{{z:.3g}}<extra></extra>"))
    colorbar = dict(title=dict(text=colorbar_title or shown, side="right"), thickness=11, len=0.85,
                    **colorbar_ticks(zmin, zmax, log=log))
    return _image_figure(
        traces, geometry, _source(image, image_source), title=title, subtitle=subtitle, height=height,
        panel={"panel": panel, "log": bool(log), "scale": float(value_scale), "label": value_label},
        view_of_trace=view_of_trace, shapes_per_view=[_outside_shapes(geometry, v) for v in range(len(views))],
        coloraxis=dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=colorbar))


# ---------------------------------------------------------------------------------------------------- the graph


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
    note = (f"showing {len(chosen):,} of {total:,} edges ({len(semantic):,} of {n_sem:,} semantic, "
            f"{len(chosen_spatial):,} of {total - n_sem:,} spatial, sampled uniformly)")
    return chosen, note


def _segments(points: np.ndarray, pairs: np.ndarray) -> tuple[list, list]:
    """x, y lists with None separators drawing one segment per pair (whole pixels: enough for a line)."""
    if len(pairs) == 0:
        return [], []
    a, b = points[pairs[:, 0]], points[pairs[:, 1]]
    xs, ys = [], []
    for (ax, ay), (bx, by) in zip(np.round(a).tolist(), np.round(b).tolist(), strict=True):
        xs += [int(ax), int(bx), None]
        ys += [int(ay), int(by), None]
    return xs, ys


def _node_size(n: int) -> float:
    return 9.0 if n <= 100 else 6.5 if n <= 400 else 4.5 if n <= 1200 else 3.0


def graph_figure(
    image,
    geometry: TokenGeometry,
    edges: np.ndarray,
    kinds: Sequence[str],
    *,
    title: str,
    subtitle: str | None = None,
    highlight: np.ndarray | None = None,
    highlight_label: str = "kept",
    highlight_color: str = METHOD_COLORS["d2pruner"],
    max_edges: int = 2500,
    height: int = 400,
    image_source: str | None = None,
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
    chosen, note = thin_edges(edges, kinds, max_edges)
    kinds_arr = np.asarray(kinds)
    highlighted = np.zeros(n, dtype=bool)
    if highlight is not None:
        highlighted[np.asarray(highlight, dtype=np.int64)] = True

    views = geometry.views()
    view_of_trace: list[int | None] = []
    traces: list[dict] = []
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
            traces.append(dict(
                type="scatter", x=xs, y=ys, mode="lines", line=dict(color=color, width=width, dash=dash),
                name=f"{kind} edges ({total_kind:,})", legendgroup=kind, showlegend=vi == 0,
                hoverinfo="skip", visible=vi == 0,
            ))
            view_of_trace.append(vi)
        for is_hl in (False, True):
            idx = tokens[highlighted[tokens] == is_hl]
            if is_hl and highlight is None:
                continue
            traces.append(dict(
                type="scatter", x=pixels(centres[idx, 0]), y=pixels(centres[idx, 1]), mode="markers",
                marker=dict(size=_node_size(len(tokens)) * (1.15 if is_hl else 1.0),
                            color=highlight_color if is_hl else NODE_COLOR, line=dict(color="#111827", width=0.8)),
                customdata=indices(idx), name=highlight_label if is_hl else "tokens",
                legendgroup="hl" if is_hl else "nodes", showlegend=vi == 0, meta={"nodes": True},
                hovertemplate="token #%{customdata}<extra>" + ("kept" if is_hl else "") + "</extra>",
                visible=vi == 0,
            ))
            view_of_trace.append(vi)
    notes = [n_ for n_ in (note,) if n_]
    if hidden_cross:
        notes.append(f"{hidden_cross:,} edges join tokens of different views and are not drawn")
    sub = "; ".join([s for s in (subtitle, *notes) if s]) or None
    return _image_figure(
        traces, geometry, _source(image, image_source), title=title, subtitle=sub, height=height,
        panel={"panel": "graph"}, view_of_trace=view_of_trace,
        shapes_per_view=[_outside_shapes(geometry, v) for v in range(len(views))], showlegend=True,
        top_buttons=True, legend=dict(orientation="h", x=0, y=-0.01, yanchor="top", font=dict(size=11)),
        margin=dict(b=56))


# ---------------------------------------------------------------------------------------------------- facets


@dataclass
class Panel:
    """One method's facet.

    Attributes:
        label: facet title, e.g. ``"FastV"``; color: its box colour.
        kept: sorted kept token indices, or None for "all tokens" (the unpruned model).
        box: the predicted box in image pixels, or None.
        name: the method's name (``layout.meta``), e.g. ``"fastv"``.
    """

    label: str
    color: str
    kept: np.ndarray | None = None
    box: Box | None = None
    name: str = ""


def panel_iou(box: Box | None, gt_box: Box | None) -> float | None:
    """IoU of a panel's box with the ground truth: None without a ground truth *or without a box* ("no box" is
    not an IoU of 0)."""
    return box_score(box, gt_box).iou


def _pruned_colorscale() -> list:
    r, g, b, a = PRUNED_SHADE
    return [[0.0, "rgba(0,0,0,0)"], [0.5, "rgba(0,0,0,0)"], [0.5, f"rgba({r},{g},{b},{a})"],
            [1.0, f"rgba({r},{g},{b},{a})"]]


def _box_shape(box: Box, color: str, k: int = 1, *, dash: str = "solid", width: float = 3.0,
               name: str | None = None) -> dict:
    s = _axis_suffix(k)
    x1, y1, x2, y2 = (float(v) for v in box)
    return dict(type="rect", xref=f"x{s}", yref=f"y{s}", x0=x1, y0=y1, x1=x2, y1=y2, layer="above",
                line=dict(color=color, width=width, dash=dash), fillcolor="rgba(0,0,0,0)", name=name)


def facet_title(panel: Panel, n: int, gt_box: Box | None, grounding: bool = True) -> tuple[str, str]:
    """(title, subtitle) of a facet: the method, its kept count, its IoU or "no box"."""
    kept_n = n if panel.kept is None else len(panel.kept)
    parts = [f"{kept_n:,} / {n:,} tokens kept"]
    if grounding:
        score = box_score(panel.box, gt_box)
        if score.iou is not None:
            parts.append(f"IoU {score.iou:.2f}")
        elif panel.box is None:
            parts.append("no box")
    return f"<b>{panel.label}</b>", " · ".join(parts)


def facet_figure(
    image,
    geometry: TokenGeometry,
    panel: Panel,
    *,
    gt_box: Box | None = None,
    reference_box: Box | None = None,
    grounding: bool = True,
    height: int = 330,
    image_source: str | None = None,
    model: str | None = None,
) -> go.Figure:
    """One method's kept tokens: the image with the pruned tokens shaded, the method's box (solid, its colour), the
    reference box (dotted grey; the vanilla answer's) and the ground truth (dashed green). The title gives the kept
    count and the box's IoU with the ground truth, or "no box"; ``model`` (the model that produced it) ends the
    subtitle."""
    n = geometry.num_tokens
    pruned = np.ones(n, dtype=np.int8)
    if panel.kept is None:
        pruned[:] = 0
    else:
        kept = np.asarray(panel.kept, dtype=np.int64)
        if kept.size and (kept.min() < 0 or kept.max() >= n):
            raise ValueError(f"kept indices of {panel.label!r} must lie in [0, {n})")
        pruned[kept] = 0
    views = geometry.views()
    traces, view_of_trace = _grid_heatmaps(geometry, pruned, style=lambda g: dict(
        zmin=0, zmax=1, colorscale=_pruned_colorscale(), showscale=False, name=panel.label, hoverinfo="none"))
    boxes = []
    if gt_box is not None:
        boxes.append(_box_shape(gt_box, GT_COLOR, dash="dash", width=2.5, name="ground truth"))
    if reference_box is not None and panel.kept is not None:
        boxes.append(_box_shape(reference_box, VANILLA_COLOR, dash="dot", width=2.0, name="vanilla box"))
    if panel.box is not None:
        boxes.append(_box_shape(panel.box, panel.color, width=3.0, name=panel.label))
    title, subtitle = facet_title(panel, n, gt_box, grounding)
    if model:
        subtitle = f"{subtitle} · {model}"
    fig = _image_figure(
        traces, geometry, _source(image, image_source, 480), title=title, subtitle=subtitle, height=height,
        panel={"panel": "facet", "method": panel.name, "label": panel.label}, view_of_trace=view_of_trace,
        shapes_per_view=[_outside_shapes(geometry, v) + boxes for v in range(len(views))])
    fig.layout.title.font.color = panel.color if panel.kept is not None else TEXT
    return fig


# ---------------------------------------------------------------------------------------------------- steps

#: step-view categories: 0 undecided, 1 kept earlier, 2 excluded, 3 the current pick, 4 a pivot
STEP_CATEGORIES = ("not yet decided", "kept earlier", "excluded", "this step's pick", "pivot")


def step_figure(
    image,
    geometry: TokenGeometry,
    *,
    kept: Sequence[int],
    current: int,
    excluded: Sequence[int] = (),
    newly_excluded: Sequence[int] = (),
    pivots: Sequence[int] = (),
    color: str = METHOD_COLORS["d2pruner"],
    title: str,
    subtitle: str | None = None,
    height: int = 380,
    image_source: str | None = None,
) -> go.Figure:
    """A selection after one step: tokens kept earlier (the method's colour), pivots (darker), this step's pick
    (yellow), excluded tokens (grey; this step's newly excluded ones outlined)."""
    n = geometry.num_tokens
    state = np.zeros(n, dtype=np.int8)
    state[np.asarray(list(excluded), dtype=np.int64)] = 2
    state[np.asarray(list(kept), dtype=np.int64)] = 1
    state[np.asarray(list(pivots), dtype=np.int64)] = 4
    state[int(current)] = 3
    colors = ["rgba(0,0,0,0)", _rgba(color, 0.78), "rgba(75,85,99,0.85)", "rgba(250,204,21,0.95)", _rgba(color, 1.0)]
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / 5, c], [(i + 1) / 5, c]]
    views = geometry.views()
    current_view = int(geometry.view_of_token()[int(current)])
    traces, view_of_trace = _grid_heatmaps(geometry, state, active=current_view, style=lambda g: dict(
        zmin=-0.5, zmax=4.5, colorscale=scale, showscale=False, hoverinfo="none", opacity=0.9, name="selection"))
    shapes = [_outside_shapes(geometry, v) for v in range(len(views))]
    regions = geometry.regions
    for t in newly_excluded:
        x1, y1, x2, y2 = regions[int(t)]
        if np.isfinite(x1):
            outline = dict(type="rect", x0=x1, y0=y1, x1=x2, y1=y2, line=dict(color="#FACC15", width=1.5),
                           fillcolor="rgba(0,0,0,0)", layer="above")
            shapes[int(geometry.view_of_token()[int(t)])].append(outline)
    for i, (lab, c) in enumerate(zip(STEP_CATEGORIES[1:], colors[1:], strict=True)):  # a legend of the colours
        traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name=lab, showlegend=True,
                           marker=dict(size=11, symbol="square", color=c), hoverinfo="skip", legendrank=i))
        view_of_trace.append(None)
    return _image_figure(
        traces, geometry, _source(image, image_source), title=title, subtitle=subtitle, height=height,
        panel={"panel": "steps"}, view_of_trace=view_of_trace, shapes_per_view=shapes, showlegend=True,
        top_buttons=True, active=current_view, margin=dict(b=50),
        legend=dict(orientation="h", x=0, y=-0.01, yanchor="top", font=dict(size=11)))


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# ---------------------------------------------------------------------------------------------------- sweep


def sweep_figure(
    ratios: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    metric_label: str,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    height: int = 360,
) -> go.Figure:
    """A metric against keep ratio, one line per series. Missing values ("no box") are gaps, never 0; a series
    with no value at all is left out and named under the title; the legend counts the missing points. The x axis
    runs from the largest keep ratio to the smallest, i.e. towards stronger pruning."""
    ratios = [float(r) for r in ratios]
    fig = go.Figure()
    empty = []
    for name, values in series.items():
        if len(values) != len(ratios):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(ratios)} ratios")
        ys = [None if v is None or not np.isfinite(v) else float(v) for v in values]
        missing = sum(v is None for v in ys)
        if missing == len(ys):
            empty.append(name)
            continue
        color = (colors or {}).get(name)
        legend = name if not missing else f"{name} ({missing} of {len(ys)}: no box)"
        fig.add_trace(go.Scatter(
            x=[r * 100 for r in ratios], y=ys, mode="lines+markers", name=legend, connectgaps=False,
            line=dict(color=color, width=2.5), marker=dict(size=8, color=color),
            hovertemplate=f"{name}<br>keep %{{x:.0f}} %<br>{metric_label}: %{{y:.3f}}<extra></extra>",
        ))
    sub = f"no box at any ratio: {', '.join(empty)}" if empty else None
    _base_layout(fig, title, height, legend=True, subtitle=sub, panel={"panel": "sweep"})
    ticks = sorted({r * 100 for r in ratios})
    fig.update_xaxes(title="visual tokens kept (%)", autorange="reversed", tickvals=ticks,
                     ticktext=[f"{t:g}" for t in ticks], showgrid=True, gridcolor="#E5E7EB", zeroline=False)
    fig.update_yaxes(title=metric_label, range=[-0.02, 1.05], showgrid=True, gridcolor="#E5E7EB", zeroline=False)
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"), margin=dict(l=60, r=8, b=90))
    return fig


# ---------------------------------------------------------------------------------------------------- bare maps


def maps_figure(
    maps: Mapping[str, np.ndarray],
    *,
    title: str | None = None,
    subtitle: str | None = None,
    value_label: str = "attention",
    colorscale: str = ATTENTION_COLORSCALE,
    log: bool = False,
    normalise: bool = False,
    zrange: tuple[float, float] | None = None,
    height: int = 360,
) -> go.Figure:
    """2-D maps side by side, each at the same size whatever its grid (a 24×24 base grid is as large as a 48×72
    high-res grid), with one colour scale; hover shows map, row, column and value.

    With ``normalise`` each map is coloured by value / its mean ("× uniform": 1 = an even spread), so maps of
    different sizes share a meaningful scale; hover still shows the raw value.
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
    fig = make_subplots(rows=1, cols=len(names), horizontal_spacing=0.08,
                        subplot_titles=[f"{n} ({arrays[n].shape[0]}×{arrays[n].shape[1]})" for n in names])
    for i, name in enumerate(names):
        m = arrays[name]
        colour, _ = color_values(shown[name], log)
        rows, cols = m.shape
        fig.add_trace(go.Heatmap(
            z=compact(colour), x0=0.5, dx=1.0, y0=0.5, dy=1.0, customdata=compact(m), coloraxis="coloraxis",
            meta=name, hovertemplate=f"%{{meta}}<br>row %{{y:.0f}}, col %{{x:.0f}}<br>{value_label}: "
                                     "%{customdata:.4g}<extra></extra>",
        ), row=1, col=i + 1)
        s = _axis_suffix(i + 1)
        # every map fills the same square-ish box: its aspect is kept, its size is not the grid's
        fig.update_layout({
            f"xaxis{s}": dict(visible=False, range=[0, cols], constrain="domain", fixedrange=True),
            f"yaxis{s}": dict(visible=False, range=[rows, 0], scaleanchor=f"x{s}", scaleratio=1,
                              constrain="domain", fixedrange=True),
        })
    label = "× uniform" if normalise else value_label
    colorbar = dict(title=dict(text=("log₁₀ " if log else "") + label, side="right"), thickness=11, len=0.85,
                    **colorbar_ticks(zmin, zmax, log=log))
    fig.update_layout(coloraxis=dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=colorbar))
    _base_layout(fig, title, height, subtitle=subtitle, panel={"panel": "maps"})
    fig.update_layout(margin=dict(t=(86 if subtitle else 70) if title else 36))
    for ann in fig.layout.annotations:
        ann.font = dict(size=12, color=TEXT)
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
    height: int = 360,
) -> go.Figure:
    """Row (top → bottom) and column (left → right) marginals of each map, normalised to mean 1 (1 = uniform),
    against the relative position of the row / column centre, so maps of different sizes line up."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["rows (top → bottom)", "columns (left → right)"],
                        horizontal_spacing=0.12)
    for name, m in maps.items():
        rows, cols = marginals(np.asarray(m, dtype=np.float64))
        color = (colors or {}).get(name)
        dash = (dashes or {}).get(name, "solid")
        for j, (vals, axis) in enumerate(((rows, "row"), (cols, "column"))):
            pos = (np.arange(len(vals)) + 0.5) / len(vals)
            fig.add_trace(go.Scatter(
                x=np.round(pos, 4), y=compact(vals), mode="lines+markers" if len(vals) <= 32 else "lines", name=name,
                legendgroup=name, showlegend=j == 0, line=dict(color=color, width=2.2, dash=dash),
                marker=dict(size=5), customdata=np.arange(len(vals)),
                hovertemplate=f"{name}<br>{axis} %{{customdata:d}}<br>× uniform: %{{y:.3f}}<extra></extra>",
            ), row=1, col=j + 1)
    for j in (1, 2):
        fig.update_xaxes(title="relative position", range=[0, 1], showgrid=True, gridcolor="#E5E7EB", row=1, col=j)
        fig.update_yaxes(title="mean attention (× uniform)" if j == 1 else None, showgrid=True,
                         gridcolor="#E5E7EB", zeroline=False, row=1, col=j)
        fig.add_hline(y=1.0, line=dict(color="#6B7280", width=1, dash="dash"), row=1, col=j)
    _base_layout(fig, title, height, legend=True, panel={"panel": "marginals"})
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"), margin=dict(l=60, t=70, b=80))
    for ann in fig.layout.annotations:
        ann.font = dict(size=12, color=TEXT)
    return fig
