"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, llava-hf checkpoints): LLaVA-NeXT's anyres layout on
SigLIP 384/14 — a base grid of the whole image, then the unpadded high-res grid (bilinearly downsampled when it is
larger than ``anyres_max_N`` tiles) whose rows each end with a newline token.

**Processor + packing** (transformers 5.23–5.24, identical in both: ``image_processing_pil_llava_onevision.py``,
``image_processing_utils.select_best_resolution`` / ``get_patch_output_size``, ``modeling_llava_onevision.
pack_image_features`` / ``unpad_image``, ``processing_llava_onevision._get_number_of_features``):

* ``base`` — the whole image resized (squashed, no crop) to ``size`` = 384², 27×27 tokens (SigLIP has no CLS:
  ``vision_feature_select_strategy="full"``);
* ``highres`` — the image resized into the best ``image_grid_pinpoints`` canvas (the 36 multiples of 384 up to
  2304², fitted with ``ceil``, pasted at ``(canvas − fitted) // 2``), split into 384² tiles whose 27×27 features
  are stitched into one ``cur_h × cur_w`` canvas; ``unpad_image`` drops ``(cur − round(·)) // 2`` feature rows (or
  cols) on both sides — LLaVA-NeXT's arithmetic (its ``select_best_resolution``, ``patch_output_size`` and
  ``unpad_rows_cols`` are reused);
* **anyres_max_N** (``config.vision_aspect_ratio = "anyres_max_9"``): with ``ratio = sqrt(cur_h · cur_w /
  (N · 27²))``, if ``ratio > 1.1`` the unpadded canvas is interpolated (``F.interpolate(mode="bilinear")``,
  ``align_corners=False``, no antialias) to ``int(cur_h // ratio) × int(cur_w // ratio)`` (float floor division,
  then ``int``); the processor counts with the same expression. The newline tokens follow the rows of the
  *interpolated* grid; there is no trailing token (the processor's count is ``729 + rows · (cols + 1)``). The 1.1
  slack lets up to 1.21 · 9 tiles' worth through unchanged: a 1200×800 image keeps its 73×108 unpadded grid (ratio
  1.096) — 8686 image tokens, more than a 1500×1500 one (108×108 downsampled to 81×81, 7371).

**Regions**: SigLIP's 14-px patch convolution takes 27 patches of a 384-px view (``floor``), so the last 6 px rows
and columns of the base view and of every high-res tile are in no patch and no token sees them: the base grid covers
378/384 of the image, and the high-res regions leave a strip of 6 canvas px out at every tile seam (LLaVA-NeXT's 336
= 24·14 has none, which is why :func:`~d2pruner.families.llava_next.anyres_parts` cannot be used here). Feature cell
``k`` of the stitched canvas is patch ``k mod 27`` of tile ``k // 27``. Output cell ``(i, j)`` of an ``H × W`` grid
made from an ``h × w`` unpadded canvas is given the canvas area ``[i·h/H, (i+1)·h/H) × [j·w/W, (j+1)·w/W)`` (in
feature cells, mapped through the cells it spans): a partition of the unpadded area whose centres are the bilinear
sample points ``(i + ½)·h/H``. Bilinear weights reach the two nearest feature cells on each axis, so a downsampled
token also blends a few pixels less than one feature cell beyond its region (measured on the real code in the
tests). Without downsampling every token is exactly one feature cell, as in LLaVA-NeXT.

**Candidates and newline tokens**: as LLaVA-NeXT — the base and the high-res grid are the candidates; the newline
tokens are *protected* (never candidates, always kept), so n counts grid tokens only.

**Processor quirks**: ``LlavaOnevisionProcessor`` needs a ``LlavaOnevisionVideoProcessor``, which needs torchvision
(measured on transformers 5.23 without it: ``ImportError`` building the video processor, ``AttributeError`` on
``VIDEO_PROCESSOR_MAPPING`` building the processor without one); without it the tokenizer and
``LlavaOnevisionImageProcessor`` (which falls back to its PIL backend by itself) are used and the image tokens expanded
here with the processor's own count. The llava-hf chat template (written by transformers'
``convert_llava_onevision_weights_to_hf.py``) renders one image and a question as
``<|im_start|>user\\n<image>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`` — Qwen2's ChatML without a system
turn.

**Grounding**: no grounding format is documented for LLaVA-OneVision (the model card, the transformers docs and the
conversion script give none), so the LLaVA-1.5 / NeXT prompt is used — an assumption, not a documented format — and
the answer read as ``[x1, y1, x2, y2]`` floats 0–1 of the whole image: the model sees the whole image in its base view
(squashed to 384², no crop) and the high-res tiles cover it with the padding removed, so there is no crop or pad
frame to dispute. The same generic LLaVA-style prompt is what lmms-eval's ``refcoco_bbox_rec`` tasks send.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from d2pruner.families.base import Checkpoint, Family, ProcessorParts, arch
from d2pruner.families.llava import size_field
from d2pruner.families.llava_next import patch_output_size, select_best_resolution, unpad_rows_cols
from d2pruner.families.tiny import instantiate, text_config, tiny_tokenizer, token_id
from d2pruner.geometry import VisualLayout, build_layout, cells, check_size, to_original

#: ``image_grid_pinpoints`` of the llava-hf LLaVA-OneVision checkpoints (= the ``LlavaOnevisionConfig`` and image
#: processor defaults), as (height, width): every multiple of 384 up to 6 × 6 tiles.
GRID_PINPOINTS: tuple[tuple[int, int], ...] = tuple((384 * r, 384 * c) for r in range(1, 7) for c in range(1, 7))
#: ``vision_aspect_ratio`` of the checkpoints (config and processor): at most about 9 tiles of high-res tokens
VISION_ASPECT_RATIO = "anyres_max_9"
#: ``ratio`` above which ``pack_image_features`` interpolates the unpadded grid down (a constant in the code)
DOWNSAMPLE_THRESHOLD = 1.1
#: the chat text for one image when the full processor is not available (the checkpoints' template's output)
TEMPLATE = "<|im_start|>user\n{image}\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
#: the llava-hf LLaVA-OneVision chat template (``convert_llava_onevision_weights_to_hf.py``), images and text only
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: the tiny model: SigLIP-like tower, 36-px tiles of 8-px patches (4×4 tokens per view; like 384 = 27·14 + 6, the
#: last 4 px of every tile are in no patch), the real 6 × 6 pinpoints scaled from 384 to 36 px and the real
#: ``anyres_max_9`` — so the 168×112 test image (4 × 5 tiles, a 14×20 unpadded grid, ratio 1.39) is downsampled to
#: 10×14
TINY_TILE = 36
TINY_VISION = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=TINY_TILE,
    patch_size=8,
    vision_use_head=False,
)
TINY_PINPOINTS = [[TINY_TILE * r, TINY_TILE * c] for r in range(1, 7) for c in range(1, 7)]


def max_num_patches(vision_aspect_ratio: str) -> int:
    """N of ``"anyres_max_N"``, parsed as ``pack_image_features`` does (``int(s.strip("anyres_max_"))``)."""
    try:
        # a character-set strip, exactly as the model and the processor parse it
        return int(str(vision_aspect_ratio).strip("anyres_max_"))  # noqa: B005
    except ValueError:
        raise ValueError(f"vision_aspect_ratio must look like 'anyres_max_9', got {vision_aspect_ratio!r}") from None


def downsampled_shape(rows: int, cols: int, side: int, max_patches: int) -> tuple[int, int]:
    """The grid ``pack_image_features`` makes of a ``rows × cols`` unpadded canvas (``side`` tokens per tile side):
    itself, or ``int(rows // ratio) × int(cols // ratio)`` when ``ratio = sqrt(rows·cols / (max_patches·side²))``
    exceeds 1.1 — the same float expressions as the model and ``LlavaOnevisionProcessor._get_unpadded_features``."""
    ratio = math.sqrt(rows * cols / (max_patches * side**2))
    if ratio > DOWNSAMPLE_THRESHOLD:
        return int(rows // ratio), int(cols // ratio)
    return rows, cols


def feature_edges(
    unpadded: tuple[int, int], out: int, side: int, tile: int, patch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Canvas-pixel (start, end) along one axis of the ``out`` cells that ``pack_image_features`` makes of the
    unpadded feature cells ``[lo, hi)`` of a stitched canvas with ``side`` features per ``tile``-px tile.

    Feature cell ``k`` is the patch ``[t·tile + (k − t·side)·patch, … + patch)`` of tile ``t = k // side``: when
    ``tile`` is not a multiple of ``patch`` (384 = 27·14 + 6) the last ``tile − side·patch`` px of every tile are in no
    patch. Output cell ``i`` spans the fractional feature cells ``[lo + i·n/out, lo + (i+1)·n/out)``, ``n = hi − lo``
    (exactly one cell each without downsampling), mapped piecewise linearly through the cells it spans."""
    lo, hi = unpadded
    bounds = lo + np.arange(out + 1, dtype=np.float64) * (hi - lo) / out if out else np.full(1, float(lo))

    def at(position: np.ndarray, end: bool) -> np.ndarray:
        cell = np.floor(position)
        if end:  # an edge on a cell boundary ends the previous cell (not the gap after it)
            cell = np.where((cell == position) & (position > lo), cell - 1, cell)
        tile_index = cell // side
        return tile_index * tile + (cell - tile_index * side) * patch + (position - cell) * patch

    return at(bounds[:-1], end=False), at(bounds[1:], end=True)


def llava_onevision_layout(
    image_size: tuple[int, int],
    *,
    grid_pinpoints: Sequence[Sequence[int]] = GRID_PINPOINTS,
    tile_size: int = 384,
    patch_size: int = 14,
    vision_aspect_ratio: str = VISION_ASPECT_RATIO,
    family: str = "llava_onevision",
) -> VisualLayout:
    """LLaVA-OneVision's layout of an image of ``image_size`` (width, height): grids ``"base"`` and ``"highres"``
    (newline after each row; the high-res grid downsampled as ``anyres_max_N`` says); the model frame is the base view
    (the whole image at ``tile_size``²). Its count equals ``LlavaOnevisionProcessor._get_number_of_features``
    ("full" strategy: nothing dropped)."""
    w, h = check_size(image_size)
    side = tile_size // patch_size
    frame_scale = (w / tile_size, h / tile_size)
    # the base view's patches cover side·patch of the tile_size px (378 of 384: the last 6 px are in no patch)
    base = to_original(cells(side, side, patch_size, patch_size), (0.0, 0.0), frame_scale, (w, h))
    # the high-res canvas: fitted into the best pinpoint, pasted at (canvas - fitted) // 2, tiles of tile_size
    best_h, best_w = select_best_resolution((h, w), grid_pinpoints)
    fit_h, fit_w = patch_output_size(h, w, (best_h, best_w))
    paste_x, paste_y = (best_w - fit_w) // 2, (best_h - fit_h) // 2
    cur_h, cur_w = (best_h // tile_size) * side, (best_w // tile_size) * side
    r0, r1, c0, c1 = unpad_rows_cols(h, w, cur_h, cur_w)
    rows, cols = downsampled_shape(r1 - r0, c1 - c0, side, max_num_patches(vision_aspect_ratio))
    # canvas pixel u ↦ original (u − paste) · (original / fitted)
    sx, sy = w / fit_w, h / fit_h
    origin = (-paste_x * sx, -paste_y * sy)
    y1, y2 = feature_edges((r0, r1), rows, side, tile_size, patch_size)
    x1, x2 = feature_edges((c0, c1), cols, side, tile_size, patch_size)
    canvas = np.stack(np.broadcast_arrays(x1[None, :], y1[:, None], x2[None, :], y2[:, None]), axis=-1)
    high = to_original(canvas.reshape(-1, 4), origin, (sx, sy), (w, h))
    tiles = tuple(
        (origin[0] + sx * tx, origin[1] + sy * ty, origin[0] + sx * (tx + tile_size), origin[1] + sy * (ty + tile_size))
        for ty in range(0, best_h, tile_size)
        for tx in range(0, best_w, tile_size)
    )
    parts = [("base", side, side, False, base), ("highres", rows, cols, True, high)]
    return build_layout(family, (w, h), parts, (tile_size, tile_size), (0.0, 0.0), frame_scale, (fit_w, fit_h),
                        tiles)


class LlavaOnevision(Family):
    name: ClassVar[str] = "llava_onevision"
    label: ClassVar[str] = "LLaVA-OneVision"
    model_types: ClassVar[tuple[str, ...]] = ("llava_onevision",)
    model_class: ClassVar[str] = "LlavaOnevisionForConditionalGeneration"
    tiny_name: ClassVar[str] = "tiny-llava-onevision"
    name_hints: ClassVar[tuple[str, ...]] = ("onevision", "llava-ov", "llava_ov")
    # The processor picks its canvas from the image's own size (at most 2304², ~5.3 MP, above the 4.2 MP default cap)
    # and copes with any small image: resizing first can change the tiles (a 2200×2600 photo: 6 × 6 tiles, an 87×74
    # grid; downscaled to 2048² pixels, 1883×2226: 6 × 5 tiles, 88×74) — the model must see what the real processor
    # makes of the user's image.
    max_image_pixels: ClassVar[int | None] = None
    min_image_side: ClassVar[int] = 1
    box_units: ClassVar[float | None] = 1.0
    box_frame: ClassVar[str] = "0–1 of the whole image (the base view squashes it to 384²)"
    dynamic_prior_roles: ClassVar[frozenset[str]] = frozenset({"highres"})
    needs_torchvision: ClassVar[bool] = True
    # Language models (the conversion script convert_llava_onevision_weights_to_hf.py builds them from
    # Qwen/Qwen2-0.5B-Instruct and Qwen/Qwen2-7B-Instruct): Qwen2-0.5B 24 × 896, FFN 4864, 14 heads, 2 KV heads,
    # head_dim 64 = 896 / 14; Qwen2-7B 28 × 3584, FFN 18944, 28 heads, 4 KV heads, head_dim 128 = 3584 / 28 (the
    # Qwen2-*-Instruct config.json files). Vocabulary: the script adds <image> and <video> and pads to a multiple of
    # 64: 151936 + 2 → 152000 (0.5B; the same recipe's llava-hf/llava-interleave-qwen-0.5b-hf config.json shows
    # 152000) and 152064 + 2 → 152128 (7B). Visual tokens of a 640×480 photo (COCO-sized): 2 × 2 tiles, 729 base +
    # 40×54 unpadded high-res = 2889 grid tokens (+ 40 newline tokens, protected; 2929 image tokens, the real
    # processor's count). Parameters (vision tower included): 0.89 B (893.7 M counted on the real class with these
    # shapes; the hub lists the 0.5B model.safetensors at 1.79 GB in float16, tied embeddings) and 8.03 B (8 030.8 M
    # counted; the hub shows "8.03B params" for LLaVA-OneVision-7B weights). The 7B vocabulary (152128) follows from the
    # recipe; no copy of that config.json was found to confirm it (it does not enter the FLOP / KV arithmetic).
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = (
        Checkpoint("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", arch("llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                                                                     24, 896, 4864, 14, 2, 64, 152000, 2889), 0.89),
        Checkpoint("llava-hf/llava-onevision-qwen2-7b-ov-hf", arch("llava-hf/llava-onevision-qwen2-7b-ov-hf",
                                                                   28, 3584, 18944, 28, 4, 128, 152128, 2889), 8.03),
    )

    def vision_aspect_ratio(self, model) -> str:
        """``config.vision_aspect_ratio``: what ``forward`` packs with (the processor counts with its own copy)."""
        return str(getattr(model.config, "vision_aspect_ratio", None) or VISION_ASPECT_RATIO)

    def layout(self, image_size: tuple[int, int], processor, model) -> VisualLayout:
        ip = self.image_processor(processor)
        vision = model.config.vision_config
        return llava_onevision_layout(
            image_size,
            grid_pinpoints=[tuple(p) for p in ip.image_grid_pinpoints],
            tile_size=size_field(ip.size, "height") or size_field(ip.size, "shortest_edge") or int(vision.image_size),
            patch_size=int(vision.patch_size),
            vision_aspect_ratio=self.vision_aspect_ratio(model),
            family=self.name,
        )

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        if not isinstance(processor, ProcessorParts):
            return super().build_inputs(model, processor, image, prompt)
        pixels = processor.image_processor(images=image, return_tensors="pt")
        height, width = (int(v) for v in pixels["image_sizes"][0])
        n = self.layout((width, height), processor, model).num_tokens  # = the processor's _get_number_of_features
        text = TEMPLATE.format(image="<image>" * n, prompt=prompt)
        inputs = dict(processor.tokenizer(text, return_tensors="pt"))
        inputs.update(pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])
        if "batch_num_images" in pixels:
            inputs["batch_num_images"] = pixels["batch_num_images"]
        return inputs

    def tiny_model(self, attn_implementation: str):
        from transformers import (
            LlavaOnevisionConfig,
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionImageProcessorPil,
        )

        config = LlavaOnevisionConfig(
            vision_config=dict(TINY_VISION),
            text_config=text_config("qwen2"),
            image_token_index=token_id("<image>"),
            video_token_index=token_id("<|video_pad|>"),  # never in a prompt here; <video> is not a shared special
            image_grid_pinpoints=TINY_PINPOINTS,
            vision_aspect_ratio=VISION_ASPECT_RATIO,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            pad_token_id=0,
        )
        model = instantiate(LlavaOnevisionForConditionalGeneration, config, attn_implementation)
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": TINY_TILE, "width": TINY_TILE}, image_grid_pinpoints=TINY_PINPOINTS
        )
        return model, ProcessorParts(tiny_tokenizer(CHAT_TEMPLATE), image_processor)
