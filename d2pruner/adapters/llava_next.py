"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): base grid, then the unpadded high-res grid whose rows
each end with a newline token.

Candidates are the base grid and the high-res grid (two grids); the newline tokens are *protected*: never
candidates, always kept (like text), so ``n`` counts grid tokens only and keep-all is the unmodified model.
"""

from __future__ import annotations

import torch

from d2pruner.adapters.base import FamilyAdapter, VisualTokens
from d2pruner.ops import GridView


class LlavaNextAdapter(FamilyAdapter):
    name = "llava_next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"

    def high_res_shape(self, model, image_size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the unpadded high-res grid, computed with the model file's own helpers."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        vc = model.config.vision_config
        side = vc.image_size // vc.patch_size
        ph, pw = get_anyres_image_grid_shape(list(image_size), model.config.image_grid_pinpoints, vc.image_size)
        dummy = torch.empty(1, ph * side, pw * side)
        unpadded = unpad_image(dummy, torch.tensor(list(image_size)))
        return int(unpadded.shape[1]), int(unpadded.shape[2])

    def layout_overrides(self, model) -> dict:
        return {"patch_size": int(model.config.vision_config.patch_size)}

    def visual_tokens(self, model, inputs) -> VisualTokens:
        input_ids = inputs["input_ids"]
        pos = self.image_positions(model, input_ids)
        vc = model.config.vision_config
        side = vc.image_size // vc.patch_size
        image_sizes = inputs.get("image_sizes")
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT inputs need image_sizes")
        rows, cols = self.high_res_shape(model, tuple(int(v) for v in image_sizes[0]))
        base = side * side
        if pos.numel() == base + rows * (cols + 1):
            hi = pos[base:].view(rows, cols + 1)
            candidates = torch.cat([pos[:base], hi[:, :cols].flatten()])
            protected = hi[:, cols]
            grids = [GridView("base", side, side, 0), GridView("highres", rows, cols, base)]
        elif pos.numel() == base + 1:  # no high-res crops: base grid + one newline
            candidates, protected = pos[:base], pos[base:]
            grids = [GridView("base", side, side, 0)]
        else:
            raise ValueError(
                f"{pos.numel()} image tokens do not match a {side}x{side} base grid plus a "
                f"{rows}x{cols} high-res grid with newlines"
            )
        return VisualTokens(positions=candidates, grids=grids, protected=protected, seq_len=input_ids.shape[1])
