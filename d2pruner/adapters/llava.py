"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one square grid of image tokens (24×24 for 336 px / 14)."""

from __future__ import annotations

import math

import torch

from d2pruner.adapters.base import FamilyAdapter, VisualTokens
from d2pruner.ops import GridView


class LlavaAdapter(FamilyAdapter):
    name = "llava"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"

    def layout_overrides(self, model) -> dict:
        return {"patch_size": int(model.config.vision_config.patch_size)}

    def visual_tokens(self, model, inputs) -> VisualTokens:
        input_ids = inputs["input_ids"]
        pos = self.image_positions(model, input_ids)
        side = math.isqrt(pos.numel())
        if side * side != pos.numel():
            raise ValueError(f"{pos.numel()} image tokens do not form a square grid")
        return VisualTokens(
            positions=pos,
            grids=[GridView("image", side, side, 0)],
            protected=torch.zeros(0, dtype=torch.long),
            seq_len=input_ids.shape[1],
        )
