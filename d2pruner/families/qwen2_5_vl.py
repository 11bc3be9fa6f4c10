"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): one dynamic grid, one token per 2×2 merged 14-px patches
(28×28 px), 3-D M-RoPE positions (the hooks slice them like any position embedding).

**Processor** (``Qwen2VLImageProcessor``, ``image_processing_pil_qwen2_vl.smart_resize``): the image is resized
(aspect ratio roughly kept, no crop) to ``h̄ × w̄``, multiples of ``patch · merge = 28`` with the pixel count in
``[min_pixels, max_pixels]`` (the released checkpoints: 3136 and 12 845 056); the grid is ``(h̄/28, w̄/28)``
row-major (the vision tower's window reordering is undone before the merger output); ``image_grid_thw =
(1, h̄/14, w̄/14)``. Aspect ratios above 200 are refused, as the processor does.

**Processor quirks**: the full ``Qwen2_5_VLProcessor`` needs torchvision (for its video processor); without it the
tokenizer and ``Qwen2VLImageProcessor`` are used and the image tokens expanded here. transformers 5.23 needs
``mm_token_type_ids`` in the inputs, or the 3-D positions are not computed.

**Grounding**: the prompt of Qwen's spatial-understanding cookbook, "Locate … in the image, output its bbox
coordinates using JSON format."; the answer is JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": …}]`` in *absolute
pixels of the resized processor input* (``w̄ × h̄``) — rescaled here by the resize factors (Qwen2-VL and Qwen3-VL
use 0–1000 instead).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

import torch

from d2pruner.families.base import Checkpoint, Family, ProcessorParts, arch
from d2pruner.families.llava import size_field
from d2pruner.families.tiny import instantiate, text_config, tiny_tokenizer, token_id
from d2pruner.geometry import Box, VisualLayout, build_layout, cells, check_size, to_original
from d2pruner.grounding import bracket_body, first_box, four_numbers

#: ``min_pixels`` / ``max_pixels`` of the Qwen2.5-VL checkpoints' ``preprocessor_config.json``
#: (the processor class defaults are 56·56 and 28·28·1280; the released checkpoints override the maximum).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16384  # 12 845 056
#: the chat text for one image when the full processor is not available (the checkpoints' template's output)
TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
#: the Qwen2.5-VL chat template for one image and text (the same output as the checkpoints' template)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_BBOX_KEY = re.compile(r"""["']?bbox_2d["']?\s*:\s*""")


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = 14 * 14 * 4 * 1280
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


def qwen2_5_vl_layout(
    image_size: tuple[int, int],
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    family: str = "qwen2_5_vl",
) -> VisualLayout:
    """Qwen2.5-VL's layout of an image of ``image_size`` (width, height): one grid ``"image"`` of
    ``(h̄/28, w̄/28)`` tokens; the model frame is the resized input (``w̄ × h̄`` pixels)."""
    w, h = check_size(image_size)
    factor = patch_size * merge_size
    h_bar, w_bar = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    rows, cols = h_bar // factor, w_bar // factor
    scale = (w / w_bar, h / h_bar)
    reg = to_original(cells(rows, cols, factor, factor), (0.0, 0.0), scale, (w, h))
    return build_layout(family, (w, h), [("image", rows, cols, False, reg)], (w_bar, h_bar), (0.0, 0.0), scale,
                        (w_bar, h_bar))


def parse_bbox_json(text: str) -> Box | None:
    """The first ``bbox_2d`` value of a Qwen answer (JSON, code fences or prose around it), else the first
    bracketed group of four numbers."""
    if not isinstance(text, str) or not text.strip():
        return None
    key = _BBOX_KEY.search(text)
    if key is not None:
        body = bracket_body(text, key.end())
        return four_numbers(body) if body is not None else None
    return first_box(text)


def format_bbox_json(box: Sequence[float], label: str) -> str:
    coords = ", ".join(str(round(v)) for v in box)
    return f'```json\n[\n\t{{"bbox_2d": [{coords}], "label": "{label}"}}\n]\n```'


class Qwen2_5_VL(Family):
    name: ClassVar[str] = "qwen2_5_vl"
    label: ClassVar[str] = "Qwen2.5-VL"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    model_class: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"
    tiny_name: ClassVar[str] = "tiny-qwen2.5-vl"
    name_hints: ClassVar[tuple[str, ...]] = ("qwen2.5-vl", "qwen2_5_vl", "qwen2.5vl")
    # smart_resize caps the size at max_pixels and scales tiny images up to min_pixels itself: resizing first would
    # round to another grid (a 3000×4500 photo: 157×104 tokens instead of the processor's 156×104)
    max_image_pixels: ClassVar[int | None] = None
    min_image_side: ClassVar[int] = 1
    grounding_template: ClassVar[str] = "Locate {expr} in the image, output its bbox coordinates using JSON format."
    box_units: ClassVar[float | None] = None
    box_frame: ClassVar[str] = "absolute pixels of the resized processor input (w̄ × h̄)"
    dynamic_prior_roles: ClassVar[frozenset[str]] = frozenset({"image"})
    needs_torchvision: ClassVar[bool] = True
    # Qwen2.5-VL-3B: 36 × 2048, FFN 11008, 16 heads, 2 KV heads, vocab 151936 (config.json). Qwen2.5-VL-7B:
    # 28 × 3584, FFN 18944, 28 heads, 4 KV heads, vocab 152064. Dynamic resolution (one token per 28 × 28 block);
    # 1280 is the cap under the max_pixels = 1280·28·28 setting the model card suggests.
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = (
        Checkpoint("Qwen/Qwen2.5-VL-3B-Instruct", arch("Qwen/Qwen2.5-VL-3B-Instruct", 36, 2048, 11008, 16, 2, 128,
                                                       151936, 1280), 3.75),
        Checkpoint("Qwen/Qwen2.5-VL-7B-Instruct", arch("Qwen/Qwen2.5-VL-7B-Instruct", 28, 3584, 18944, 28, 4, 128,
                                                       152064, 1280), 8.29),
    )

    #: the processor's defaults when its config does not say (the released checkpoints' values)
    default_patch_size: ClassVar[int] = 14
    default_pixels: ClassVar[tuple[int, int]] = (MIN_PIXELS, MAX_PIXELS)
    #: the chat text for one image when the full processor is not available
    fallback_template: ClassVar[str] = TEMPLATE

    def merge_size(self, model) -> int:
        return int(model.config.vision_config.spatial_merge_size)

    def layout(self, image_size: tuple[int, int], processor, model) -> VisualLayout:
        ip = self.image_processor(processor)
        return qwen2_5_vl_layout(
            image_size,
            min_pixels=size_field(ip.size, "shortest_edge") or self.default_pixels[0],
            max_pixels=size_field(ip.size, "longest_edge") or self.default_pixels[1],
            patch_size=int(getattr(ip, "patch_size", self.default_patch_size)),
            merge_size=int(getattr(ip, "merge_size", 2)),
            family=self.name,
        )

    def visual_tokens(self, model, inputs: dict, layout: VisualLayout, row: int = 0):
        tokens = super().visual_tokens(model, inputs, layout, row)
        thw = inputs.get("image_grid_thw")
        merge = self.merge_size(model)
        (grid,) = layout.grids
        if thw is None or thw.shape[0] != inputs["input_ids"].shape[0]:
            raise ValueError(f"{self.label} inputs need image_grid_thw with one row per prompt")
        t, h, w = (int(v) for v in thw[row])
        if (t, h // merge, w // merge) != (1, grid.rows, grid.cols):
            raise RuntimeError(f"image_grid_thw {(t, h, w)} (merge {merge}) disagrees with the layout's "
                               f"{grid.rows}x{grid.cols} grid")
        return tokens

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        if not isinstance(processor, ProcessorParts):
            inputs = super().build_inputs(model, processor, image, prompt)
        else:
            pixels = processor.image_processor(images=image, return_tensors="pt")
            thw = pixels["image_grid_thw"]
            merge = self.merge_size(model)
            n = int(thw[0].prod()) // (merge * merge)
            text = self.fallback_template.format(image="<|image_pad|>" * n, prompt=prompt)
            inputs = dict(processor.tokenizer(text, return_tensors="pt"))
            inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=thw)
        if "mm_token_type_ids" not in inputs:  # needed for the 3-D positions
            image_id = self.tokenizer(processor).convert_tokens_to_ids("<|image_pad|>")
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).to(torch.int32)
        inputs.pop("token_type_ids", None)
        return inputs

    def parse_model_box(self, text: str) -> Box | None:
        return parse_bbox_json(text)

    def format_answer(self, box: Sequence[float], label: str = "object") -> str:
        return format_bbox_json(box, label)

    def tiny_model(self, attn_implementation: str):
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

        rope = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)  # sums to head_dim / 2 = 8
        config = Qwen2_5_VLConfig(
            text_config=text_config(None, rope_parameters=rope),
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=56,
                fullatt_block_indexes=[1],
            ),
            image_token_id=token_id("<|image_pad|>"),
            video_token_id=token_id("<|video_pad|>"),
            vision_start_token_id=token_id("<|vision_start|>"),
            vision_end_token_id=token_id("<|vision_end|>"),
            pad_token_id=0,
        )
        model = instantiate(Qwen2_5_VLForConditionalGeneration, config, attn_implementation)
        # 4–24 tokens: a 112×168 image → image_grid_thw [1, 8, 12] → 4×6
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 24
        )
        return model, ProcessorParts(tiny_tokenizer(CHAT_TEMPLATE), image_processor)
