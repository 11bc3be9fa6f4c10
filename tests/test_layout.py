"""Token → region layouts against the real transformers 5.23 image processors and feature-packing code.

The strongest checks are pixel-exact: an image whose pixels encode their own (x, y) goes through the real
image processor with nearest-neighbour resampling; every pixel a token's patch receives must come from
inside that token's region. For LLaVA-NeXT the token → feature-cell order comes from the real
``pack_image_features``; for InternVL from the real ``pixel_shuffle``; for Qwen2.5-VL from ``patchify``.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from d2pruner.families import family_named
from d2pruner.families.internvl import internvl_layout, internvl_tile_grid
from d2pruner.families.llava import llava_layout
from d2pruner.families.llava_next import GRID_PINPOINTS as LLAVA_NEXT_GRID_PINPOINTS
from d2pruner.families.llava_next import llava_next_layout, select_best_resolution
from d2pruner.families.qwen2_5_vl import MAX_PIXELS as QWEN2_5_VL_MAX_PIXELS
from d2pruner.families.qwen2_5_vl import MIN_PIXELS as QWEN2_5_VL_MIN_PIXELS
from d2pruner.families.qwen2_5_vl import qwen2_5_vl_layout, smart_resize
from d2pruner.geometry import VisualLayout
from d2pruner.ops import GridView

#: what each family's layout reads from the model (the checkpoints' values)
_MODEL = SimpleNamespace(config=SimpleNamespace(
    vision_config=SimpleNamespace(patch_size=14, image_size=448), downsample_ratio=0.5))


def layout_from_processor(family, size, processor):
    """The family's layout with its geometry read from a live image processor (and the checkpoints' model)."""
    return family_named(family).layout(size, processor, _MODEL)


def tile_arrangement(layout):
    return family_named(layout.family).tile_arrangement(layout)


def paint(layout, values, out_size=None, view=0):
    """Per-token ``values`` [num_tokens] painted on the image through the app's raster (NaN where unseen)."""
    from d2pruner.viz import TokenGeometry

    grids, offset = [], 0
    for g in layout.grids:
        grids.append(GridView(g.name, g.rows, g.cols, offset))
        offset += g.rows * g.cols
    geometry = TokenGeometry(tuple(grids), layout.regions[layout.grid_tokens], layout.image_size)
    index = geometry.raster(view, out_size or layout.image_size)
    per_candidate = np.asarray(values, dtype=np.float64)[layout.grid_tokens]
    return np.where(index >= 0, per_candidate[np.clip(index, 0, None)], np.nan)

transformers = pytest.importorskip("transformers")
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution  # noqa: E402
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (  # noqa: E402
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)
from transformers.models.internvl.modeling_internvl import InternVLModel  # noqa: E402
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil  # noqa: E402
from transformers.models.llava_next.image_processing_pil_llava_next import (  # noqa: E402
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel  # noqa: E402
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # noqa: E402
    smart_resize as hf_smart_resize,
)

NEAREST = 0  # PILImageResampling.NEAREST
RAW = {"do_rescale": False, "do_normalize": False, "resample": NEAREST}
PINPOINTS = [list(p) for p in LLAVA_NEXT_GRID_PINPOINTS]

# Checkpoint-like processors (llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-*-hf, Qwen/Qwen2.5-VL-*-Instruct,
# OpenGVLab/InternVL3-*-hf with InternVLProcessor's crop_to_patches=True), with raw pixels + nearest.
LLAVA = LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, **RAW)
LLAVA_PAD = LlavaImageProcessorPil(
    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True, **RAW
)
LLAVA_NEXT = LlavaNextImageProcessorPil(
    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=PINPOINTS, **RAW
)
QWEN = Qwen2VLImageProcessorPil(min_pixels=QWEN2_5_VL_MIN_PIXELS, max_pixels=QWEN2_5_VL_MAX_PIXELS, **RAW)
INTERNVL = GotOcr2ImageProcessorPil(
    size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=12, **RAW
)

# (width, height); every side < 2048 so the pixel code below is unambiguous.
PIXEL_SIZES = [
    (1, 1),
    (2, 1),
    (1, 3),
    (5, 2),
    (37, 500),
    (500, 37),
    (640, 480),
    (480, 640),
    (333, 335),
    (336, 336),
    (337, 1000),
    (1000, 200),
    (200, 1000),
    (1200, 800),
    (190, 1),
    (1, 190),
    (1023, 767),
    (2000, 15),
]
# Count-only sizes (no image is built): large and extreme.
COUNT_SIZES = [
    *PIXEL_SIZES,
    (4000, 3000),
    (3000, 4000),
    (8192, 41),
    (41, 8192),
    (6000, 6000),
    (12000, 61),
    (1, 200),
    (9, 1000),
    (671, 337),
    (672, 336),
    (1008, 336),
    (100000, 1000),
]


# ---------------------------------------------------------------------------------------------------
# helpers


def coded_image(width: int, height: int) -> Image.Image:
    """R = x mod 256, G = y mod 256, B = 128 + 8·(x // 256) + y // 256 (B ≥ 128 marks a real pixel)."""
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    rgb = np.stack([x % 256, y % 256, 128 + 8 * (x // 256) + y // 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def decode(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[3, ...] processed pixels → original (x, y) of the real pixels (padding dropped)."""
    r, g, b = (block[i].astype(np.int64).reshape(-1) for i in range(3))
    real = b >= 128
    b = b[real] - 128
    return r[real] + 256 * (b // 8), g[real] + 256 * (b % 8)


def assert_inside(layout: VisualLayout, tokens: np.ndarray, blocks: np.ndarray) -> int:
    """Every real pixel of ``blocks[k]`` ([K, 3, P] processed pixels) intersects ``regions[tokens[k]]``.

    Returns the number of real pixels checked.
    """
    blocks = blocks.astype(np.int64)
    r, g, b = blocks[:, 0], blocks[:, 1], blocks[:, 2]
    real = b >= 128
    xs = r + 256 * ((b - 128) // 8)
    ys = g + 256 * ((b - 128) % 8)
    reg = layout.regions[np.asarray(tokens)]  # [K, 4]
    sees = real.any(axis=1)
    assert np.isfinite(reg[sees]).all(), "a token sees real pixels but has no region"
    eps = 1e-6
    x1, y1, x2, y2 = (reg[:, i : i + 1] for i in range(4))
    inside = (xs < x2 + eps) & (xs + 1 > x1 - eps) & (ys < y2 + eps) & (ys + 1 > y1 - eps)
    bad = real & ~inside
    assert not bad.any(), f"tokens {np.asarray(tokens)[bad.any(axis=1)][:5]} see pixels outside their region"
    return int(real.sum())


def check_tiling(layout: VisualLayout) -> None:
    """Per grid: regions form a product of disjoint contiguous column / row intervals; area adds up."""
    w, h = layout.image_size
    assert layout.regions.shape == (layout.num_tokens, 4)
    fin = np.isfinite(layout.regions).all(axis=1)
    assert np.array_equal(np.isfinite(layout.regions).any(axis=1), fin)
    r = layout.regions[fin]
    assert np.all(r[:, 0] >= 0) and np.all(r[:, 1] >= 0) and np.all(r[:, 2] <= w) and np.all(r[:, 3] <= h)
    assert np.all(r[:, 2] > r[:, 0]) and np.all(r[:, 3] > r[:, 1])
    seen = np.concatenate([g.token_indices().reshape(-1) for g in layout.grids] + [layout.newline_tokens])
    assert np.array_equal(np.sort(seen), np.arange(layout.num_tokens)), "grids must partition the tokens"
    assert np.array_equal(
        layout.grid_tokens, np.sort(np.concatenate([g.token_indices().reshape(-1) for g in layout.grids]))
    )
    assert np.all(np.isnan(layout.regions[layout.newline_tokens]))
    for g in layout.grids:
        reg = layout.regions[g.token_indices()]  # [rows, cols, 4]
        ok = np.isfinite(reg[..., 0])
        if not ok.any():  # e.g. LLaVA-NeXT keeps 0 high-res rows for a 190×1 image (as the processor counts)
            assert all(np.isnan(g.box))
            continue
        # x edges depend on the column only, y edges on the row only
        for k, axis in ((0, 0), (2, 0), (1, 1), (3, 1)):
            v = np.where(ok, reg[..., k], -np.inf)
            w_ = np.where(ok, reg[..., k], np.inf)
            spread = np.where(ok.any(axis=axis), v.max(axis=axis) - w_.min(axis=axis), 0.0)
            assert np.all(spread < 1e-9), (g.name, k)
        cols = [
            (np.nanmin(np.where(ok[:, c], reg[:, c, 0], np.nan)), np.nanmax(np.where(ok[:, c], reg[:, c, 2], np.nan)))
            for c in range(g.cols)
            if ok[:, c].any()
        ]
        rows = [
            (
                np.nanmin(np.where(ok[r_, :], reg[r_, :, 1], np.nan)),
                np.nanmax(np.where(ok[r_, :], reg[r_, :, 3], np.nan)),
            )
            for r_ in range(g.rows)
            if ok[r_, :].any()
        ]
        for (a1, a2), (b1, _b2) in itertools.pairwise(cols):
            assert a2 == pytest.approx(b1, abs=1e-9) and a1 < a2
        for (a1, a2), (b1, _b2) in itertools.pairwise(rows):
            assert a2 == pytest.approx(b1, abs=1e-9) and a1 < a2
        # occupied cells form a full rectangle → sum of areas == area of the union box, no overlaps
        assert ok.sum() == len(cols) * len(rows)
        bx1, by1, bx2, by2 = g.box
        areas = (reg[..., 2] - reg[..., 0]) * (reg[..., 3] - reg[..., 1])
        assert np.nansum(areas) == pytest.approx((bx2 - bx1) * (by2 - by1), rel=1e-9)


def brute_no_overlap(layout: VisualLayout, grid: str, sample: int = 300) -> None:
    reg = layout.regions[layout.grid(grid).token_indices().reshape(-1)]
    reg = reg[np.isfinite(reg[:, 0])][:sample]
    ix = np.minimum(reg[:, None, 2], reg[None, :, 2]) - np.maximum(reg[:, None, 0], reg[None, :, 0])
    iy = np.minimum(reg[:, None, 3], reg[None, :, 3]) - np.maximum(reg[:, None, 1], reg[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    np.fill_diagonal(inter, 0)
    assert inter.max() < 1e-9


def full_image(layout: VisualLayout, grid: str) -> None:
    w, h = layout.image_size
    assert layout.grid(grid).box == pytest.approx((0.0, 0.0, float(w), float(h)), abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# processor arithmetic


@pytest.mark.parametrize("size", COUNT_SIZES)
def test_helpers_match_transformers(size):
    w, h = size
    assert select_best_resolution((h, w), PINPOINTS) == tuple(hf_select_best_resolution((h, w), PINPOINTS))
    for lo, hi in ((1, 12), (1, 6), (2, 12), (1, 40)):
        assert internvl_tile_grid((w, h), 448, lo, hi) == get_optimal_tiled_canvas((h, w), (448, 448), lo, hi)
    if max(w, h) / min(w, h) <= 200:
        for mn, mx in ((3136, 12845056), (56 * 56, 28 * 28 * 1280), (256 * 28 * 28, 1280 * 28 * 28)):
            assert smart_resize(h, w, 28, mn, mx) == hf_smart_resize(h, w, 28, mn, mx)
    else:
        with pytest.raises(ValueError):
            smart_resize(h, w)


def _next_processor() -> LlavaNextProcessor:
    proc = object.__new__(LlavaNextProcessor)  # no tokenizer needed for the feature count
    proc.image_processor = LLAVA_NEXT
    proc.patch_size = 14
    proc.num_additional_image_tokens = 1
    proc.vision_feature_select_strategy = "default"
    return proc


@pytest.mark.parametrize("size", COUNT_SIZES)
def test_token_counts_match_processors(size):
    w, h = size
    nxt = llava_next_layout(size)
    assert nxt.num_tokens == _next_processor()._get_number_of_features(h, w, 336, 336) - 1
    assert llava_layout(size).num_tokens == 576
    it = internvl_layout(size)
    assert it.num_tokens == 256 * INTERNVL.get_number_of_image_patches(h, w)
    if max(w, h) / min(w, h) <= 200:
        q = qwen2_5_vl_layout(size)
        assert q.num_tokens == QWEN.get_number_of_image_patches(h, w) // 4
    else:
        with pytest.raises(ValueError):
            qwen2_5_vl_layout(size)


@pytest.mark.parametrize("size", COUNT_SIZES)
def test_tiling_invariants(size):
    w, h = size
    layouts = [llava_layout(size), llava_layout(size, do_pad=True), llava_next_layout(size), internvl_layout(size)]
    if max(w, h) / min(w, h) <= 200:
        layouts.append(qwen2_5_vl_layout(size))
    for lay in layouts:
        check_tiling(lay)
    lcrop, lpad, nxt, it = layouts[:4]
    # LLaVA crop: the square of side min(w, h) (up to int() rounding of the long side) in the centre
    s = min(w, h)
    bx1, by1, bx2, by2 = lcrop.grid("image").box
    assert bx2 - bx1 == pytest.approx(s, rel=0.01, abs=1e-9) and by2 - by1 == pytest.approx(s, rel=0.01, abs=1e-9)
    assert (bx1 + bx2) / 2 == pytest.approx(w / 2, abs=max(1.0, s * 0.01))
    full_image(lpad, "image")
    full_image(nxt, "base")
    # NeXT high-res: unpadding keeps (almost) the whole image; at most one feature row / col per side is lost
    hx1, hy1, hx2, hy2 = nxt.grid("highres").box
    # (extremely thin images round to zero kept feature rows, exactly as the processor counts)
    hi = nxt.grid("highres")
    assert hi.rows * hi.cols > 0 or max(w, h) / min(w, h) > 24
    if hi.rows * hi.cols > 0:
        assert 0 <= hx1 <= 14 * w / nxt.processed_size[0] + 1e-9 and 0 <= hy1 <= 14 * h / nxt.processed_size[1] + 1e-9
        assert w - hx2 <= 14 * w / nxt.processed_size[0] + 1e-9 and h - hy2 <= 14 * h / nxt.processed_size[1] + 1e-9
    # InternVL: tiles cover the image exactly once; thumbnail covers it all
    names = [g.name for g in it.grids]
    if len(names) > 1:
        assert names[-1] == "thumbnail"
        full_image(it, "thumbnail")
    tile_area = sum((g.box[2] - g.box[0]) * (g.box[3] - g.box[1]) for g in it.detail_grids)
    assert tile_area == pytest.approx(w * h, rel=1e-9)
    if max(w, h) / min(w, h) <= 200:
        full_image(layouts[4], "image")


def test_brute_force_overlap_sample():
    for lay in (llava_layout((640, 480)), qwen2_5_vl_layout((640, 480)), internvl_layout((1000, 300))):
        for g in lay.grids:
            brute_no_overlap(lay, g.name)
    nxt = llava_next_layout((500, 300))
    brute_no_overlap(nxt, "highres", sample=2000)


# ---------------------------------------------------------------------------------------------------
# pixel-exact checks through the real processors


@pytest.mark.parametrize("size", PIXEL_SIZES)
def test_llava_pixels(size):
    img = coded_image(*size)
    for proc, lay in ((LLAVA, llava_layout(size)), (LLAVA_PAD, llava_layout(size, do_pad=True))):
        pv = proc(img, return_tensors="np")["pixel_values"][0]
        assert pv.shape == (3, 336, 336)
        assert lay.frame_size == (336, 336) and lay.num_tokens == 576
        blocks = pv.reshape(3, 24, 14, 24, 14).transpose(1, 3, 0, 2, 4).reshape(576, 3, 196)
        assert assert_inside(lay, lay.grid("image").token_indices().reshape(-1), blocks) > 0


def _pack_next(size, n_tiles_hw):
    """Run the real ``pack_image_features`` on features that carry their own (tile, row, col) codes."""
    w, h = size
    nth, ntw = n_tiles_hw
    feats = torch.zeros(1 + nth * ntw, 576, 3)
    rr, cc = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    feats[0, :, 0] = -2  # base tile
    feats[0, :, 1] = rr.reshape(-1).float()
    feats[0, :, 2] = cc.reshape(-1).float()
    for t in range(nth * ntw):
        feats[1 + t, :, 0] = t
        feats[1 + t, :, 1] = rr.reshape(-1).float()
        feats[1 + t, :, 2] = cc.reshape(-1).float()
    fake = SimpleNamespace(
        config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=336, patch_size=14), image_grid_pinpoints=PINPOINTS
        )
    )
    packed, _ = LlavaNextModel.pack_image_features(
        fake, [feats], torch.tensor([[h, w]]), "default", image_newline=torch.full((3,), -1.0)
    )
    return packed[0].numpy()


@pytest.mark.parametrize("size", PIXEL_SIZES)
def test_llava_next_pixels_and_packing(size):
    w, h = size
    out = LLAVA_NEXT(coded_image(*size), return_tensors="np")
    pv = out["pixel_values"][0]
    assert tuple(out["image_sizes"][0]) == (h, w)
    lay = llava_next_layout(size)
    best_h, best_w = select_best_resolution((h, w), PINPOINTS)
    nth, ntw = best_h // 336, best_w // 336
    assert pv.shape[0] == 1 + nth * ntw == 1 + len(lay.tiles)
    packed = _pack_next(size, (nth, ntw))
    assert packed.shape[0] == lay.num_tokens
    # newline tokens exactly where the layout says
    assert np.array_equal(np.flatnonzero(packed[:, 0] == -1), lay.newline_tokens)
    assert np.all(packed[:576, 0] == -2) and np.all(packed[576:, 0] != -2)  # base grid first
    tokens = np.flatnonzero(packed[:, 0] != -1)
    t, r, c = (packed[tokens, i].astype(int) for i in range(3))
    tile = np.where(t == -2, 0, t + 1)[:, None, None, None]
    rows = (r[:, None] * 14 + np.arange(14))[:, None, :, None]
    cols = (c[:, None] * 14 + np.arange(14))[:, None, None, :]
    blocks = pv[tile, np.arange(3)[None, :, None, None], rows, cols]
    assert assert_inside(lay, tokens, blocks.reshape(len(tokens), 3, 196)) > 0
    # padding-only tokens have no region; tokens seeing real pixels have one (checked in assert_inside)


@pytest.mark.parametrize("size", [s for s in PIXEL_SIZES if max(s) / min(s) <= 200])
def test_qwen2_5_vl_pixels(size):
    out = QWEN(coded_image(*size), return_tensors="np")
    t_, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    lay = qwen2_5_vl_layout(size)
    assert t_ == 1 and (gw * 14, gh * 14) == lay.frame_size == lay.processed_size
    assert lay.grid("image").rows == gh // 2 and lay.grid("image").cols == gw // 2
    patches = out["pixel_values"].reshape(gh * gw, 3, 2, 14, 14)[:, :, 0]  # [patch, C, 14, 14]
    assert patches.shape[0] == 4 * lay.num_tokens
    # a merged token = 4 consecutive patches
    blocks = patches.reshape(lay.num_tokens, 4, 3, 196).transpose(0, 2, 1, 3).reshape(lay.num_tokens, 3, 784)
    assert assert_inside(lay, np.arange(lay.num_tokens), blocks) == 784 * lay.num_tokens  # no padding


def _shuffle_codes() -> np.ndarray:
    """For each of the 16×16 shuffled tokens, the (row, col) of its 4 source patches (real pixel_shuffle)."""
    rr, cc = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    feats = torch.stack([rr, cc], dim=-1).float()[None]  # [1, 32, 32, 2], as get_image_features reshapes
    out = InternVLModel.pixel_shuffle(None, feats, scale_factor=0.5)  # [1, 16, 16, 8]
    return out.reshape(256, 4, 2).numpy().astype(int)


SHUFFLE = _shuffle_codes()


@pytest.mark.parametrize("size", PIXEL_SIZES)
def test_internvl_pixels_and_shuffle(size):
    out = INTERNVL(coded_image(*size), return_tensors="np")
    pv = out["pixel_values"]
    lay = internvl_layout(size)
    assert int(out["num_patches"][0]) == len(lay.grids) == pv.shape[0]
    cols, rows = internvl_tile_grid(size)
    assert lay.frame_size == (448 * cols, 448 * rows)
    # the real pixel_shuffle keeps row-major order: token j = patch rows 2·(j//16)+{0,1}, cols 2·(j%16)+{0,1}
    for j in range(256):
        assert sorted(map(tuple, SHUFFLE[j])) == sorted(
            (2 * (j // 16) + a, 2 * (j % 16) + b) for a in (0, 1) for b in (0, 1)
        )
    total = 0
    for ti, g in enumerate(lay.grids):
        assert (g.rows, g.cols, g.offset) == (16, 16, 256 * ti)
        patches = pv[ti].reshape(3, 32, 14, 32, 14).transpose(1, 3, 0, 2, 4)  # [32, 32, 3, 14, 14]
        blocks = patches[SHUFFLE[:, :, 0], SHUFFLE[:, :, 1]]  # [256, 4, 3, 14, 14]
        blocks = blocks.transpose(0, 2, 1, 3, 4).reshape(256, 3, 784)
        total += assert_inside(lay, g.token_indices().reshape(-1), blocks)
    assert total == 448 * 448 * pv.shape[0]


# ---------------------------------------------------------------------------------------------------
# layout API


def test_frame_mapping_roundtrip_and_paint():
    lay = llava_layout((640, 480))
    assert lay.frame_origin == pytest.approx((80.0, 0.0))
    box = np.array([10.0, 20.0, 300.0, 200.0])
    assert lay.original_to_frame(lay.frame_to_original(box)) == pytest.approx(box)
    vals = np.arange(lay.num_tokens, dtype=float)
    heat = paint(lay, vals)
    assert heat.shape == (480, 640)
    assert np.isnan(heat[:, :80]).all() and np.isnan(heat[:, 560:]).all()  # cropped away → unseen
    assert heat[0, 80] == 0 and heat[479, 559] == 575
    g = lay.to_grid(vals, "image")
    assert g.shape == (24, 24) and g[1, 0] == 24

    nxt = llava_next_layout((500, 300))
    for view in (0, 1):  # the high-res grid and the base grid each cover the whole image
        heat = paint(nxt, np.ones(nxt.num_tokens), out_size=(50, 30), view=view)
        assert heat.shape == (30, 50) and np.allclose(heat, 1.0)
    it = internvl_layout((1000, 300))
    vals = np.zeros(it.num_tokens)
    vals[it.grid("tile1").token_indices()] = 1.0
    heat = paint(it, vals)
    x1, y1, x2, y2 = it.grid("tile1").box
    assert np.all(heat[int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1] == 1.0)
    assert np.nansum(heat) == pytest.approx((x2 - x1) * (y2 - y1), rel=0.02)


def test_invalid_sizes():
    for fn in (llava_layout, llava_next_layout, qwen2_5_vl_layout, internvl_layout):
        with pytest.raises(ValueError):
            fn((0, 10))


def test_layout_from_processor_matches_explicit():
    for size in ((640, 480), (37, 500), (4000, 3000)):
        assert _same(layout_from_processor("llava", size, LLAVA), llava_layout(size))
        assert _same(layout_from_processor("llava", size, LLAVA_PAD), llava_layout(size, do_pad=True))
        assert _same(layout_from_processor("llava_next", size, LLAVA_NEXT), llava_next_layout(size))
        assert _same(layout_from_processor("qwen2_5_vl", size, QWEN), qwen2_5_vl_layout(size))
        small = Qwen2VLImageProcessorPil(min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28)
        lay = layout_from_processor("qwen2_5_vl", size, small)
        assert lay.num_tokens == small.get_number_of_image_patches(size[1], size[0]) // 4
        assert _same(layout_from_processor("internvl", size, INTERNVL), internvl_layout(size))
        one_tile = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=1)
        assert layout_from_processor("internvl", size, one_tile).num_tokens == 256
    with pytest.raises(ValueError):
        family_named("blip")


def _same(a: VisualLayout, b: VisualLayout) -> bool:
    return (
        a.grids == b.grids
        and a.num_tokens == b.num_tokens
        and np.array_equal(a.regions, b.regions, equal_nan=True)
        and a.frame_size == b.frame_size
    )


def test_tile_arrangement_follows_internvl_tiling():
    assert tile_arrangement(internvl_layout((896, 448))) == (1, 2)
    assert tile_arrangement(internvl_layout((1344, 896))) == (2, 3)
    assert tile_arrangement(internvl_layout((448, 1344))) == (3, 1)
    assert tile_arrangement(internvl_layout((448, 448))) == (1, 1)
    assert tile_arrangement(llava_layout((100, 80))) == (1, 1)
