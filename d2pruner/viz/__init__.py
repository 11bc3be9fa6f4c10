"""Figures of one analysis, from arrays only (never a model) — one module per renderer.

* :mod:`d2pruner.viz.geometry` — where the N tokens look in the image (grids, regions, views, the area no token
  covers), and the photo (display copy, JPEG, data URI). Shared by both renderers.
* :mod:`d2pruner.viz.style` — method names and colours, colour scales, ranges, readable colour-bar ticks.
* :mod:`d2pruner.viz.figures` — plotly figures for the app (and notebooks): heatmaps, the graph, one facet per method,
  the selection step by step, the sweep, bare maps and marginals.
* :mod:`d2pruner.viz.report` — the PNG report (PIL only: no browser, no kaleido).

Nothing here runs or imports a model or torch, so the figures are unit-testable on made-up arrays.
"""

from d2pruner.viz.figures import (
    Panel,
    facet_figure,
    facet_title,
    graph_figure,
    maps_figure,
    marginals,
    marginals_figure,
    panel_iou,
    step_figure,
    sweep_figure,
    thin_edges,
    token_heatmap,
)
from d2pruner.viz.geometry import Grid, TokenGeometry, display_copy, image_data_uri, photo_jpeg
from d2pruner.viz.report import report_png
from d2pruner.viz.style import (
    ATTENTION_COLORSCALE,
    GT_COLOR,
    METHOD_COLORS,
    METHOD_LABELS,
    RELATIVE_COLORSCALE,
    SEMANTIC_EDGE_COLOR,
    SPATIAL_EDGE_COLOR,
    VANILLA_COLOR,
    colorbar_ticks,
    method_color,
    value_range,
)

__all__ = [
    "ATTENTION_COLORSCALE",
    "GT_COLOR",
    "METHOD_COLORS",
    "METHOD_LABELS",
    "RELATIVE_COLORSCALE",
    "SEMANTIC_EDGE_COLOR",
    "SPATIAL_EDGE_COLOR",
    "VANILLA_COLOR",
    "Grid",
    "Panel",
    "TokenGeometry",
    "colorbar_ticks",
    "display_copy",
    "facet_figure",
    "facet_title",
    "graph_figure",
    "image_data_uri",
    "maps_figure",
    "marginals",
    "marginals_figure",
    "method_color",
    "panel_iou",
    "photo_jpeg",
    "report_png",
    "step_figure",
    "sweep_figure",
    "thin_edges",
    "token_heatmap",
    "value_range",
]
