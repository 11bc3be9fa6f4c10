"""LLaVA-OneVision: the layout against the REAL processor arithmetic and the REAL ``pack_image_features`` (incl. the
``anyres_max_9`` downsampling), pixel-exact where the model takes one feature cell per token; the fallback
preprocessing against the real ``LlavaOnevisionProcessor``; grounding; checkpoints; the tiny model's analysis.

Token → pixel checks: an image whose pixels encode their own (x, y) goes through the real image processor with
nearest-neighbour resampling; features that encode their (tile, row, col) — or one-hot canvas rows and columns —
go through the real ``pack_image_features``. Each packed token then names exactly the processed pixels it is made of
(with their bilinear weights when the high-res grid is interpolated).
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_layout import RAW, assert_inside, coded_image

from d2pruner.families import family_for_model_type, family_named, get_arch, guess_family
from d2pruner.families.base import ProcessorParts
from d2pruner.families.llava_next import llava_next_layout, select_best_resolution
from d2pruner.families.llava_onevision import (
    CHAT_TEMPLATE,
    GRID_PINPOINTS,
    TEMPLATE,
    TINY_PINPOINTS,
    TINY_TILE,
    downsampled_shape,
    llava_onevision_layout,
    max_num_patches,
)

transformers = pytest.importorskip("transformers")
from transformers import LlavaOnevisionConfig  # noqa: E402
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution  # noqa: E402
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (  # noqa: E402
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel  # noqa: E402
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor  # noqa: E402

FAMILY = family_named("llava_onevision")
TORCHVISION = importlib.util.find_spec("torchvision") is not None
PINPOINTS = [list(p) for p in GRID_PINPOINTS]
SIDE = 27  # 384 / 14
#: checkpoint-like image processor (llava-hf/llava-onevision-qwen2-*-ov-hf: 384² tiles, the 36 pinpoints), raw pixels
OV = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384}, image_grid_pinpoints=PINPOINTS, **RAW)
NO_DOWNSAMPLING = "anyres_max_1000000"

# (width, height); every side < 2048 (the pixel code). Small and odd sizes take one feature cell per token …
PIXEL_SIZES = [(1, 1), (2, 1), (1, 3), (37, 500), (500, 37), (640, 480), (480, 640), (333, 335), (384, 384),
               (385, 384), (1000, 200), (200, 1000), (190, 1), (1023, 767), (2000, 15), (1200, 800)]
# … these are downsampled by anyres_max_9 (ratio 1.11 … 1.56; 1300×900 is just above the 1.1 threshold, 1200×800
# above is just below it at 1.096)
DOWNSAMPLED_SIZES = [(1300, 900), (1536, 1152), (1153, 1153), (1600, 1000), (1000, 1600), (2000, 1200)]
COUNT_SIZES = [*PIXEL_SIZES, *DOWNSAMPLED_SIZES, (4000, 3000), (3000, 4000), (8192, 41), (41, 8192), (6000, 6000),
               (12000, 61), (1, 200), (9, 1000), (2304, 2304), (2305, 2304), (1920, 1080), (1080, 1920),
               (1250, 830), (100000, 1000), (5000, 1200), (1700, 500)]


def real_processor(image_processor=None, num_image_tokens: int = SIDE * SIDE, vision_aspect_ratio="anyres_max_9"):
    """``LlavaOnevisionProcessor`` for its token arithmetic only (no tokenizer, no video processor)."""
    proc = object.__new__(LlavaOnevisionProcessor)
    proc.image_processor = image_processor or LlavaOnevisionImageProcessorPil()  # the class defaults = checkpoints'
    proc.num_image_tokens = num_image_tokens
    proc.vision_aspect_ratio = vision_aspect_ratio
    proc.vision_feature_select_strategy = "full"
    return proc


def real_pack(size, vision_aspect_ratio="anyres_max_9", pinpoints=PINPOINTS, tile=384, patch=14):
    """The real ``pack_image_features`` on features that code the base view's (row, col) and the high-res canvas cell
    of each tile token as one-hot rows and columns. Returns [tokens, channels] (float64) and (canvas rows, cols):
    channel 0 is 1 on base tokens, 1–2 their (row, col); then the canvas-row weights, then the canvas-column weights;
    newline tokens are all −1."""
    w, h = size
    side = tile // patch
    best_h, best_w = select_best_resolution((h, w), pinpoints)
    nth, ntw = best_h // tile, best_w // tile
    rows, cols = nth * side, ntw * side
    channels = 3 + rows + cols
    feats = torch.zeros(1 + nth * ntw, side * side, channels, dtype=torch.float64)
    rr, cc = (g.reshape(-1) for g in torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"))
    feats[0, :, 0] = 1.0
    feats[0, :, 1], feats[0, :, 2] = rr.double(), cc.double()
    tokens = torch.arange(side * side)
    for t in range(nth * ntw):
        feats[1 + t, tokens, 3 + (t // ntw) * side + rr] = 1.0
        feats[1 + t, tokens, 3 + rows + (t % ntw) * side + cc] = 1.0
    fake = SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(image_size=tile, patch_size=patch), image_grid_pinpoints=pinpoints))
    packed, lens = LlavaOnevisionModel.pack_image_features(
        fake, [feats], torch.tensor([[h, w]]), image_newline=torch.full((channels,), -1.0, dtype=torch.float64),
        vision_aspect_ratio=vision_aspect_ratio,
    )
    assert int(lens[0]) == packed[0].shape[0]
    return packed[0].numpy(), (rows, cols)


def canvas_blocks(pv: np.ndarray, r: np.ndarray, c: np.ndarray, ntw: int) -> np.ndarray:
    """Processed pixels [K, 3, 196] of canvas feature cells (r, c) (tiles row-major after the base view)."""
    tile = 1 + (r // SIDE) * ntw + c // SIDE
    ys = ((r % SIDE)[:, None] * 14 + np.arange(14))[:, None, :, None]
    xs = ((c % SIDE)[:, None] * 14 + np.arange(14))[:, None, None, :]
    return pv[tile[:, None, None, None], np.arange(3)[None, :, None, None], ys, xs].reshape(len(r), 3, 196)


def pixel_xy(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Original (x, y) of each processed pixel [K, P] and the mask of real (not padding) pixels (``coded_image``)."""
    b = blocks.astype(np.int64)
    real = b[:, 2] >= 128
    return b[:, 0] + 256 * ((b[:, 2] - 128) // 8), b[:, 1] + 256 * ((b[:, 2] - 128) % 8), real


def check_regions(layout, tile=384, patch=14) -> None:
    """Per grid, regions are a product of disjoint row / column intervals in order; consecutive intervals touch,
    except across a seam between two high-res tiles (or at the base view's far edges), where the ``tile mod patch``
    px (6 of 384) that no patch covers are left out."""
    w, h = layout.image_size
    assert layout.regions.shape == (layout.num_tokens, 4)
    seen = np.concatenate([g.token_indices().reshape(-1) for g in layout.grids] + [layout.newline_tokens])
    assert np.array_equal(np.sort(seen), np.arange(layout.num_tokens)), "grids must partition the tokens"
    assert np.all(np.isnan(layout.regions[layout.newline_tokens]))
    gap = (tile % patch) * np.array([w / layout.processed_size[0], h / layout.processed_size[1]])
    for g in layout.grids:
        reg = layout.regions[g.token_indices()]  # [rows, cols, 4]
        ok = np.isfinite(reg[..., 0])
        if not ok.any():
            continue
        assert np.array_equal(np.isfinite(reg).all(-1), ok)
        assert ok.sum() == ok.any(0).sum() * ok.any(1).sum()  # a full rectangle of cells sees the image
        r = reg[ok]
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all() and (r[:, 2] <= w).all() and (r[:, 3] <= h).all()
        assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        sub = reg[ok.any(1)][:, ok.any(0)]
        xs, ys = sub[..., [0, 2]], sub[..., [1, 3]]
        assert np.allclose(xs, xs[:1], atol=1e-9) and np.allclose(ys, ys[:, :1], atol=1e-9)
        for axis, intervals in ((0, xs[0]), (1, ys[:, 0])):  # [n, 2] column (row) intervals in order
            step = intervals[1:, 0] - intervals[:-1, 1]
            assert (intervals[:, 0] < intervals[:, 1]).all()
            assert np.all(np.isclose(step, 0, atol=1e-9) | np.isclose(step, gap[axis], atol=1e-9)), (g.name, step)

# ---------------------------------------------------------------------------------------------------
# the processor's arithmetic


def test_constants_are_the_checkpoints_and_the_library_defaults():
    assert [list(p) for p in GRID_PINPOINTS] == LlavaOnevisionImageProcessorPil.image_grid_pinpoints
    config = LlavaOnevisionConfig()
    assert config.image_grid_pinpoints == PINPOINTS and config.vision_aspect_ratio == "anyres_max_9"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (384, 14)
    assert config.vision_feature_select_strategy == "full"  # SigLIP has no CLS token: all 729 features are tokens
    assert dict(LlavaOnevisionImageProcessorPil.size) == {"height": 384, "width": 384}
    assert max_num_patches("anyres_max_9") == 9 and max_num_patches("anyres_max_12") == 12
    with pytest.raises(ValueError, match="anyres_max"):
        max_num_patches("anyres")


@pytest.mark.parametrize("size", COUNT_SIZES)
def test_token_counts_match_the_real_processor(size):
    w, h = size
    assert select_best_resolution((h, w), PINPOINTS) == tuple(hf_select_best_resolution((h, w), PINPOINTS))
    for aspect in ("anyres_max_9", "anyres_max_4", "anyres_max_1", NO_DOWNSAMPLING):
        lay = llava_onevision_layout(size, vision_aspect_ratio=aspect)
        assert lay.num_tokens == real_processor(vision_aspect_ratio=aspect)._get_number_of_features(h, w, 384, 384)
        base, high = lay.grids
        assert (base.name, base.rows, base.cols, base.newline_after_row) == ("base", 27, 27, False)
        assert high.name == "highres" and high.newline_after_row and lay.newline_tokens.size == high.rows
        assert lay.num_tokens == 729 + high.rows * (high.cols + 1)  # no trailing token
        check_regions(lay)


@pytest.mark.parametrize("size", COUNT_SIZES)
def test_downsampling_follows_the_model(size):
    """The high-res grid is the real ``pack_image_features`` output grid (rows from the newline tokens), with and
    without ``anyres_max_9``; the downsampled grid covers exactly the area of the unpadded one."""
    if max(size) > 20000:
        pytest.skip("canvas only; the packing is checked on the other sizes")
    for aspect in ("anyres_max_9", NO_DOWNSAMPLING):
        packed, _ = real_pack(size, aspect)
        lay = llava_onevision_layout(size, vision_aspect_ratio=aspect)
        assert packed.shape[0] == lay.num_tokens
        newline = np.flatnonzero(np.all(packed == -1.0, axis=1))
        assert np.array_equal(newline, lay.newline_tokens)
        high = lay.grid("highres")
        assert np.array_equal(np.flatnonzero(packed[:, 0] == 1.0), np.arange(729))  # base view first
        assert (np.diff(newline, prepend=728) == high.cols + 1).all()  # one newline ends every row
    full = llava_onevision_layout(size, vision_aspect_ratio=NO_DOWNSAMPLING).grid("highres")
    down = llava_onevision_layout(size).grid("highres")
    assert (down.rows, down.cols) == downsampled_shape(full.rows, full.cols, SIDE, 9)
    if full.rows * full.cols:
        assert down.box == pytest.approx(full.box, abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# pixel-exact: the real image processor + the real packing


def _pixels_and_packing(size):
    w, h = size
    out = OV(coded_image(*size), return_tensors="np")
    pv = out["pixel_values"][0]
    assert tuple(out["image_sizes"][0]) == (h, w)
    lay = llava_onevision_layout(size)
    best_h, best_w = select_best_resolution((h, w), PINPOINTS)
    ntw = best_w // 384
    assert pv.shape[0] == 1 + len(lay.tiles) == 1 + (best_h // 384) * ntw
    packed, (rows, _) = real_pack(size)
    assert packed.shape[0] == lay.num_tokens
    # the base view: one 14×14 patch of the whole image squashed to 384² per token, all inside its region
    br, bc = packed[:729, 1].astype(int), packed[:729, 2].astype(int)
    ys = (br[:, None] * 14 + np.arange(14))[:, None, :, None]
    xs = (bc[:, None] * 14 + np.arange(14))[:, None, None, :]
    base = pv[0][np.arange(3)[None, :, None, None], ys, xs].reshape(729, 3, 196)
    assert assert_inside(lay, np.arange(729), base) == 729 * 196
    high = lay.grid("highres").token_indices().reshape(-1)
    weights_r, weights_c = packed[high, 3 : 3 + rows], packed[high, 3 + rows :]
    return lay, pv, ntw, high, weights_r, weights_c


@pytest.mark.parametrize("size", PIXEL_SIZES)
def test_pixels_and_packing_one_cell_per_token(size):
    lay, pv, ntw, high, weights_r, weights_c = _pixels_and_packing(size)
    if high.size == 0:  # e.g. 190×1: no high-res row survives unpadding (the processor counts 0 as well)
        return
    # without downsampling every high-res token is exactly one feature cell of the stitched canvas
    assert set(np.unique(weights_r)) <= {0.0, 1.0} and (weights_r.sum(1) == 1).all() and (weights_c.sum(1) == 1).all()
    r, c = weights_r.argmax(1), weights_c.argmax(1)
    blocks = canvas_blocks(pv, r, c, ntw)
    assert assert_inside(lay, high, blocks) > 0
    # and tight: a token whose patch is all image spans its pixels, up to one original pixel or resampling step
    xs, ys, real = pixel_xy(blocks)
    full = real.all(axis=1)
    seen = np.stack([xs.min(1), ys.min(1), xs.max(1) + 1, ys.max(1) + 1], axis=1)[full]
    w, h = size
    step = np.array([w / lay.processed_size[0], h / lay.processed_size[1]] * 2)
    assert (np.abs(seen - lay.regions[high][full]) <= np.maximum(1.0, step) + 1e-9).all()


@pytest.mark.parametrize("size", DOWNSAMPLED_SIZES)
def test_pixels_and_packing_downsampled(size):
    """anyres_max_9 interpolates: each token blends up to 2×2 feature cells (weights from the real code). Its region is
    its share of the unpadded canvas: centred on the blend (the bilinear sample point, measured on the real
    pixels), and every pixel it blends lies within one feature cell of it."""
    lay, pv, ntw, high, weights_r, weights_c = _pixels_and_packing(size)
    w, h = size
    g = lay.grid("highres")
    full = llava_onevision_layout(size, vision_aspect_ratio=NO_DOWNSAMPLING).grid("highres")
    assert (g.rows, g.cols) == downsampled_shape(full.rows, full.cols, SIDE, 9) != (full.rows, full.cols)
    assert np.allclose(weights_r.sum(1), 1) and np.allclose(weights_c.sum(1), 1)
    assert ((weights_r > 0).sum(1) <= 2).all() and ((weights_c > 0).sum(1) <= 2).all()
    # the real sample point, in canvas feature cells, is the centre of the token's share of the unpadded canvas
    centre_r = weights_r @ (np.arange(weights_r.shape[1]) + 0.5)
    centre_c = weights_c @ (np.arange(weights_c.shape[1]) + 0.5)
    i, j = np.divmod(np.arange(high.size), g.cols)
    undone = real_pack(size, NO_DOWNSAMPLING)[0][full.token_indices().reshape(-1)]  # the unpadded feature cells
    unpadded_r = np.flatnonzero(undone[:, 3 : 3 + weights_r.shape[1]].sum(0))
    unpadded_c = np.flatnonzero(undone[:, 3 + weights_r.shape[1] :].sum(0))
    assert unpadded_r.size == full.rows and unpadded_c.size == full.cols
    assert centre_r == pytest.approx(unpadded_r[0] + (i + 0.5) * unpadded_r.size / g.rows, abs=1e-9)
    assert centre_c == pytest.approx(unpadded_c[0] + (j + 0.5) * unpadded_c.size / g.cols, abs=1e-9)
    # pixels: the 2×2 cells of every token, with the bilinear weight of each
    two_r = np.argsort(-weights_r, axis=1, kind="stable")[:, :2]
    two_c = np.argsort(-weights_c, axis=1, kind="stable")[:, :2]
    reg = lay.regions[high]
    cell_x, cell_y = 14 * w / lay.processed_size[0], 14 * h / lay.processed_size[1]  # one feature cell, original px
    num = np.zeros((high.size, 2))
    den = np.zeros(high.size)
    complete = np.ones(high.size, dtype=bool)
    checked = 0
    for a in range(2):
        for b in range(2):
            r, c = two_r[:, a], two_c[:, b]
            wt = weights_r[np.arange(high.size), r] * weights_c[np.arange(high.size), c]
            xs, ys, real = pixel_xy(canvas_blocks(pv, r, c, ntw))
            blended = real & (wt[:, None] > 0)
            eps = 1e-6
            inside = ((xs < reg[:, 2:3] + cell_x + eps) & (xs + 1 > reg[:, 0:1] - cell_x - eps)
                      & (ys < reg[:, 3:4] + cell_y + eps) & (ys + 1 > reg[:, 1:2] - cell_y - eps))
            assert not (blended & ~inside).any(), "a blended pixel lies more than one feature cell from its region"
            checked += int(blended.sum())
            complete &= real.all(axis=1) | (wt == 0)
            num += wt[:, None] * np.stack([(xs + 0.5).mean(1), (ys + 0.5).mean(1)], axis=1)
            den += wt
    assert checked > 0 and np.isfinite(reg).all()
    # where every blended cell is real image, the weighted pixel centroid is the region's centre: within half an
    # original pixel or resampling step (nearest-neighbour placement), plus half the 6-px strip between two tiles
    # that no patch covers when the token blends cells of both
    centroid = num[complete] / den[complete, None]
    mid = np.stack([(reg[:, 0] + reg[:, 2]) / 2, (reg[:, 1] + reg[:, 3]) / 2], axis=1)[complete]
    interior = np.all((reg[complete, :2] > 0) & (reg[complete, 2:] < np.array([w, h])), axis=1)
    assert interior.sum() > 0.8 * high.size
    step = np.array([w / lay.processed_size[0], h / lay.processed_size[1]])
    def crosses(lo, n, out, index):  # the token's share [lo + i·n/out, lo + (i+1)·n/out) spans two tiles
        return np.floor((lo + index * n / out) / SIDE) != np.ceil((lo + (index + 1) * n / out) / SIDE) - 1

    seam = np.stack([crosses(unpadded_c[0], unpadded_c.size, g.cols, j),
                     crosses(unpadded_r[0], unpadded_r.size, g.rows, i)], axis=1)
    tol = np.maximum(1.0, step) + seam[complete] * 3 * step
    err = np.abs(centroid - mid)[interior]
    assert (err <= tol[interior]).all()
    assert np.median(err) < 0.1 * step.min()  # most tokens: to a fraction of a pixel
    check_regions(lay)


# ---------------------------------------------------------------------------------------------------
# preprocessing: the fallback equals the real processor


@pytest.fixture(scope="module")
def tiny(tiny_models):
    tm = tiny_models.get("tiny-llava-onevision")
    return tm.model, tm.processor


def _photo(size, seed=0):
    from PIL import Image

    w, h = size
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


TINY_SIZES = [(168, 112), (64, 64), (32, 32), (190, 20), (20, 190), (300, 77), (111, 333), (5, 1)]


def test_tiny_layouts_and_model_agree(tiny):
    """The tiny model (36-px tiles of 8-px patches, the real pinpoints scaled, anyres_max_9) packs what the layout
    says — with and without downsampling — and runs."""
    model, parts = tiny
    seen = set()
    for size in TINY_SIZES:
        inputs = FAMILY.build_inputs(model, parts, _photo(size), "What?")
        lay = FAMILY.layout(size, parts, model)
        tokens = FAMILY.visual_tokens(model, inputs, lay)
        feats = FAMILY.encode_image(model, inputs)["image"].pooler_output[0]
        assert feats.shape[0] == lay.num_tokens
        newline = model.model.image_newline
        assert torch.equal(feats[torch.as_tensor(lay.newline_tokens)], newline.expand(lay.newline_tokens.size, -1))
        assert tokens.num_candidates == lay.grid_tokens.size
        check_regions(lay, tile=TINY_TILE, patch=8)
        w, h = size
        expected = real_processor(parts.image_processor, 16)._get_number_of_features(h, w, TINY_TILE, TINY_TILE)
        assert lay.num_tokens == expected
        full = llava_onevision_layout(size, grid_pinpoints=TINY_PINPOINTS, tile_size=TINY_TILE, patch_size=8,
                                      vision_aspect_ratio=NO_DOWNSAMPLING).grid("highres")
        seen.add((full.rows, full.cols) != (lay.grid("highres").rows, lay.grid("highres").cols))
    assert seen == {True, False}  # both paths of pack_image_features


def test_fallback_template_is_the_chat_template(tiny):
    _, parts = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    rendered = parts.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                   chat_template=CHAT_TEMPLATE)
    assert rendered == TEMPLATE.format(image="<image>", prompt="What is it?")
    assert rendered == "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.newest_stack
def test_fallback_inputs_equal_the_real_processor(tiny):
    """``LlavaOnevisionProcessor`` (needs torchvision for its video processor) and the tokenizer + image processor
    fallback give identical inputs: same text, same expansion of <image>, same pixels and sizes."""
    from transformers import LlavaOnevisionVideoProcessor

    model, parts = tiny
    real = LlavaOnevisionProcessor(
        image_processor=parts.image_processor, tokenizer=parts.tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16, vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9",
    )
    for size in TINY_SIZES:
        image = _photo(size)
        a = FAMILY.build_inputs(model, real, image, "Where is the cat?")
        b = FAMILY.build_inputs(model, parts, image, "Where is the cat?")
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), (size, key)
        tokens = FAMILY.tokens_for(model, real, size, a)
        image_tokens = int((a["input_ids"] == model.config.image_token_id).sum())
        assert tokens.num_candidates + tokens.protected.numel() == image_tokens
    # the checkpoints' geometry (384² tiles, 36 pinpoints): the processor's own count of <image> tokens
    ckpt = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(), tokenizer=parts.tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=729, vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    arch = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=384, patch_size=14),
                                                  vision_aspect_ratio="anyres_max_9"))
    for size in ((640, 480), (1300, 900), (2000, 30)):
        ids = ckpt(images=_photo(size), text="<image>\nWhat?", return_tensors="pt")["input_ids"]
        count = int((ids == model.config.image_token_id).sum())
        assert count == FAMILY.layout(size, ckpt, arch).num_tokens


def test_load_processor_falls_back_without_torchvision(tiny, tmp_path):
    """A checkpoint folder's processor: the real ``LlavaOnevisionProcessor`` where torchvision is installed, else the
    tokenizer + image processor with a note; both give the same inputs."""
    model, parts = tiny
    parts.tokenizer.save_pretrained(tmp_path)
    parts.image_processor.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 16, "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9"}))
    (tmp_path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    if TORCHVISION:
        from transformers import LlavaOnevisionVideoProcessor

        LlavaOnevisionVideoProcessor().save_pretrained(tmp_path)
    processor, notes = FAMILY.load_processor(str(tmp_path))
    if TORCHVISION:
        assert type(processor).__name__ == "LlavaOnevisionProcessor" and notes == []
    else:
        assert isinstance(processor, ProcessorParts) and "image processor + tokenizer" in notes[0]
    image = _photo((168, 112))
    a = FAMILY.build_inputs(model, processor, image, "What?")
    b = FAMILY.build_inputs(model, parts, image, "What?")
    assert set(a) == set(b)
    for key in set(b) - {"pixel_values"}:
        assert torch.equal(a[key], b[key]), key
    # AutoImageProcessor may pick the torchvision backend: same geometry, resampling differs slightly
    assert a["pixel_values"].shape == b["pixel_values"].shape
    assert (a["pixel_values"] - b["pixel_values"]).abs().max() < 0.05  # measured 0.015 (torchvision), 0 (PIL)


# ---------------------------------------------------------------------------------------------------
# grounding


def test_grounding_prompt_parser_and_frame():
    assert FAMILY.grounding_prompt(" the red car ") == family_named("llava").grounding_prompt("the red car")
    assert FAMILY.grounding_prompt("x").startswith("Please provide the bounding box coordinate of the region")
    assert FAMILY.parse_model_box("[0.61, 0.36, 0.92, 0.83]<|im_end|>") == pytest.approx((0.61, 0.36, 0.92, 0.83))
    assert FAMILY.parse_model_box("I cannot tell.") is None and FAMILY.parse_model_box("[0.9, 0.1, 0.2, 0.3]") is None
    for size in ((640, 480), (300, 1000), (2000, 1200), (5, 1)):
        lay = llava_onevision_layout(size)
        w, h = size
        assert lay.frame_size == (384, 384) and lay.frame_origin == (0.0, 0.0)
        assert FAMILY.parse_box("[0.5, 0.25, 1, 1]", lay) == pytest.approx((w / 2, h / 4, w, h))
        truth = (0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h)
        model_box = FAMILY.to_model_units(truth, lay)
        assert model_box == pytest.approx((0.1, 0.2, 0.7, 0.9))
        answer = FAMILY.format_answer(model_box)
        assert answer == "[0.10, 0.20, 0.70, 0.90]"
        assert FAMILY.parse_box(answer, lay) == pytest.approx(truth)
        # the frame is the whole image; the base grid's 27 patches of 14 px cover 378 of its 384 px
        assert lay.grid("base").box == pytest.approx((0, 0, w * 378 / 384, h * 378 / 384))
    with pytest.raises(ValueError, match="llava_next"):
        FAMILY.parse_box("[0, 0, 1, 1]", llava_next_layout((64, 64)))


# ---------------------------------------------------------------------------------------------------
# registry and checkpoints


def test_registry_and_name_hints():
    assert family_for_model_type("llava_onevision") is FAMILY
    assert family_named("tiny-llava-onevision") is FAMILY and FAMILY.tiny_name == "tiny-llava-onevision"
    for hub_id in ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-72b-ov-chat-hf",
                   "lmms-lab/llava-onevision-qwen2-7b-si", "someone/my-llava-ov-finetune"):
        assert guess_family(hub_id) is FAMILY
    assert guess_family("llava-hf/llava-1.5-7b-hf").name == "llava"
    assert guess_family("llava-hf/llava-v1.6-mistral-7b-hf").name == "llava_next"


@pytest.mark.parametrize(("hub_id", "text", "billions"), [
    ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                                      num_attention_heads=14, num_key_value_heads=2,
                                                      vocab_size=152000, tie_word_embeddings=True), 0.89),
    ("llava-hf/llava-onevision-qwen2-7b-ov-hf", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                                    num_attention_heads=28, num_key_value_heads=4,
                                                    vocab_size=152128, tie_word_embeddings=False), 8.03),
])
def test_checkpoint_numbers(hub_id, text, billions):
    """The table's numbers are a Qwen2 config of the real class, and its size counts that model's parameters."""
    from d2pruner.efficiency import efficiency_report

    arch = get_arch(hub_id)
    assert (arch.num_layers, arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.num_kv_heads,
            arch.vocab_size) == tuple(text[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                         "num_attention_heads", "num_key_value_heads", "vocab_size"))
    assert arch.head_dim == arch.hidden_size // arch.num_heads
    lay = llava_onevision_layout((640, 480))
    assert arch.nominal_visual_tokens == lay.grid_tokens.size == 2889
    config = LlavaOnevisionConfig(text_config=dict(model_type="qwen2", **text))
    with torch.device("meta"):
        model = transformers.LlavaOnevisionForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters()) / 1e9
    assert FAMILY.checkpoint(hub_id).billion_params == round(count, 2) == billions
    report = efficiency_report(hub_id, text_tokens=40, layer=2, kept=722)
    assert report.visual_tokens == 2889 and report.kept == 722 and report.flops < report.flops_unpruned


# ---------------------------------------------------------------------------------------------------
# the tiny model through the analysis


def test_analysis_question_and_grounding(tiny_analyzers, test_image):
    analyzer = tiny_analyzers.get("tiny-llava-onevision")
    r = analyzer.analyze(test_image, "What is red?", methods=("fastv", "d2pruner"), max_new_tokens=3)
    assert r.family == "llava_onevision" and [g.name for g in r.grids] == ["base", "highres"]
    assert [(g.rows, g.cols) for g in r.grids] == [(4, 4), (10, 14)]
    assert r.prior_source.startswith("natural prior of tiny-llava-onevision, layer 2, 40 images")
    assert any("10 newline tokens" in note for note in r.notes)
    assert r.n == round(0.25 * 156) and all(m.num_kept == r.n for m in r.methods.values())
    g = analyzer.analyze(test_image, "the red box", methods=("d2pruner",), grounding=True, max_new_tokens=3)
    assert g.question == FAMILY.grounding_prompt("the red box")
    w, h = test_image.size
    for box in (g.vanilla_box, g.methods["d2pruner"].box):
        assert box is None or (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h)


def test_huge_and_tiny_images_reach_the_processor_unresized(tiny_analyzers):
    """No downscale above 2048² and no upscale below 28 px: the model gets the real processor's tiles."""
    analyzer = tiny_analyzers.get("tiny-llava-onevision")
    for size in ((2100, 2100), (3, 1)):
        obs = analyzer.observe(_photo(size), "What?", layer=1)
        lay = FAMILY.layout(size, analyzer.processor, analyzer.model)
        assert obs.attention_flat.size == lay.grid_tokens.size
    assert FAMILY.max_image_pixels is None and FAMILY.min_image_side == 1
    # why: a downscale to 2048² pixels first would change the real model's tiles and grid
    real, downscaled = llava_onevision_layout((2200, 2600)), llava_onevision_layout((1883, 2226))
    assert (len(real.tiles), real.grid("highres").rows) == (36, 87)
    assert (len(downscaled.tiles), downscaled.grid("highres").rows) == (30, 88)
