"""LLaVA-NeXT / v1.6 (``LlavaNextForConditionalGeneration``, llava-hf checkpoints): a base grid of the whole image,
then the unpadded high-res grid whose rows each end with a newline token.

**Processor + packing** (transformers 5.23–5.24: ``image_processing_pil_llava_next.py``,
``image_processing_utils.select_best_resolution`` / ``get_patch_output_size``, ``modeling_llava_next.
pack_image_features`` / ``unpad_image``, ``processing_llava_next._get_number_of_features``): the ``base`` grid
first — the whole image resized (squashed, no crop) to 336², 24×24 tokens — then the ``highres`` grid: the image
resized into the best ``image_grid_pinpoints`` canvas (fitted size with ``ceil``, centred with
``paste = (canvas − fitted) // 2``), split into 336² tiles whose 24×24 features are stitched into one canvas, then
``unpad_image`` drops ``(cur − round(·)) // 2`` feature rows (or cols) on both sides, and a newline token follows
every kept row. Kept edge tokens may still overlap padding (clipped), and a few image pixels at the trimmed edges
can lie in dropped rows.

**Candidates and newline tokens**: the candidates are the base and the high-res grid (two grids); the newline
tokens are *protected* — never candidates, always kept (like text) — so n counts grid tokens only and keep-all is
the unmodified model. (The peers' convention of counting them in the budget is an analysis option.)

**Grounding**: the LLaVA prompt; numbers 0–1 relative to the whole image (the base view is the whole image
squashed to 336², so there is no crop to dispute).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from d2pruner.families.base import Checkpoint, Family, arch
from d2pruner.families.llava import size_field, tiny_processor_args
from d2pruner.families.tiny import CLIP_VISION, NEXT_PINPOINTS, instantiate, text_config, token_id
from d2pruner.geometry import VisualLayout, build_layout, cells, check_size, to_original

#: ``image_grid_pinpoints`` of the llava-hf LLaVA-NeXT (v1.6) checkpoints, as (height, width).
GRID_PINPOINTS: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def select_best_resolution(
    original_size: tuple[int, int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The anyres choice of canvas; ``original_size`` and the result are ``(height, width)``.

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


def patch_output_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """``get_patch_output_size``: size ``(h, w)`` of the image fitted inside canvas ``target`` (h, w)."""
    target_h, target_w = target
    scale_w = target_w / width
    scale_h = target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def unpad_rows_cols(height: int, width: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """``unpad_image`` on a feature canvas ``cur_h × cur_w``: kept rows ``[r0, r1)`` and cols ``[c0, c1)``."""
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(width * (cur_h / height), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def anyres_parts(
    image_size: tuple[int, int], grid_pinpoints: Sequence[Sequence[int]], crop_size: int, patch_size: int
) -> tuple[list, tuple, tuple[int, int]]:
    """LLaVA-NeXT's unpadded high-res grid: its part for :func:`~d2pruner.geometry.build_layout`, the tiles' boxes in
    original pixels and the fitted size (w, h). It assumes every tile pixel is seen by a patch (336 = 24 · 14);
    LLaVA-OneVision's 384-px tiles leave 6 px unseen and downsample large grids, so its file has its own."""
    w, h = image_size
    side = crop_size // patch_size
    best_h, best_w = select_best_resolution((h, w), grid_pinpoints)
    fit_h, fit_w = patch_output_size(h, w, (best_h, best_w))
    paste_x, paste_y = (best_w - fit_w) // 2, (best_h - fit_h) // 2
    cur_h, cur_w = (best_h // crop_size) * side, (best_w // crop_size) * side
    r0, r1, c0, c1 = unpad_rows_cols(h, w, cur_h, cur_w)
    sx, sy = w / fit_w, h / fit_h
    origin = (-paste_x * sx, -paste_y * sy)
    high = to_original(cells(r1 - r0, c1 - c0, patch_size, patch_size, c0 * patch_size, r0 * patch_size), origin,
                       (sx, sy), (w, h))
    tiles = tuple(
        (origin[0] + sx * tx, origin[1] + sy * ty, origin[0] + sx * (tx + crop_size), origin[1] + sy * (ty + crop_size))
        for ty in range(0, best_h, crop_size)
        for tx in range(0, best_w, crop_size)
    )
    return ["highres", r1 - r0, c1 - c0, True, high], tiles, (fit_w, fit_h)


def llava_next_layout(
    image_size: tuple[int, int],
    *,
    grid_pinpoints: Sequence[Sequence[int]] = GRID_PINPOINTS,
    crop_size: int = 336,
    patch_size: int = 14,
) -> VisualLayout:
    """LLaVA-NeXT's layout of an image of ``image_size`` (width, height): grids ``"base"`` and ``"highres"``
    (newline after each row); the model frame is the base view (the whole image at ``crop_size``²). Its count
    equals ``LlavaNextProcessor._get_number_of_features − 1`` ("default" strategy, CLS dropped)."""
    w, h = check_size(image_size)
    side = crop_size // patch_size
    base = to_original(cells(side, side, patch_size, patch_size), (0.0, 0.0), (w / crop_size, h / crop_size), (w, h))
    high, tiles, fitted = anyres_parts((w, h), grid_pinpoints, crop_size, patch_size)
    parts = [("base", side, side, False, base), tuple(high)]
    return build_layout("llava_next", (w, h), parts, (crop_size, crop_size), (0.0, 0.0),
                        (w / crop_size, h / crop_size), fitted, tiles)


class LlavaNext(Family):
    name: ClassVar[str] = "llava_next"
    label: ClassVar[str] = "LLaVA-NeXT"
    model_types: ClassVar[tuple[str, ...]] = ("llava_next",)
    model_class: ClassVar[str] = "LlavaNextForConditionalGeneration"
    tiny_name: ClassVar[str] = "tiny-llava-next"
    name_hints: ClassVar[tuple[str, ...]] = ("llava-v1.6", "llava-1.6", "llava-next", "llava_next")
    box_units: ClassVar[float | None] = 1.0
    box_frame: ClassVar[str] = "0–1 of the whole image (the base view squashes it to 336²)"
    dynamic_prior_roles: ClassVar[frozenset[str]] = frozenset({"highres"})
    # Vicuna-7B v1.5 (LLaMA-2-7B shape) and Mistral-7B-Instruct-v0.2 (32 × 4096, FFN 14336, 32 heads, 8 KV heads).
    # 2880 = 5 × 576 visual tokens (base image + 2 × 2 high-res tiles), the maximum the D²Pruner paper uses; the real
    # anyres sequence also carries one newline token per high-res row and drops padded rows.
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = (
        Checkpoint("llava-hf/llava-v1.6-vicuna-7b-hf", arch("llava-hf/llava-v1.6-vicuna-7b-hf", 32, 4096, 11008, 32,
                                                            32, 128, 32064, 2880), 7.06),
        Checkpoint("llava-hf/llava-v1.6-mistral-7b-hf", arch("llava-hf/llava-v1.6-mistral-7b-hf", 32, 4096, 14336,
                                                             32, 8, 128, 32064, 2880), 7.57),
    )

    def layout(self, image_size: tuple[int, int], processor, model) -> VisualLayout:
        ip = self.image_processor(processor)
        return llava_next_layout(
            image_size,
            grid_pinpoints=[tuple(p) for p in ip.image_grid_pinpoints],
            crop_size=size_field(getattr(ip, "crop_size", None), "height") or 336,
            patch_size=int(model.config.vision_config.patch_size),
        )

    def tiny_model(self, attn_implementation: str):
        from transformers import (
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessorPil,
            LlavaNextProcessor,
        )

        config = LlavaNextConfig(
            vision_config=dict(CLIP_VISION),
            text_config=text_config("llama"),
            image_token_index=token_id("<image>"),
            image_grid_pinpoints=NEXT_PINPOINTS,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=64,
            pad_token_id=0,
        )
        model = instantiate(LlavaNextForConditionalGeneration, config, attn_implementation)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_grid_pinpoints=NEXT_PINPOINTS
        )
        return model, LlavaNextProcessor(image_processor=image_processor, **tiny_processor_args())
