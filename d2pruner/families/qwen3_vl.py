"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's dynamic grid with 16-px patches (one token per 2×2
merged patches = 32×32 px), interleaved M-RoPE, and **DeepStack**: features of intermediate vision layers are added
to the visual tokens' hidden states after the first LLM layers.

**Processor** (``Qwen3VLProcessor``; image processor ``Qwen2VLImageProcessor`` with ``patch_size=16``,
``merge_size=2``; the checkpoints' ``size`` is ``shortest_edge`` 65 536 / ``longest_edge`` 16 777 216 pixels):
``smart_resize`` with factor 32, resize only, grid ``(h̄/32, w̄/32)`` row-major (the layout of Qwen2.5-VL with
another factor). The full processor needs torchvision (video processor); without it the tokenizer and the image
processor are used and the image tokens expanded here. ``mm_token_type_ids`` is required for the 3-D positions.

**DeepStack and pruning at layer K.** The vision tower returns one extra feature map per entry of
``vision_config.deepstack_visual_indexes`` (3 in the released checkpoints); the text model adds map ``i`` to the
visual tokens' hidden states right after decoder layer ``i`` (``Qwen3VLTextModel._deepstack_process(hidden,
visual_pos_masks, features)``). Pruning from layer K at the paper's K = 2 leaves the injection after layer 2 acting
on a pruned sequence. We keep the model exact for what it keeps: the injection after a layer ≥ K adds, to every
kept visual token, *its own* features (the rows of the map at the kept tokens, per batch row), and nothing to
filler slots — so a pruned run equals running the unpruned model with the pruned tokens' hidden states removed
from layer K on. Injections after layers < K see the full sequence and are unchanged; the hidden states a method
selects from (entering layer K) include them, as the model computes them. The hooks do this by wrapping that one
decoder method on this model instance for the duration of a ``prune`` context (:attr:`Qwen3VL.feature_injection`;
removed on exit), and refuse to prune at such a K when the method is not there (a renamed internal must fail
loudly, not silently skip features). Allowing only K past the injection layers was the alternative; it would
forbid the paper's K = 2.

**Grounding**: the same prompt as Qwen2.5-VL; Qwen3-VL answers ``[{"bbox_2d": [x1, y1, x2, y2], …}]`` on a
*relative 0–1000* scale of the image (not pixels as Qwen2.5-VL).

**Chat text without the full processor**: ``<|im_start|>user\\n<|vision_start|>…<|vision_end|>prompt<|im_end|>\\n
<|im_start|>assistant\\n`` — Qwen3-VL's template adds no default system prompt (unlike Qwen2.5-VL's). No real
checkpoint files of Qwen3-VL are available here: this reading of the template, like the checkpoint table, comes
from public copies of the configs and is marked as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from d2pruner.families.base import Checkpoint, ProcessorParts, arch
from d2pruner.families.qwen2_5_vl import Qwen2_5_VL
from d2pruner.families.tiny import instantiate, text_config, tiny_tokenizer, token_id

#: ``size`` of the Qwen3-VL checkpoints' ``preprocessor_config.json`` (pixels)
MIN_PIXELS = 65536
MAX_PIXELS = 16777216
TEMPLATE = "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
#: the Qwen3-VL chat template for one image and text (no default system prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen3VL(Qwen2_5_VL):
    name: ClassVar[str] = "qwen3_vl"
    label: ClassVar[str] = "Qwen3-VL"
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_vl",)
    model_class: ClassVar[str] = "Qwen3VLForConditionalGeneration"
    tiny_name: ClassVar[str] = "tiny-qwen3-vl"
    name_hints: ClassVar[tuple[str, ...]] = ("qwen3-vl", "qwen3_vl", "qwen3vl")
    box_units: ClassVar[float | None] = 1000.0
    box_frame: ClassVar[str] = "0–1000 of the image (relative)"
    default_patch_size: ClassVar[int] = 16
    default_pixels: ClassVar[tuple[int, int]] = (MIN_PIXELS, MAX_PIXELS)
    fallback_template: ClassVar[str] = TEMPLATE
    #: the decoder method that adds per-visual-token features after its first layers (see the module docstring)
    feature_injection: ClassVar[str | None] = "_deepstack_process"
    # Public copies of the checkpoints' config.json (text_config): Qwen3-VL-2B 28 × 2048, FFN 6144, 16 heads, 8 KV
    # heads, head_dim 128; 4B 36 × 2560, FFN 9728, 32 / 8 heads; 8B 36 × 4096, FFN 12288, 32 / 8 heads; vocabulary
    # 151936; deepstack_visual_indexes [5, 11, 17] (2B, 4B) and [8, 16, 24] (8B). Visual tokens: dynamic, one per
    # 32 × 32 block; 1280 as the typical capped count (as for Qwen2.5-VL).
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = (
        Checkpoint("Qwen/Qwen3-VL-2B-Instruct", arch("Qwen/Qwen3-VL-2B-Instruct", 28, 2048, 6144, 16, 8, 128, 151936,
                                                     1280), 2.1),
        Checkpoint("Qwen/Qwen3-VL-4B-Instruct", arch("Qwen/Qwen3-VL-4B-Instruct", 36, 2560, 9728, 32, 8, 128, 151936,
                                                     1280), 4.4),
        Checkpoint("Qwen/Qwen3-VL-8B-Instruct", arch("Qwen/Qwen3-VL-8B-Instruct", 36, 4096, 12288, 32, 8, 128,
                                                     151936, 1280), 8.8),
    )

    def injected_layers(self, model) -> int:
        """How many decoder layers get DeepStack features added after them (layers 0 … n−1)."""
        return len(getattr(model.config.vision_config, "deepstack_visual_indexes", ()) or ())

    def merge_encoded(self, encoded: Sequence[dict]) -> dict:
        """Per-image features and every DeepStack level's per-image features, joined in row order."""
        first = encoded[0]["image"]
        pooled = [item for e in encoded for item in e["image"].pooler_output]
        levels = len(first.deepstack_features or ())
        deepstack = [[item for e in encoded for item in e["image"].deepstack_features[level]]
                     for level in range(levels)]
        return {"image": type(first)(pooler_output=pooled, deepstack_features=deepstack)}

    def tiny_model(self, attn_implementation: str):
        from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

        # head_dim 16: the sections sum to 8 (the checkpoints' [24, 20, 20] for head_dim 128, scaled and rounded)
        rope = dict(rope_type="default", mrope_section=[4, 2, 2], mrope_interleaved=True, rope_theta=10000.0)
        config = Qwen3VLConfig(
            text_config=text_config("qwen3_vl_text", rope_parameters=rope, head_dim=16),
            vision_config=dict(
                depth=3,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                patch_size=16,
                spatial_merge_size=2,
                temporal_patch_size=2,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0, 1, 2],  # injected after LLM layers 0, 1, 2: K = 1 and 2 prune across them
            ),
            image_token_id=token_id("<|image_pad|>"),
            video_token_id=token_id("<|video_pad|>"),
            vision_start_token_id=token_id("<|vision_start|>"),
            vision_end_token_id=token_id("<|vision_end|>"),
            tie_word_embeddings=False,
        )
        model = instantiate(Qwen3VLForConditionalGeneration, config, attn_implementation)
        # 4–24 tokens: a 112×168 image → smart_resize 128×160 → image_grid_thw [1, 8, 10] → 4×5
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 24
        )
        return model, ProcessorParts(tiny_tokenizer(CHAT_TEMPLATE), image_processor)
