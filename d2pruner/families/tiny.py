"""Shared pieces of the tiny random models (one per family, built in each family's file): an offline byte-level
tokenizer with every family's special tokens, the small text and vision configs, seeded instantiation.

Text model everywhere: 4 layers, hidden 64, 4 query heads over 2 KV heads (GQA). The tokenizer is byte-level
(every UTF-8 byte is one token; vocabulary 270 = the model's) with every family's special tokens, built in code
with the ``tokenizers`` library; nothing is downloaded. The LM head speaks printable ASCII only, so answers are
gibberish that still changes when pruning changes the computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

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


def token_id(name: str) -> int:
    return len(_CONTROL) + 256 + _SPECIALS.index(name)


def text_config(model_type: str | None, **extra) -> dict:
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


CLIP_VISION = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=8,
    projection_dim=32,
)
NEXT_PINPOINTS = [[64, 128], [128, 64], [128, 128]]


def instantiate(cls, config, attn: str):
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


@dataclass
class TinyModel:
    """A tiny model of a real class plus its preprocessing (a transformers processor or ``ProcessorParts``)."""

    name: str
    model: torch.nn.Module
    processor: Any
