"""InternVL3 / 3.5 "-hf" (``InternVLForConditionalGeneration``): square tiles of s×s tokens each (16×16 for
448 px tiles), row-major, plus a thumbnail tile last when there are several. Each tile is its own grid."""

from __future__ import annotations

import torch

from d2pruner.adapters.base import FamilyAdapter, ProcessorParts, VisualTokens
from d2pruner.ops import GridView

#: the InternVL3-hf chat template for one image
TEMPLATE = "<|im_start|>user\n<img>{image}</img>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


class InternVLAdapter(FamilyAdapter):
    name = "internvl"
    model_types = ("internvl",)
    model_class = "InternVLForConditionalGeneration"

    def tile_side(self, model) -> int:
        """Tokens per tile side: (tile size / patch size) · downsample ratio."""
        vc = model.config.vision_config
        size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        return round(size // patch * model.config.downsample_ratio)

    def layout_overrides(self, model) -> dict:
        vc = model.config.vision_config
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        return {"patch_size": int(patch), "downsample_ratio": float(model.config.downsample_ratio)}

    def visual_tokens(self, model, inputs) -> VisualTokens:
        input_ids = inputs["input_ids"]
        pos = self.image_positions(model, input_ids)
        s = self.tile_side(model)
        tiles, rest = divmod(pos.numel(), s * s)
        if rest:
            raise ValueError(f"{pos.numel()} image tokens are not a whole number of {s}x{s} tiles")
        names = [f"tile {i}" for i in range(tiles)]
        if tiles > 1:
            names[-1] = "thumbnail"
        grids = [GridView(name, s, s, i * s * s) for i, name in enumerate(names)]
        return VisualTokens(
            positions=pos, grids=grids, protected=torch.zeros(0, dtype=torch.long), seq_len=input_ids.shape[1]
        )

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        if not isinstance(processor, ProcessorParts):
            return super().build_inputs(model, processor, image, prompt)
        pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
        n = pixel_values.shape[0] * self.tile_side(model) ** 2
        text = TEMPLATE.format(image="<IMG_CONTEXT>" * n, prompt=prompt)
        inputs = dict(processor.tokenizer(text, return_tensors="pt"))
        inputs["pixel_values"] = pixel_values
        return inputs

