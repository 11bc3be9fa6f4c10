"""Shrunk models of the REAL checkpoints in ``../shared/checkpoints``: the user's ``from_pretrained`` path, offline.

``build_checkpoint(name, out_dir)`` writes a folder that looks like a downloaded checkpoint of the real class: the
real ``config.json`` with only depth and widths shrunk (saved again by ``save_pretrained``), seeded random weights
as ``model.safetensors``, and byte copies of every other file of the shared folder (tokenizer, image processor,
processor config, chat template, generation config). Nothing else is left in the folder.

What is shrunk (and nothing else):

==================  =========================================================================================
text model          ``num_hidden_layers`` → 6 (so every K ≤ 5 can be pruned); ``hidden_size`` → 64 = heads ×
                    ``head_dim`` 16; ``intermediate_size`` → 128; attention heads → 4 with the KV heads → 2 where
                    the real model has GQA (Mistral 32/8, Qwen2.5-VL 16/2, Qwen2 14/2), 4 where it has none
                    (Vicuna 32/32); ``head_dim`` → 16 where the config stores it (Llama / Mistral; Qwen configs
                    derive it from hidden / heads); ``layer_types`` → its first 6 entries (same kinds).
M-RoPE (Qwen2.5-VL) ``mrope_section`` scaled with the head size: [16, 24, 24] · 16/128 = [2, 3, 3], which sums to
                    head_dim / 2 = 8 as it must (each section stays integral: the real sections are multiples of 8).
vision tower        CLIP (LLaVA / NeXT): 3 layers (``vision_feature_layer`` −2 still names a real intermediate
                    layer), hidden 32, intermediate 64, 2 heads. Qwen2.5-VL: depth 4, hidden 32, intermediate
                    64, 2 heads, ``out_hidden_size`` = the text width; ``fullatt_block_indexes`` [7, 15, 23, 31]
                    (full attention every 8th block, windowed in between, last block full) → [1, 3] (every 2nd,
                    windowed blocks 0 and 2 remain, last block full). InternViT: 2 layers, hidden 32,
                    intermediate 64, 2 heads.
==================  =========================================================================================

What is kept exactly as in the real ``config.json`` / processor files (it decides tokens, positions, prompts or
layout): vocabulary size, every special / image token id, pad / bos / eos ids, image size (336 / 448), patch size
(14), ``vision_feature_layer`` and ``vision_feature_select_strategy``, ``image_grid_pinpoints``, ``image_seq_length``,
``downsample_ratio``, ``spatial_merge_size``, ``temporal_patch_size``, ``window_size``, ``tokens_per_second``,
``rope_theta`` and rope type, ``max_position_embeddings``, ``tie_word_embeddings``, the projector activation, and
every processor / tokenizer / chat-template / generation-config file (byte copies).

**Repairs** (:func:`variant` with :data:`INTERNVL_RECIPE`, InternVL only): the reconstructed ``internvl3-1b-hf``
files differ from what the transformers conversion recipe (``models/internvl/convert_internvl_weights_to_hf.py``)
writes in two places that stop the real ``InternVLProcessor`` from working at all — the tokenizer lacks
``video_token`` (``InternVLProcessor`` reads it: AttributeError) and the chat template emits ``<image>`` where the
recipe's emits ``<IMG_CONTEXT>`` (the processor then finds no image placeholder). :data:`INTERNVL_RECIPE` puts the
recipe's values into a copy; the byte-exact folder stays available (``build_checkpoint``) for the tests that show
what the package does with it. :data:`INTERNVL_HUB_PREPROCESSOR` sets ``crop_to_patches`` to ``false``, the value the
recipe's image processor (and so the published ``-hf`` checkpoints) carries — ``InternVLProcessor`` turns tiling on
per call; the reconstruction assumed ``true`` in the file.

Weights are saved in the checkpoint's own dtype (``torch_dtype`` of the real config), seeded (``torch.manual_seed``
inside ``fork_rng``, so the caller's RNG is untouched).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: the shared folder of real checkpoint files: ``<repo root>/../shared/checkpoints``
CHECKPOINTS = ROOT.parent / "shared" / "checkpoints"

TEXT_LAYERS = 6
HEAD_DIM = 16
HEADS = 4
HIDDEN = HEADS * HEAD_DIM  # 64
INTERMEDIATE = 128
VISION = dict(hidden_size=32, intermediate_size=64)
VISION_HEADS = 2
CLIP_LAYERS = 3
QWEN_VISION_DEPTH = 4
QWEN_FULL_ATTENTION_BLOCKS = [1, 3]
INTERNVIT_LAYERS = 2

#: folder → (family, transformers class)
FOLDERS: dict[str, tuple[str, str]] = {
    "llava-1.5-7b-hf": ("llava", "LlavaForConditionalGeneration"),
    "llava-v1.6-vicuna-7b-hf": ("llava_next", "LlavaNextForConditionalGeneration"),
    "llava-v1.6-mistral-7b-hf": ("llava_next", "LlavaNextForConditionalGeneration"),
    "qwen2.5-vl-3b-instruct": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "internvl3-1b-hf": ("internvl", "InternVLForConditionalGeneration"),
}

#: the real processor class each folder's ``AutoProcessor`` must build on the newest stack
PROCESSOR_CLASSES = {
    "llava": "LlavaProcessor",
    "llava_next": "LlavaNextProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "internvl": "InternVLProcessor",
}

#: files of the shared folder that ``save_pretrained`` replaces (the shrunk config, the weights)
_WRITTEN = {"config.json", "model.safetensors"}


@dataclass(frozen=True)
class Shrunk:
    """One built folder: the path a user would pass to ``d2pruner.load``, its family and class."""

    name: str
    path: Path
    family: str
    model_class: str


def available() -> bool:
    return CHECKPOINTS.is_dir()


def _text(text, real_text) -> None:
    """Shrink a text config in place (see the module docstring)."""
    gqa = real_text.num_key_value_heads < real_text.num_attention_heads
    text.num_hidden_layers = TEXT_LAYERS
    text.hidden_size = HIDDEN
    text.intermediate_size = INTERMEDIATE
    text.num_attention_heads = HEADS
    text.num_key_value_heads = 2 if gqa else HEADS
    if getattr(real_text, "head_dim", None) is not None:
        text.head_dim = HEAD_DIM
    if getattr(real_text, "layer_types", None) is not None:
        text.layer_types = list(real_text.layer_types[:TEXT_LAYERS])
    rope = getattr(text, "rope_parameters", None)
    if rope and "mrope_section" in rope:
        real_head_dim = real_text.hidden_size // real_text.num_attention_heads
        section = [s * HEAD_DIM // real_head_dim for s in rope["mrope_section"]]
        if sum(section) * 2 != HEAD_DIM or any(s * real_head_dim != r * HEAD_DIM
                                                 for s, r in zip(section, rope["mrope_section"], strict=True)):
            raise ValueError(f"mrope_section {rope['mrope_section']} does not scale to head_dim {HEAD_DIM}")
        text.rope_parameters = {**rope, "mrope_section": section}


def shrink_config(name: str):
    """The real ``config.json`` of ``name`` (through ``AutoConfig``), depth and widths shrunk."""
    import transformers

    folder = CHECKPOINTS / name
    real = transformers.AutoConfig.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    family = FOLDERS[name][0]
    _text(config.text_config, real.text_config)
    vision = config.vision_config
    for key, value in VISION.items():
        setattr(vision, key, value)
    if family in ("llava", "llava_next"):
        vision.num_hidden_layers = CLIP_LAYERS
        vision.num_attention_heads = VISION_HEADS
    elif family == "qwen2_5_vl":
        vision.depth = QWEN_VISION_DEPTH
        vision.num_heads = VISION_HEADS
        vision.out_hidden_size = HIDDEN
        vision.fullatt_block_indexes = list(QWEN_FULL_ATTENTION_BLOCKS)
    elif family == "internvl":
        vision.num_hidden_layers = INTERNVIT_LAYERS
        vision.num_attention_heads = VISION_HEADS
    # rebuild from the dict, so that values derived in __init__ follow the shrunk fields
    return type(config).from_dict(config.to_dict())


def build_checkpoint(name: str, out_dir: Path, *, seed: int = 0) -> Shrunk:
    """Write the shrunk checkpoint of ``name`` into ``out_dir / name`` (see the module docstring)."""
    import transformers

    family, class_name = FOLDERS[name]
    source = CHECKPOINTS / name
    target = Path(out_dir) / name
    config = shrink_config(name)
    cls = getattr(transformers, class_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    dtype = getattr(config, "dtype", None) or torch.float32
    model = model.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype)))
    model.save_pretrained(target)
    for written in target.iterdir():  # keep exactly: shrunk config, weights, byte copies of the rest
        if written.name not in _WRITTEN:
            written.unlink()
    for path in source.iterdir():
        if path.is_file() and path.name not in _WRITTEN:
            shutil.copyfile(path, target / path.name)
    return Shrunk(name, target, family, class_name)


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _tokenizer_video_token(path: Path) -> None:
    def fix(data):
        data.setdefault("video_token", "<video>")
        data.setdefault("model_specific_special_tokens", {}).setdefault("video_token", "<video>")

    _edit_json(path, fix)


_IMAGE_PLACEHOLDER = ("{{ '<image>\n' }}", "{{ '<IMG_CONTEXT>\n' }}")


def _template_placeholder(path: Path) -> None:
    if path.suffix == ".json":
        _edit_json(path, lambda d: d.update(chat_template=d["chat_template"].replace(*_IMAGE_PLACEHOLDER)))
    else:
        path.write_text(path.read_text().replace(*_IMAGE_PLACEHOLDER))


def _no_crop_to_patches(path: Path) -> None:
    _edit_json(path, lambda d: d.update(crop_to_patches=False))


#: file → edit: the conversion recipe's values where the reconstructed InternVL files differ (module docstring)
INTERNVL_RECIPE = {
    "tokenizer_config.json": _tokenizer_video_token,
    "chat_template.jinja": _template_placeholder,
    "chat_template.json": _template_placeholder,
}
#: ``crop_to_patches: false`` in ``preprocessor_config.json``, as the recipe (and the hub's -hf checkpoints) ship it
INTERNVL_HUB_PREPROCESSOR = {"preprocessor_config.json": _no_crop_to_patches}


def variant(shrunk: Shrunk, out_dir: Path, suffix: str, edits: dict) -> Shrunk:
    """A copy of a built folder (weights hard-linked when possible) with ``edits`` (file → function) applied."""
    target = Path(out_dir) / f"{shrunk.name}-{suffix}"
    target.mkdir(parents=True)
    for path in shrunk.path.iterdir():
        if path.name == "model.safetensors":
            try:
                (target / path.name).hardlink_to(path)
                continue
            except OSError:
                pass
        shutil.copyfile(path, target / path.name)
    for filename, edit in edits.items():
        if (target / filename).is_file():
            edit(target / filename)
    return Shrunk(shrunk.name, target, shrunk.family, shrunk.model_class)


def real_json(name: str, filename: str) -> dict:
    return json.loads((CHECKPOINTS / name / filename).read_text())
