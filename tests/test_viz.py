"""d2pruner.viz on made-up arrays: geometry (views, the area no token covers), every figure's traces, meta and numbers,
thinning, IoU ("no box" is not 0), readable colour-bar ticks, the PNG report (tiny and extreme images included)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from d2pruner import viz
from d2pruner.ops import GridView
from d2pruner.viz import Panel, TokenGeometry


def grid_regions(rows: int, cols: int, box=(0.0, 0.0, 120.0, 80.0)) -> np.ndarray:
    """Regions of a rows×cols grid tiling ``box``, row-major."""
    x1, y1, x2, y2 = box
    xs = np.linspace(x1, x2, cols + 1)
    ys = np.linspace(y1, y2, rows + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(rows) for c in range(cols)])


@pytest.fixture
def image() -> Image.Image:
    arr = np.zeros((80, 120, 3), dtype=np.uint8)
    arr[:, :60] = (200, 40, 40)
    return Image.fromarray(arr)


@pytest.fixture
def single() -> TokenGeometry:
    """One 4×6 grid over a 120×80 image: 20×20 px cells."""
    return TokenGeometry((GridView("image", 4, 6, 0),), grid_regions(4, 6), (120, 80))


@pytest.fixture
def multi() -> TokenGeometry:
    """LLaVA-NeXT-like: a 2×3 base grid over the whole image, then a 4×6 high-res grid."""
    regions = np.concatenate([grid_regions(2, 3), grid_regions(4, 6)])
    return TokenGeometry((GridView("base", 2, 3, 0), GridView("highres", 4, 6, 6)), regions, (120, 80))


# ---- geometry


def test_geometry_validates_shapes(single):
    with pytest.raises(ValueError, match="regions must be"):
        TokenGeometry((GridView("image", 4, 6, 0),), np.zeros((23, 4)), (120, 80))
    with pytest.raises(ValueError, match="contiguous"):
        TokenGeometry((GridView("a", 2, 2, 0), GridView("b", 2, 2, 5)), np.zeros((8, 4)), (10, 10))
    assert single.num_tokens == 24 and single.shapes == [(4, 6)]


def test_geometry_edges_centres_positions(single):
    xs, ys = single.grid_edges(0)
    assert np.allclose(xs, np.arange(0, 121, 20)) and np.allclose(ys, np.arange(0, 81, 20))
    centres = single.centres()
    assert np.allclose(centres[7], (30, 30))  # row 1, col 1
    g, r, c = single.positions()
    assert (g == 0).all() and r[7] == 1 and c[7] == 1 and r[23] == 3 and c[23] == 5


def test_views_and_raster(single, multi):
    assert [label for label, _ in single.views()] == ["image grid"]
    views = multi.views()
    assert [ids for _, ids in views] == [(1,), (0,)] and views[0][0] == "high-res grid"
    assert multi.view_tokens(0).tolist() == list(range(6, 30))
    idx = multi.raster(0, (12, 8))  # 10 px output pixels: pixel (row 3, col 5) centre (55, 35) -> cell (1, 2)
    assert idx.shape == (8, 12) and idx[3, 5] == 6 + 1 * 6 + 2
    assert multi.raster(1, (12, 8))[3, 5] == 1  # base grid: cell (0, 1)


def test_geometry_from_duck_typed_grids():
    class G:
        def __init__(self, name, rows, cols, offset):
            self.name, self.rows, self.cols, self.offset = name, rows, cols, offset

    geo = TokenGeometry.from_grids([G("image", 2, 2, 0)], grid_regions(2, 2, (0, 0, 10, 10)), (10, 10))
    assert geo.grids == (viz.Grid("image", 2, 2, 0),)


# ---- heatmaps


def test_token_heatmap_traces_and_meta(image, single):
    values = np.arange(24, dtype=float) / 100
    fig = viz.token_heatmap(image, single, values, title="attention", value_label="attention", panel="attention")
    (trace,) = fig.data
    assert np.asarray(trace.z).shape == (4, 6) and np.allclose(np.asarray(trace.z).ravel(), values, rtol=1e-3)
    assert trace.meta == {"grid": "image", "offset": 0, "rows": 4, "cols": 6}  # token = offset + row·cols + col
    assert "attention" in trace.hovertemplate and "image grid" in trace.hovertemplate
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(0.23)
    assert fig.layout.meta == {"panel": "attention", "log": False, "scale": 1.0, "label": "attention"}
    assert len(fig.layout.images) == 1 and fig.layout.images[0].source.startswith("data:image/jpeg;base64,")
    assert fig.layout.yaxis.range == (80, 0)  # y down, like the image
    served = viz.token_heatmap(image, single, values, title="t", image_source="lab/photo/abc")
    assert served.layout.images[0].source == "lab/photo/abc"
    assert fig.layout.modebar.orientation == "v"  # the toolbar never covers the title


def test_token_heatmap_shared_scale_and_log(image, single):
    values = np.linspace(1, 24, 24)
    fig = viz.token_heatmap(image, single, values, title="t", value_scale=2.0, zrange=(0.0, 100.0))
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 100.0)
    assert np.allclose(np.asarray(fig.data[0].z).ravel(), values * 2, rtol=1e-3)
    assert fig.layout.meta["scale"] == 2.0 and "× 2" in fig.data[0].hovertemplate
    logged = viz.token_heatmap(image, single, values, title="t", log=True)
    assert np.allclose(np.asarray(logged.data[0].z).ravel(), np.log10(values), rtol=1e-3)
    assert logged.layout.meta["log"] is True
    with pytest.raises(ValueError, match="shape"):
        viz.token_heatmap(image, single, values[:5], title="t")
    with pytest.raises(ValueError, match="value_scale"):
        viz.token_heatmap(image, single, values, title="t", value_scale=0)


def test_colour_bar_ticks_of_tiny_values_are_distinct():
    for lo, hi in [(1.2e-4, 1.9e-4), (0.0, 3e-5), (0.98, 1.02), (-2.0, 5.0)]:
        ticks = viz.colorbar_ticks(lo, hi)
        assert len(ticks["tickvals"]) >= 2 and len(set(ticks["ticktext"])) == len(ticks["ticktext"])
    assert viz.colorbar_ticks(1.2e-4, 1.9e-4)["ticktext"] == ["0.00012", "0.00014", "0.00016", "0.00018"]
    assert viz.colorbar_ticks(-5.0, -1.0, log=True)["ticktext"][0].startswith("1e")
    fine = viz.colorbar_ticks(-3.2, -3.0, log=True)  # less than two decades: plain numbers
    assert len(set(fine["ticktext"])) == len(fine["ticktext"]) >= 2


def test_token_heatmap_multi_grid_view_buttons(image, multi):
    fig = viz.token_heatmap(image, multi, np.arange(30.0), title="t")
    assert [t.name for t in fig.data] == ["highres", "base"]  # detail view first
    assert [t.visible for t in fig.data] == [True, False]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["high-res grid", "base grid"]
    assert buttons[1].args[0]["visible"] == [False, True]
    assert np.asarray(fig.data[1].z).shape == (2, 3)


def test_the_area_no_token_covers_is_shaded(image):
    """LLaVA-1.5's centre crop of a 120×80 image: a 4×4 grid over x ∈ [20, 100]."""
    crop = TokenGeometry((GridView("image", 4, 4, 0),), grid_regions(4, 4, (20.0, 0.0, 100.0, 80.0)), (120, 80))
    assert crop.outside() == [(0.0, 0.0, 20.0, 80.0), (100.0, 0.0, 120.0, 80.0)]
    for fig in (viz.token_heatmap(image, crop, np.arange(16.0), title="t"),
                viz.facet_figure(image, crop, Panel("FastV", viz.METHOD_COLORS["fastv"], np.arange(4), None))):
        outside = [s for s in fig.layout.shapes if s.name == "outside"]
        assert [(s.x0, s.x1) for s in outside] == [(0.0, 20.0), (100.0, 120.0)]
    full = TokenGeometry((GridView("image", 4, 6, 0),), grid_regions(4, 6), (120, 80))
    assert full.outside() == []


def test_value_range():
    assert viz.value_range(np.array([1.0, 3.0]), np.array([2.0, np.nan, 5.0])) == (1.0, 5.0)
    lo, hi = viz.value_range(np.array([2.0, 2.0]))
    assert lo < 2.0 < hi


# ---- graph


def test_thin_edges_keeps_semantic_first_and_is_deterministic():
    edges = np.array([[i, i + 1] for i in range(100)])
    kinds = ["semantic" if i % 10 == 0 else "spatial" for i in range(100)]
    all_idx, note = viz.thin_edges(edges, kinds, 100)
    assert note is None and len(all_idx) == 100
    idx, note = viz.thin_edges(edges, kinds, 30)
    assert len(idx) == 30 and np.all(np.diff(idx) > 0)
    assert set(range(0, 100, 10)) <= set(idx.tolist())  # all 10 semantic edges survive
    assert "30 of 100 edges" in note and "10 of 10 semantic" in note
    assert np.array_equal(idx, viz.thin_edges(edges, kinds, 30)[0])
    with pytest.raises(ValueError):
        viz.thin_edges(edges, kinds[:5], 10)


def test_graph_figure_edges_nodes_and_highlight(image, single):
    edges = np.array([[0, 1], [0, 6], [1, 7], [3, 20]])
    kinds = ["spatial", "spatial", "spatial", "semantic"]
    fig = viz.graph_figure(image, single, edges, kinds, title="graph", highlight=np.array([0, 20]))
    spatial, semantic, nodes, kept = fig.data
    assert spatial.line.dash == "solid" and semantic.line.dash == "dot"
    assert spatial.line.color != semantic.line.color
    assert len(spatial.x) == 3 * 3 and len(semantic.x) == 3  # one segment + separator per edge
    assert (semantic.x[0], semantic.x[1], semantic.y[1]) == (70, 50, 70)  # token 3 (0, 3) -> token 20 (3, 2)
    assert len(nodes.x) == 22 and len(kept.x) == 2 and kept.name == "kept"
    assert "spatial edges (3)" in spatial.name and "semantic edges (1)" in semantic.name
    assert sorted(np.asarray(kept.customdata).tolist()) == [0, 20] and nodes.meta == {"nodes": True}
    with pytest.raises(ValueError, match="edge indices"):
        viz.graph_figure(image, single, np.array([[0, 99]]), ["spatial"], title="g")


def test_graph_figure_thins_large_graphs_with_a_note(image, single):
    rng = np.random.default_rng(0)
    edges = np.sort(rng.integers(0, 24, size=(500, 2)), axis=1)
    fig = viz.graph_figure(image, single, edges, ["spatial"] * 500, title="graph", max_edges=50)
    assert len(fig.data[0].x) == 50 * 3
    assert "showing 50 of 500 edges" in fig.layout.title.text


def test_graph_figure_multi_grid_views(image, multi):
    edges = np.array([[6, 7], [0, 1], [0, 6]])
    fig = viz.graph_figure(image, multi, edges, ["spatial", "spatial", "semantic"], title="g")
    assert len(fig.layout.updatemenus[0].buttons) == 2
    assert "1 edges join tokens of different views" in fig.layout.title.text


# ---- facets, boxes, IoU


def test_panel_iou_known_boxes():
    assert viz.panel_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert viz.panel_iou(None, (5, 5, 15, 15)) is None  # "no box" is not an IoU of 0
    assert viz.panel_iou((0, 0, 10, 10), None) is None


def test_facet_figure_kept_count_boxes_and_iou(image, single):
    gt = (20.0, 20.0, 60.0, 60.0)
    fastv = Panel("FastV", viz.METHOD_COLORS["fastv"], np.array([0, 5, 7]), (10, 10, 50, 50), "fastv")
    fig = viz.facet_figure(image, single, fastv, gt_box=gt, reference_box=(0, 0, 60, 40), image_source="u")
    iou = 30 * 30 / (40 * 40 + 40 * 40 - 30 * 30)
    assert "FastV" in fig.layout.title.text and "3 / 24 tokens kept" in fig.layout.title.text
    assert f"IoU {iou:.2f}" in fig.layout.title.text and fig.layout.title.font.color == viz.METHOD_COLORS["fastv"]
    assert fig.layout.meta == {"panel": "facet", "method": "fastv", "label": "FastV"}
    pruned = np.asarray(fig.data[0].z).ravel()
    assert pruned.sum() == 21 and pruned[[0, 5, 7]].sum() == 0 and fig.data[0].hoverinfo == "none"
    colours = [s.line.color for s in fig.layout.shapes]
    assert colours.count(viz.GT_COLOR) == 1 and colours.count(viz.VANILLA_COLOR) == 1
    assert colours.count(viz.METHOD_COLORS["fastv"]) == 1
    none = viz.facet_figure(image, single, Panel("DART", "#000000", np.array([1, 2]), None), gt_box=gt)
    assert "no box" in none.layout.title.text and "IoU" not in none.layout.title.text
    vanilla = viz.facet_figure(image, single, Panel("Vanilla", "#4B5563", None, (0, 0, 60, 40)), gt_box=gt,
                               reference_box=(0, 0, 60, 40))
    assert np.asarray(vanilla.data[0].z).sum() == 0 and "24 / 24 tokens kept" in vanilla.layout.title.text
    assert [s.line.color for s in vanilla.layout.shapes].count(viz.VANILLA_COLOR) == 0  # not its own reference
    with pytest.raises(ValueError, match="kept indices"):
        viz.facet_figure(image, single, Panel("x", "#000000", np.array([99])))


def test_step_figure_categories(image, single):
    fig = viz.step_figure(image, single, kept=[1, 2, 3], current=3, excluded=[4, 5], newly_excluded=[5],
                          pivots=[1], title="D²Pruner · step 3")
    z = np.asarray(fig.data[0].z).ravel()
    assert z[3] == 3 and z[1] == 4 and z[2] == 1 and z[4] == z[5] == 2 and (z == 0).sum() == 19
    assert [t.name for t in fig.data[1:]] == list(viz.figures.STEP_CATEGORIES[1:])
    outlined = [s for s in fig.layout.shapes if s.line.color == "#FACC15"]
    assert len(outlined) == 1 and (outlined[0].x0, outlined[0].y0) == (100.0, 0.0)  # token 5: row 0, col 5


# ---- sweep, maps, marginals


def test_sweep_figure():
    fig = viz.sweep_figure([0.75, 0.5, 0.1], {"FastV": [0.9, 0.5, None], "D²Pruner": [1.0, 0.8, 0.4],
                                              "DART": [None, None, None]},
                           metric_label="IoU", colors={"FastV": "#F59E0B"})
    assert [t.name for t in fig.data] == ["FastV (1 of 3: no box)", "D²Pruner"]  # a gap, never a 0
    assert "no box at any ratio: DART" in fig.layout.title.text
    assert list(fig.data[0].x) == [75, 50, 10] and fig.data[0].y[2] is None
    assert fig.data[0].line.color == "#F59E0B" and fig.layout.xaxis.autorange == "reversed"
    with pytest.raises(ValueError, match="values for 3 ratios"):
        viz.sweep_figure([0.75, 0.5, 0.1], {"x": [1.0]}, metric_label="IoU")


def test_maps_figure_normalise_hover_and_equal_panels():
    maps = {"base": np.full((2, 2), 0.25), "highres": np.arange(1.0, 7.0).reshape(2, 3)}
    fig = viz.maps_figure(maps, normalise=True, value_label="attention")
    assert len(fig.data) == 2
    assert np.allclose(np.asarray(fig.data[0].z), 1.0)
    assert np.allclose(np.asarray(fig.data[1].z), np.arange(1.0, 7.0).reshape(2, 3) / 3.5, rtol=1e-3)
    assert np.asarray(fig.data[1].customdata)[1, 2] == 6.0  # raw value on hover
    widths = [fig.layout.xaxis.domain[1] - fig.layout.xaxis.domain[0],
              fig.layout.xaxis2.domain[1] - fig.layout.xaxis2.domain[0]]
    assert widths[0] == pytest.approx(widths[1])  # a coarse grid is drawn as large as a fine one
    assert fig.layout.coloraxis.colorbar.title.text == "× uniform"
    with pytest.raises(ValueError, match="2-D"):
        viz.maps_figure({"x": np.zeros(3)})


def test_marginals_of_a_bottom_heavy_map():
    m = np.outer(np.arange(1.0, 5.0), np.ones(3))  # rows 1, 2, 3, 4
    rows, cols = viz.marginals(m)
    assert np.allclose(rows, np.arange(1.0, 5.0) / 2.5) and np.allclose(cols, 1.0)
    fig = viz.marginals_figure({"prior": m, "other": m.T})
    assert len(fig.data) == 4 and fig.data[0].y[-1] > fig.data[0].y[0]


# ---- PNG report


@pytest.mark.parametrize("size", [(8, 200), (600, 12), (3, 3), (40, 1000)])
def test_report_png_of_tiny_and_extreme_images(size):
    """Narrow, flat and 1:40 images: cells keep their size, colour bars keep their width (no negative lengths)."""
    img = Image.new("RGB", size, (200, 30, 30))
    geo = TokenGeometry((GridView("image", 2, 2, 0),), grid_regions(2, 2, (0, 0, *size)), size)
    png = viz.report_png(img, geo, heatmaps=[("a", np.arange(4.0), viz.ATTENTION_COLORSCALE, None, False, "a")],
                         edges=np.zeros((0, 2)), kinds=[], panels=[Panel("FastV", "#B45309", np.arange(2), None)],
                         gt_box=(0, 0, 1, 1), warning="RANDOM WEIGHTS: a warning", tile=120)
    assert png.width >= 3 * 120 and png.height > 120


def test_report_png_draws_every_panel(image, single):
    values = np.arange(24, dtype=float)
    panels = [Panel("Vanilla", viz.VANILLA_COLOR, None, None),
              Panel("FastV", viz.METHOD_COLORS["fastv"], np.arange(6), (10, 10, 50, 50))]
    png = viz.report_png(
        image, single,
        heatmaps=[("raw attention", values, viz.ATTENTION_COLORSCALE, None, False, "attention"),
                  ("relative", values, viz.RELATIVE_COLORSCALE, (0.0, 50.0), True, "ratio")],
        edges=np.array([[0, 1]]), kinds=["spatial"], panels=panels, gt_box=(20, 20, 60, 60),
        header=["model x"], footer=["FastV: answer"], tile=120, columns=3, highlight=np.array([0]),
    )
    assert png.mode == "RGB" and png.width > 3 * 120
    arr = np.asarray(png).reshape(-1, 3)
    colours = {tuple(c) for c in arr[:: 7]}
    gt = tuple(int(viz.GT_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    fastv = tuple(int(viz.METHOD_COLORS["fastv"][i : i + 2], 16) for i in (1, 3, 5))
    assert gt in {tuple(c) for c in arr} and fastv in {tuple(c) for c in arr}
    assert len(colours) > 50  # heatmaps and photos, not a blank canvas
