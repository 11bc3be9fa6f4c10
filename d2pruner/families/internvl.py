"""InternVL3 / 3.5 "-hf" (``InternVLForConditionalGeneration``): square tiles of s×s tokens each (16×16 for 448 px
tiles), row-major, plus a thumbnail tile last when there are several. Each tile is its own grid.

**Processor** (``GotOcr2ImageProcessor`` with ``crop_to_patches=True``, as ``InternVLProcessor`` passes on every
call; ``image_processing_pil_got_ocr2.get_optimal_tiled_canvas`` / ``crop_image_to_patches``, ``modeling_internvl.
pixel_shuffle``): the image is resized (aspect not kept) to a ``cols·448 × rows·448`` canvas chosen by
:func:`internvl_tile_grid`, cut into 448² tiles row-major (``tile0`` …), each giving ``(448/14·0.5)² = 16×16``
tokens (pixel shuffle keeps row-major order); with more than one tile a ``thumbnail`` tile — the whole image
resized to 448² — comes last. The full processor needs torchvision (video processor); without it the tokenizer
and the image processor are used and the image tokens expanded here.

**Grounding**: "Please provide the bounding box coordinate of the region this sentence describes:
<ref>…</ref>", answered ``<ref>…</ref><box>[[x1, y1, x2, y2]]</box>`` on 0–1000 of the whole image (the tiled
canvas is the whole image resized).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from d2pruner.families.base import Checkpoint, Family, ProcessorParts, arch
from d2pruner.families.llava import size_field
from d2pruner.families.tiny import instantiate, text_config, tiny_tokenizer, token_id
from d2pruner.geometry import Box, VisualLayout, build_layout, cells, check_size, to_original
from d2pruner.grounding import first_box, four_numbers

#: InternVL "-hf" processor defaults (tile 448, 1..12 tiles, ``crop_to_patches=True`` set by InternVLProcessor).
DEFAULTS = {"tile_size": 448, "min_tiles": 1, "max_tiles": 12}
#: the chat text for one image when the full processor is not available (the checkpoints' template's output)
TEMPLATE = "<|im_start|>user\n<img>{image}</img>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
#: the InternVL3-hf chat template for one image and text (the processor expands ``<image>``)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_BOX = re.compile(r"<box>\s*\[\s*\[([^\[\]]*)\]")
_BARE = re.compile(r"\[\s*\[([^\[\]]*)\]")


def internvl_tile_grid(
    image_size: tuple[int, int], tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12
) -> tuple[int, int]:
    """InternVL / GOT-OCR2 dynamic tiling: ``(num_columns, num_rows)`` for an image ``(width, height)``.

    Same rule as ``get_optimal_tiled_canvas``: the tile arrangement (``min_tiles ≤ cols·rows ≤ max_tiles``,
    sorted by tile count) whose aspect ratio is closest to the image's; on a tie the later (more tiles)
    wins while the image area exceeds half the arrangement's area.
    """
    width, height = image_size
    arrangements = sorted(
        ((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles),
        key=lambda a: a[0] * a[1],
    )
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in arrangements:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def internvl_layout(
    image_size: tuple[int, int],
    *,
    tile_size: int = 448,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    patch_size: int = 14,
    downsample_ratio: float = 0.5,
    crop_to_patches: bool = True,
) -> VisualLayout:
    """InternVL's layout of an image of ``image_size`` (width, height): grids ``"tile0"`` … and ``"thumbnail"``
    (see the module docstring); the model frame is the tiled canvas (the whole image). With
    ``crop_to_patches=False`` or ``max_tiles ≤ 1`` the whole image is one 448² tile."""
    w, h = check_size(image_size)
    if crop_to_patches and max_tiles > 1:
        cols, rows = internvl_tile_grid((w, h), tile_size, min_tiles, max_tiles)
    else:
        cols, rows = 1, 1
    side = int(tile_size // patch_size * downsample_ratio)
    cell = tile_size / side
    canvas_w, canvas_h = cols * tile_size, rows * tile_size
    scale = (w / canvas_w, h / canvas_h)
    parts: list[tuple] = []
    tiles: list[Box] = []
    for i in range(cols * rows):
        tx, ty = (i % cols) * tile_size, (i // cols) * tile_size
        reg = to_original(cells(side, side, cell, cell, tx, ty), (0.0, 0.0), scale, (w, h))
        parts.append((f"tile{i}", side, side, False, reg))
        tiles.append((tx * scale[0], ty * scale[1], (tx + tile_size) * scale[0], (ty + tile_size) * scale[1]))
    if use_thumbnail and cols * rows > 1:
        reg = to_original(cells(side, side, cell, cell), (0.0, 0.0), (w / tile_size, h / tile_size), (w, h))
        parts.append(("thumbnail", side, side, False, reg))
    return build_layout("internvl", (w, h), parts, (canvas_w, canvas_h), (0.0, 0.0), scale, (canvas_w, canvas_h),
                        tuple(tiles))


def _single(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


class InternVL(Family):
    name: ClassVar[str] = "internvl"
    label: ClassVar[str] = "InternVL"
    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    model_class: ClassVar[str] = "InternVLForConditionalGeneration"
    tiny_name: ClassVar[str] = "tiny-internvl"
    name_hints: ClassVar[tuple[str, ...]] = ("internvl",)
    grounding_template: ClassVar[str] = (
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>{expr}</ref>"
    )
    box_units: ClassVar[float | None] = 1000.0
    box_frame: ClassVar[str] = "0–1000 of the whole image"
    dynamic_prior_roles: ClassVar[frozenset[str]] = frozenset({"tiles"})
    needs_torchvision: ClassVar[bool] = True
    # InternVL3-{1B,2B,8B}-hf language models are Qwen2.5-{0.5B,1.5B,7B}: 24 × 896 / FFN 4864 / 14 heads / 2 KV /
    # head_dim 64; 28 × 1536 / 8960 / 12 / 2 / 128; 28 × 3584 / 18944 / 28 / 4 / 128; vocabulary 151674.
    # 256 visual tokens per 448 × 448 tile (16 × 16 after pixel shuffle); dynamic tiling adds 256 per tile.
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = (
        Checkpoint("OpenGVLab/InternVL3-1B-hf", arch("OpenGVLab/InternVL3-1B-hf", 24, 896, 4864, 14, 2, 64, 151674,
                                                     256), 0.94),
        Checkpoint("OpenGVLab/InternVL3-2B-hf", arch("OpenGVLab/InternVL3-2B-hf", 28, 1536, 8960, 12, 2, 128, 151674,
                                                     256), 2.09),
        Checkpoint("OpenGVLab/InternVL3-8B-hf", arch("OpenGVLab/InternVL3-8B-hf", 28, 3584, 18944, 28, 4, 128,
                                                     151674, 256), 7.94),
    )

    def tile_side(self, model) -> int:
        """Tokens per tile side: (tile size / patch size) · downsample ratio."""
        vc = model.config.vision_config
        return round(_single(vc.image_size) // _single(vc.patch_size) * model.config.downsample_ratio)

    def layout(self, image_size: tuple[int, int], processor, model) -> VisualLayout:
        ip = self.image_processor(processor)
        return internvl_layout(
            image_size,
            tile_size=size_field(ip.size, "height") or DEFAULTS["tile_size"],
            min_tiles=int(getattr(ip, "min_patches", DEFAULTS["min_tiles"])),
            max_tiles=int(getattr(ip, "max_patches", DEFAULTS["max_tiles"])),
            patch_size=_single(model.config.vision_config.patch_size),
            downsample_ratio=float(model.config.downsample_ratio),
        )

    def prior_role(self, grid_name: str) -> str:
        return "tiles" if grid_name.startswith("tile") else grid_name

    def tile_arrangement(self, layout: VisualLayout) -> tuple[int, int]:
        if not layout.tiles:
            return (1, 1)
        return (len({round(t[1], 3) for t in layout.tiles}), len({round(t[0], 3) for t in layout.tiles}))

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        if not isinstance(processor, ProcessorParts):
            return super().build_inputs(model, processor, image, prompt)
        # InternVLProcessor passes crop_to_patches=True on every call, whatever preprocessor_config.json says (the
        # published -hf checkpoints ship False)
        pixel_values = processor.image_processor(images=image, crop_to_patches=True, return_tensors="pt")[
            "pixel_values"
        ]
        n = pixel_values.shape[0] * self.tile_side(model) ** 2
        text = TEMPLATE.format(image="<IMG_CONTEXT>" * n, prompt=prompt)
        inputs = dict(processor.tokenizer(text, return_tensors="pt"))
        inputs["pixel_values"] = pixel_values
        return inputs

    def parse_model_box(self, text: str) -> Box | None:
        """The first box inside the first ``<box>``; without ``<box>`` markup a bare ``[[…]]``, else the first
        bracketed group of four numbers."""
        if not isinstance(text, str) or not text.strip():
            return None
        m = _BOX.search(text)
        if m is None and "<box>" not in text:
            m = _BARE.search(text)
        if m is not None:
            return four_numbers(m.group(1))
        return None if "<box>" in text else first_box(text)

    def format_answer(self, box: Sequence[float], label: str = "object") -> str:
        coords = ", ".join(str(round(v)) for v in box)
        return f"<ref>{label}</ref><box>[[{coords}]]</box>"

    def tiny_model(self, attn_implementation: str):
        from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

        config = InternVLConfig(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=[64, 64],
                patch_size=[8, 8],
            ),
            text_config=text_config("qwen2"),
            image_token_id=token_id("<IMG_CONTEXT>"),
            image_seq_length=16,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            pad_token_id=0,
        )
        model = instantiate(InternVLForConditionalGeneration, config, attn_implementation)
        # 64 px tiles, patch 8, downsample 0.5 → 4×4 tokens per tile, up to 4 tiles + thumbnail
        image_processor = GotOcr2ImageProcessorPil(
            size={"height": 64, "width": 64}, crop_to_patches=True, min_patches=1, max_patches=4
        )
        return model, ProcessorParts(tiny_tokenizer(CHAT_TEMPLATE), image_processor)
