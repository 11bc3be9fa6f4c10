"""Tiny, randomly initialised models of the real transformers classes — offline, deterministic, fast.

Each builder returns a :class:`TinyModel`: the model (a real ``*ForConditionalGeneration`` instance in eval
mode, float32, same weights on every build) and the matching preprocessing:

- ``tiny-llava``       LlavaForConditionalGeneration, CLIP 64 px / patch 8 → 8×8 = 64 visual tokens;
                       a real :class:`~transformers.LlavaProcessor` (CLIP image processor + offline tokenizer).
- ``tiny-llava-next``  LlavaNextForConditionalGeneration, 64 px base tile, pinpoints up to 128×128 → 8×8 base
                       grid + unpadded high-res grid + one newline token per high-res row;
                       a real :class:`~transformers.LlavaNextProcessor`.
- ``tiny-qwen2.5-vl``  Qwen2_5_VLForConditionalGeneration, patch 14, 2×2 merge (one token per 28×28 block),
                       4–24 tokens (a 112×168 image → image_grid_thw [1, 8, 12] → 4×6);
                       :class:`ProcessorParts` (tokenizer + ``Qwen2VLImageProcessorPil``), because the full
                       Qwen processor needs torchvision.
- ``tiny-internvl``    InternVLForConditionalGeneration, 64 px tiles, patch 8, downsample 0.5 → 4×4 tokens per
                       tile, up to 4 tiles + thumbnail; :class:`ProcessorParts` (tokenizer +
                       ``GotOcr2ImageProcessorPil``).

Text model everywhere: 4 layers, hidden 64, 4 query heads over 2 KV heads (GQA). The tokenizer is byte-level
(every UTF-8 byte is one token; vocabulary 270 = the model's) with every family's special tokens, built in
code with the ``tokenizers`` library; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from d2pruner.adapters.base import ProcessorParts

TINY_NAMES = ("tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-internvl")

NUM_LAYERS = 4
# token ids: 0-2 control, 3-258 the 256 bytes, then the special tokens below (shared by all families)
_CONTROL = ["<pad>", "<s>", "</s>"]
_SPECIALS = [
    "<image>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<|endoftext|>",
]
VOCAB_SIZE = len(_CONTROL) + 256 + len(_SPECIALS)  # 270: every id the model can emit decodes to text

LLAVA_CHAT_TEMPLATE = (
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

#: the Qwen2.5-VL chat template for one image and text (same output as the checkpoints' template)
QWEN_CHAT_TEMPLATE = (
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
#: the InternVL3-hf chat template for one image and text (the processor expands ``<image>``)
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyModel:
    """A tiny model of a real class plus its preprocessing (a transformers processor or :class:`ProcessorParts`)."""

    name: str
    model: torch.nn.Module
    processor: Any


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the alphabet of ByteLevel pre-tokenisation)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_tokenizer(chat_template: str | None = None):
    """An offline byte-level ``PreTrainedTokenizerFast`` with every family's special tokens (ids 259–269)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_map = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(_CONTROL)}
    for b in range(256):
        vocab[byte_map[b]] = len(vocab)
    for tok in _SPECIALS:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(_SPECIALS),
    )
    tok.padding_side = "left"
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def _token_id(name: str) -> int:
    return len(_CONTROL) + 256 + _SPECIALS.index(name)


def _text_config(model_type: str | None, **extra) -> dict:
    cfg = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        initializer_range=0.1,  # larger than usual: decisive logits, so greedy decoding has no near-ties
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **extra,
    )
    if model_type is not None:
        cfg["model_type"] = model_type
    return cfg


_CLIP = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=8,
    projection_dim=32,
)
_NEXT_PINPOINTS = [[64, 128], [128, 64], [128, 128]]


def _llava_processor_args() -> dict:
    """What LlavaProcessor and LlavaNextProcessor share here: the offline tokenizer and patch geometry."""
    return dict(
        tokenizer=tiny_tokenizer(LLAVA_CHAT_TEMPLATE),
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def _build_llava(attn: str):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = LlavaConfig(
        vision_config=dict(_CLIP),
        text_config=_text_config("llama"),
        image_token_index=_token_id("<image>"),
        image_seq_length=64,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=0,
    )
    model = _instantiate(LlavaForConditionalGeneration, config, attn)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=True
    )
    processor = LlavaProcessor(image_processor=image_processor, **_llava_processor_args())
    return model, processor


def _build_llava_next(attn: str):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    config = LlavaNextConfig(
        vision_config=dict(_CLIP),
        text_config=_text_config("llama"),
        image_token_index=_token_id("<image>"),
        image_grid_pinpoints=_NEXT_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=64,
        pad_token_id=0,
    )
    model = _instantiate(LlavaNextForConditionalGeneration, config, attn)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_grid_pinpoints=_NEXT_PINPOINTS,
    )
    processor = LlavaNextProcessor(image_processor=image_processor, **_llava_processor_args())
    return model, processor


def _build_qwen2_5_vl(attn: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    rope = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)  # sums to head_dim / 2 = 8
    config = Qwen2_5_VLConfig(
        text_config=_text_config(None, rope_parameters=rope),
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
        image_token_id=_token_id("<|image_pad|>"),
        video_token_id=_token_id("<|video_pad|>"),
        vision_start_token_id=_token_id("<|vision_start|>"),
        vision_end_token_id=_token_id("<|vision_end|>"),
        pad_token_id=0,
    )
    model = _instantiate(Qwen2_5_VLForConditionalGeneration, config, attn)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 24
    )
    return model, ProcessorParts(tiny_tokenizer(QWEN_CHAT_TEMPLATE), image_processor)


def _build_internvl(attn: str):
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
        text_config=_text_config("qwen2"),
        image_token_id=_token_id("<IMG_CONTEXT>"),
        image_seq_length=16,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=0,
    )
    model = _instantiate(InternVLForConditionalGeneration, config, attn)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 64, "width": 64}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    return model, ProcessorParts(tiny_tokenizer(INTERNVL_CHAT_TEMPLATE), image_processor)


def _instantiate(cls, config, attn: str):
    """Build ``cls(config)`` with seeded weights without touching the caller's global RNG state."""
    config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config)
    _speak_printable_bytes(model)
    return model.to(torch.float32).eval()


def _speak_printable_bytes(model) -> None:
    """Zero the LM-head rows of every token but printable ASCII bytes.

    A random LM head tends to emit ``</s>`` first, so every answer would be empty and every pruned answer
    would "agree" with the unpruned one. With these rows at zero (logit exactly 0) the greedy answer is a
    string of printable characters that changes when pruning changes the computation — gibberish, but
    gibberish that shows the mechanics honestly.
    """
    printable = {_byte_token_id(b) for b in range(0x20, 0x7F)}
    silent = [i for i in range(VOCAB_SIZE) if i not in printable]
    with torch.no_grad():
        model.get_output_embeddings().weight[silent] = 0.0


def _byte_token_id(byte: int) -> int:
    return len(_CONTROL) + byte


_BUILDERS = {
    "tiny-llava": _build_llava,
    "tiny-llava-next": _build_llava_next,
    "tiny-qwen2.5-vl": _build_qwen2_5_vl,
    "tiny-internvl": _build_internvl,
}


def build_tiny(name: str, *, attn_implementation: str = "sdpa") -> TinyModel:
    """Build a tiny model by name (see :data:`TINY_NAMES`).

    Arguments:
        name: one of ``tiny-llava``, ``tiny-llava-next``, ``tiny-qwen2.5-vl``, ``tiny-internvl``.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.

    Returns:
        A :class:`TinyModel`; the weights are identical on every call (seed 0).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_NAMES)}")
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
    model, processor = _BUILDERS[name](attn_implementation)
    return TinyModel(name=name, model=model, processor=processor)
