"""One (image, prompt) made ready for the model: inputs, where its visual tokens sit, its token geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d2pruner.analysis.inputs import check_prompt, fit_image, to_rgb
from d2pruner.geometry import VisualLayout
from d2pruner.ops import GridView
from d2pruner.tokens import VisualTokens


@dataclass
class Prepared:
    """One prepared (image, prompt).

    Attributes:
        prompt: the user's prompt; ``question`` the text sent to the model (grounding template applied).
        inputs: the model's forward inputs (batch size 1, on the model's device).
        tokens: where the visual tokens sit; ``layout`` their geometry in the processed image.
        processed_size / original_size: (width, height) preprocessed / as given.
        notes: remarks about this request only (resizing, newline tokens, …).
    """

    prompt: str
    question: str
    inputs: dict
    tokens: VisualTokens
    layout: VisualLayout
    processed_size: tuple[int, int]
    original_size: tuple[int, int]
    notes: list[str]

    @property
    def grids(self) -> list[GridView]:
        return list(self.tokens.grids)

    @property
    def candidate_tokens(self) -> np.ndarray:
        return np.asarray(self.layout.grid_tokens, dtype=np.int64)

    @property
    def regions(self) -> np.ndarray:
        return rescale(self.layout.regions[self.candidate_tokens], self.processed_size, self.original_size)

    def per_grid(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split an [N] vector into one [rows, cols] array per grid."""
        splits = [g.offset for g in self.tokens.grids[1:]]
        return [a.reshape(s) for a, s in zip(np.split(flat, splits), self.tokens.grid_shapes, strict=True)]

    def box(self, family, answer: str) -> tuple[float, float, float, float] | None:
        """The answer's grounding box in original-image pixels, or None."""
        box = family.parse_box(answer, self.layout)
        if box is None:
            return None
        scaled = rescale(np.asarray(box, dtype=np.float64)[None], self.processed_size, self.original_size)[0]
        return tuple(float(v) for v in scaled)


def prepare(family, model, processor, image, prompt: str, *, grounding: bool = False,
            what: str = "prompt") -> Prepared:
    """Check and normalise the image and prompt, build the model inputs and place the visual tokens."""
    prompt = check_prompt(prompt, what=what)
    rgb = to_rgb(image)
    processed, notes = fit_image(rgb, family.max_image_pixels, family.min_image_side)
    question = family.grounding_prompt(prompt) if grounding else prompt
    device = next(model.parameters()).device
    inputs = family.build_inputs(model, processor, processed, question)
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    layout = family.layout(processed.size, processor, model)
    tokens = family.visual_tokens(model, inputs, layout)
    if tokens.protected.numel():
        notes.append(
            f"{tokens.protected.numel()} newline tokens are not candidates and are always kept; "
            f"n counts the {tokens.num_candidates} grid tokens"
        )
    return Prepared(prompt, question, inputs, tokens, layout, processed.size, rgb.size, notes)


def rescale(boxes: np.ndarray, processed_size, original_size) -> np.ndarray:
    """Boxes [M, 4] from processed-image pixels to original-image pixels."""
    sx = original_size[0] / processed_size[0]
    sy = original_size[1] / processed_size[1]
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])
