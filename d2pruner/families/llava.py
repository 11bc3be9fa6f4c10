"""LLaVA-1.5 (``LlavaForConditionalGeneration``, llava-hf checkpoints): one square grid of image tokens, 24×24 for
CLIP ViT-L/14 at 336 px.

**Processor** (``LlavaImageProcessor``, transformers 5.23–5.24: ``image_processing_pil_llava.py`` +
``image_transforms.get_resize_output_image_size`` / ``center_crop``): the shortest edge is resized to 336 (long edge
``int(336 · long / short)``), then a 336² centre crop with ``top = (h' − 336) // 2``; the tokens see only the crop.
``do_pad=True`` replays the original LLaVA repository's ``pad_to_square`` instead (pad the short side
symmetrically, then resize): tokens wholly in the padding get NaN regions. ``vision_feature_select_strategy=
"default"`` drops CLS, so the token count is ``(crop / patch)²``.

**Grounding**: "Please provide the bounding box coordinate of the region this sentence describes: …", answered as
``[0.61, 0.36, 0.92, 0.83]``, 0–1 relative to the processed 336² image the model saw. *The frame is disputed*:
LLaVA-1.5 was trained on images padded to a square (``image_aspect_ratio="pad"``), so its numbers refer to the
padded square, but the llava-hf processor centre-crops (``do_center_crop=True``, ``do_pad=False`` in the released
``preprocessor_config.json``), so the model running here never sees the padded square — only the crop. We take the
frame of the image the model actually saw: the centre crop (a box outside the crop cannot be expressed; a
predicted box maps back inside the crop's footprint). With ``do_pad=True`` in the processor (and padded inputs) the
layout follows the padded frame instead.
"""

from __future__ import annotations

from typing import ClassVar

from d2pruner.families.base import Checkpoint, Family, arch
from d2pruner.families.tiny import CLIP_VISION, instantiate, text_config, tiny_tokenizer, token_id
from d2pruner.geometry import VisualLayout, build_layout, cells, check_size, to_original

#: the LLaVA-1.5 chat template for one image and text (the same output as the checkpoints' template)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """``get_resize_output_image_size(default_to_square=False)``: returns ``(new_width, new_height)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def llava_layout(
    image_size: tuple[int, int],
    *,
    crop_size: int = 336,
    shortest_edge: int = 336,
    patch_size: int = 14,
    do_center_crop: bool = True,
    do_pad: bool = False,
) -> VisualLayout:
    """LLaVA-1.5's layout of an image of ``image_size`` (width, height): one ``(crop/patch)²`` grid ``"image"``
    (see the module docstring); the model frame is the processed crop (or the padded square with ``do_pad``)."""
    w, h = check_size(image_size)
    if do_pad:
        side = max(w, h)
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        rw, rh = shortest_edge_size(side, side, shortest_edge)
        # padded-square pixel u ↦ original u − pad; resized ↦ padded: · side / r
        sx, sy = side / rw, side / rh
        ox, oy = -float(pad_x), -float(pad_y)
    else:
        rw, rh = shortest_edge_size(w, h, shortest_edge)
        sx, sy = w / rw, h / rh
        ox = oy = 0.0
    if do_center_crop:
        left, top = (rw - crop_size) // 2, (rh - crop_size) // 2  # floor, also when negative (pads)
        pw, ph = crop_size, crop_size
    else:
        left = top = 0
        pw, ph = rw, rh
    rows, cols = ph // patch_size, pw // patch_size
    origin = (ox + sx * left, oy + sy * top)
    scale = (sx, sy)
    reg = to_original(cells(rows, cols, patch_size, patch_size), origin, scale, (w, h))
    return build_layout("llava", (w, h), [("image", rows, cols, False, reg)], (pw, ph), origin, scale, (rw, rh))


def size_field(size, key: str):
    """``size[key]`` of a processor size (a dict or a ``SizeDict``), None when absent."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


class Llava(Family):
    name: ClassVar[str] = "llava"
    label: ClassVar[str] = "LLaVA-1.5"
    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    model_class: ClassVar[str] = "LlavaForConditionalGeneration"
    tiny_name: ClassVar[str] = "tiny-llava"
    name_hints: ClassVar[tuple[str, ...]] = ("llava-1.5", "llava-v1.5", "llava")
    box_units: ClassVar[float | None] = 1.0
    box_frame: ClassVar[str] = "0–1 of the processed 336² image the model saw (the centre crop; disputed, see the docs)"
    paper_localization_layer: ClassVar[int] = 5  # the paper: K = 5 for LLaVA(-1.5) localization
    # Vicuna-7B v1.5 = LLaMA-2-7B shape (32 × 4096, FFN 11008, 32 heads, MHA, head_dim 128); Vicuna-13B v1.5 =
    # LLaMA-2-13B (40 × 5120, FFN 13824, 40 heads); llava-hf adds <image> and <pad> and pads the vocabulary to 32064.
    # 24 × 24 = 576 visual tokens (CLIP ViT-L/14 at 336 px).
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = (
        Checkpoint("llava-hf/llava-1.5-7b-hf", arch("llava-hf/llava-1.5-7b-hf", 32, 4096, 11008, 32, 32, 128,
                                                    32064, 576), 7.06),
        Checkpoint("llava-hf/llava-1.5-13b-hf", arch("llava-hf/llava-1.5-13b-hf", 40, 5120, 13824, 40, 40, 128,
                                                     32064, 576), 13.35),
    )

    def layout(self, image_size: tuple[int, int], processor, model) -> VisualLayout:
        ip = self.image_processor(processor)
        return llava_layout(
            image_size,
            shortest_edge=size_field(ip.size, "shortest_edge") or 336,
            crop_size=size_field(getattr(ip, "crop_size", None), "height") or 336,
            do_center_crop=bool(getattr(ip, "do_center_crop", True)),
            do_pad=bool(getattr(ip, "do_pad", False)),
            patch_size=int(model.config.vision_config.patch_size),
        )

    def tiny_model(self, attn_implementation: str):
        from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

        config = LlavaConfig(
            vision_config=dict(CLIP_VISION),
            text_config=text_config("llama"),
            image_token_index=token_id("<image>"),
            image_seq_length=64,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            pad_token_id=0,
        )
        model = instantiate(LlavaForConditionalGeneration, config, attn_implementation)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=True
        )
        return model, LlavaProcessor(image_processor=image_processor, **tiny_processor_args())


def tiny_processor_args() -> dict:
    """What the tiny LlavaProcessor and LlavaNextProcessor share: the offline tokenizer and patch geometry (CLIP
    64 px / patch 8 → 8×8 tokens per view)."""
    return dict(
        tokenizer=tiny_tokenizer(CHAT_TEMPLATE),
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
