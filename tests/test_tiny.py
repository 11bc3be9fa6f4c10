"""Tiny models: real classes, deterministic weights, offline tokenizer and preprocessing."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_NAMES

from d2pruner.families import TINY_NAMES, build_tiny, family_for
from d2pruner.families.tiny import VOCAB_SIZE, tiny_tokenizer

CLASSES = {
    "tiny-llava": "LlavaForConditionalGeneration",
    "tiny-llava-next": "LlavaNextForConditionalGeneration",
    "tiny-qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
    "tiny-internvl": "InternVLForConditionalGeneration",
    "tiny-qwen3-vl": "Qwen3VLForConditionalGeneration",
    "tiny-llava-onevision": "LlavaOnevisionForConditionalGeneration",
}
EXPECTED_GRIDS = {  # for the 112×168 test image
    "tiny-llava": [(8, 8)],
    "tiny-llava-next": [(8, 8), (10, 16)],
    "tiny-qwen2.5-vl": [(4, 6)],
    "tiny-internvl": [(4, 4)] * 5,
    "tiny-qwen3-vl": [(4, 5)],
    "tiny-llava-onevision": [(4, 4), (10, 14)],  # 4 × 5 tiles, 14×20 unpadded, anyres_max_9 → 10×14
}


def test_names():
    assert set(TINY_NAMES) == set(FAMILY_NAMES)
    with pytest.raises(ValueError, match="tiny-llava"):
        build_tiny("tiny-gpt")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_real_class_and_shapes(tiny_models, name, test_image):
    tm = tiny_models.get(name)
    model = tm.model
    assert type(model).__name__ == CLASSES[name]
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    text = model.config.text_config
    assert text.num_hidden_layers == 4 and text.hidden_size == 64
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    family = family_for(model)
    inputs = family.build_inputs(model, tm.processor, test_image, "What is in the image?")
    tokens = family.tokens_for(model, tm.processor, test_image.size, inputs)
    assert tokens.grid_shapes == EXPECTED_GRIDS[name]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], VOCAB_SIZE)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_deterministic_weights(tiny_models, name):
    a = tiny_models.get(name).model.state_dict()
    b = build_tiny(name).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny("tiny-llava")
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_round_trip_and_specials():
    tok = tiny_tokenizer()
    text = "héllo <image> wörld"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<image>") in ids
    for special in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<img>", "<IMG_CONTEXT>", "</img>"):
        assert tok(special)["input_ids"] == [tok.convert_tokens_to_ids(special)]
    assert len(tok) == VOCAB_SIZE
