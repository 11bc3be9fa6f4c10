"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): one dynamic grid, one token per 2×2 merged patches
(28×28 px); 3-D M-RoPE positions (the mechanism slices them like any position embedding)."""

from __future__ import annotations

import torch

from d2pruner.adapters.base import FamilyAdapter, ProcessorParts, VisualTokens
from d2pruner.ops import GridView

#: the Qwen2.5-VL chat template for one image (system prompt as in the official template)
TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
)


class Qwen2_5_VLAdapter(FamilyAdapter):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    max_image_pixels = 12845056  # the processor's default max_pixels

    def _merge(self, model) -> int:
        return int(model.config.vision_config.spatial_merge_size)

    def visual_tokens(self, model, inputs) -> VisualTokens:
        input_ids = inputs["input_ids"]
        pos = self.image_positions(model, input_ids)
        thw = inputs.get("image_grid_thw")
        if thw is None or thw.shape[0] != 1:
            raise ValueError("Qwen2.5-VL inputs need image_grid_thw for exactly one image")
        t, h, w = (int(v) for v in thw[0])
        m = self._merge(model)
        rows, cols = h // m, w // m
        if t != 1 or rows * cols != pos.numel():
            raise ValueError(f"{pos.numel()} image tokens do not match image_grid_thw {(t, h, w)} (merge {m})")
        return VisualTokens(
            positions=pos,
            grids=[GridView("image", rows, cols, 0)],
            protected=torch.zeros(0, dtype=torch.long),
            seq_len=input_ids.shape[1],
        )

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        if not isinstance(processor, ProcessorParts):
            inputs = super().build_inputs(model, processor, image, prompt)
        else:
            pixels = processor.image_processor(images=image, return_tensors="pt")
            thw = pixels["image_grid_thw"]
            merge = self._merge(model)
            n = int(thw[0].prod()) // (merge * merge)
            text = TEMPLATE.format(image="<|image_pad|>" * n, prompt=prompt)
            inputs = dict(processor.tokenizer(text, return_tensors="pt"))
            inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=thw)
        if "mm_token_type_ids" not in inputs:  # 5.23 needs it for the 3-D positions
            image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).to(torch.int32)
        return inputs
