"""Conformance to the real checkpoints' files (``../shared/checkpoints``): models of the real classes built from the
real ``config.json`` files (depth and widths shrunk, see ``tests/checkpoints.py``), saved beside byte copies of the
real tokenizer / processor / chat-template / generation-config files, and taken through exactly a user's path:
``d2pruner.load(folder)`` → ``from_pretrained`` → analyze, grounding, priors (``get_prior`` and the calibration CLI)
and the app (``python app.py --model folder``, newest stack).

What must hold for the real models: LLaVA-1.5 has 576 candidates for every image; LLaVA-NeXT's grids + newlines,
Qwen2.5-VL's grid and InternVL's tiles are what the real processors produce; the model is fed exactly the real
chat template's rendering, with each family's grounding prompt; token regions tile the image; keep-all is the
unmodified model. Each finding the real files revealed (F1…) has its test below, named in a comment.

Skipped, with the reason, only when the shared folder is absent — and never in CI (``$CI`` set: absence fails).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path

import checkpoints as ck
import numpy as np
import pytest
import torch
from PIL import Image

import d2pruner
from d2pruner.families import ProcessorParts
from d2pruner.pruning import prune

NAMES = tuple(ck.FOLDERS)
FAMILY = {name: family for name, (family, _) in ck.FOLDERS.items()}
NEWEST = importlib.util.find_spec("torchvision") is not None  # the real Qwen2.5-VL / InternVL processors need it
PROMPT = "What is in the image?"
EXPRESSION = "the red square"
IMAGE_TOKENS = {"llava": "<image>", "llava_next": "<image>", "qwen2_5_vl": "<|image_pad|>", "internvl": "<IMG_CONTEXT>"}
#: images (width, height) for the analysis runs: small, not square, so that every family shows its layout
RUN_SIZE = {"llava": (200, 150), "llava_next": (200, 150), "qwen2_5_vl": (200, 150), "internvl": (300, 150)}


@pytest.fixture(scope="session", autouse=True)
def _shared_checkpoints():
    if not ck.available():
        reason = f"the real checkpoint files are not at {ck.CHECKPOINTS} (../shared/checkpoints of the repository)"
        if os.environ.get("CI"):
            pytest.fail(f"in CI {reason}")
        pytest.skip(reason)


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A deterministic RGB image of ``size`` (width, height) with some structure."""
    w, h = size
    rng = np.random.RandomState(seed)
    arr = (rng.rand(h, w, 3) * 255).astype("uint8")
    arr[h // 5 : h // 2, w // 6 : w // 2] = (250, 30, 30)
    return Image.fromarray(arr)


class _Built:
    """Each shrunk checkpoint built once per session; analyzers loaded once per folder."""

    def __init__(self, root: Path, priors: Path):
        self.root, self.priors = root, priors
        self._built: dict[str, ck.Shrunk] = {}
        self._analyzers: dict[Path, d2pruner.Analyzer] = {}

    def byte_copy(self, name: str) -> ck.Shrunk:
        """The folder with byte copies of every real file (config and weights are the shrunk model's)."""
        if name not in self._built:
            self._built[name] = ck.build_checkpoint(name, self.root)
        return self._built[name]

    def derived(self, name: str, suffix: str, edits: dict) -> ck.Shrunk:
        key = f"{name}-{suffix}"
        if key not in self._built:
            self._built[key] = ck.variant(self.byte_copy(name), self.root, suffix, edits)
        return self._built[key]

    def folder(self, name: str) -> ck.Shrunk:
        """The folder the conformance tests use: the byte copy; for InternVL the recipe-repaired one."""
        if FAMILY[name] == "internvl":
            return self.derived(name, "recipe", ck.INTERNVL_RECIPE)
        return self.byte_copy(name)

    def analyzer(self, name: str) -> d2pruner.Analyzer:
        return self.load(self.folder(name).path)

    def load(self, path: Path) -> d2pruner.Analyzer:
        if path not in self._analyzers:
            analyzer = d2pruner.load(str(path))
            analyzer.prior_dirs = [self.priors]  # never write into the repository's priors
            self._analyzers[path] = analyzer
        return self._analyzers[path]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> _Built:
    return _Built(tmp_path_factory.mktemp("checkpoints"), tmp_path_factory.mktemp("checkpoint-priors"))


@pytest.fixture(scope="session")
def calibration_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibration-images")
    for i, size in enumerate([(96, 48), (48, 96), (80, 80)]):  # InternVL: 2 tiles + thumbnail, or 1 tile
        photo(size, seed=10 + i).save(folder / f"img{i}.png")
    return folder


# ---------------------------------------------------------------------------------------------------- helpers
def reference_processor(analyzer):
    """The real processor when it could be built, else None (oldest stack: Qwen2.5-VL / InternVL)."""
    return None if isinstance(analyzer.processor, ProcessorParts) else analyzer.processor


def image_processor(analyzer):
    return analyzer.processor.image_processor


def tokenizer(analyzer):
    return analyzer.processor.tokenizer


def messages(text: str, image=None) -> list[dict]:
    item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [item, {"type": "text", "text": text}]}]


def real_rendering(analyzer, folder: Path, image, text: str) -> torch.Tensor:
    """[L] token ids of the real chat template's rendering of (image, text), tokenised as the processor does.

    With the real processor: ``processor.apply_chat_template(..., tokenize=True)``. Without it (oldest stack, Qwen /
    InternVL): the folder's ``chat_template.jinja`` rendered by the tokenizer, its one image placeholder expanded
    as ``Qwen2_5_VLProcessor`` / ``InternVLProcessor`` expand it (grid or tile count from the real image
    processor), then tokenised."""
    processor = reference_processor(analyzer)
    if processor is not None:
        out = processor.apply_chat_template(
            messages(text, image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        return out["input_ids"][0]
    tok = tokenizer(analyzer)
    template = (folder / "chat_template.jinja").read_text()
    rendered = tok.apply_chat_template(messages(text), chat_template=template, add_generation_prompt=True,
                                       tokenize=False)
    config = analyzer.model.config
    if analyzer.family == "qwen2_5_vl":
        thw = image_processor(analyzer)(images=image, return_tensors="pt")["image_grid_thw"][0]
        count = int(thw.prod()) // config.vision_config.spatial_merge_size**2
        rendered = rendered.replace("<|image_pad|>", "<|image_pad|>" * count, 1)
    else:
        tiles = image_processor(analyzer)(images=image, crop_to_patches=True, return_tensors="pt")["pixel_values"]
        context = "<IMG_CONTEXT>" * (config.image_seq_length * tiles.shape[0])
        rendered = rendered.replace("<IMG_CONTEXT>", f"<img>{context}</img>", 1)
    return tok(rendered, return_tensors="pt")["input_ids"][0]


def real_token_count(analyzer, image) -> tuple[int, dict]:
    """Image placeholder tokens the real preprocessing produces for ``image``, and what it reports besides:
    ``image_grid_thw`` (Qwen2.5-VL), ``tiles`` (InternVL), ``image_sizes`` (LLaVA-NeXT)."""
    processor = reference_processor(analyzer)
    family = analyzer.family
    extra: dict = {}
    if processor is not None:
        text = processor.apply_chat_template(messages(PROMPT), add_generation_prompt=True, tokenize=False)
        out = processor(images=image, text=text, return_tensors="pt")
        token_id = tokenizer(analyzer).convert_tokens_to_ids(IMAGE_TOKENS[family])
        count = int((out["input_ids"][0] == token_id).sum())
    else:
        out = image_processor(analyzer)(images=image, return_tensors="pt", **(
            {"crop_to_patches": True} if family == "internvl" else {}))
        count = None
    if family == "qwen2_5_vl":
        extra["image_grid_thw"] = tuple(int(v) for v in out["image_grid_thw"][0])
        merge = analyzer.model.config.vision_config.spatial_merge_size
        count = count if count is not None else int(out["image_grid_thw"][0].prod()) // merge**2
    elif family == "internvl":
        extra["tiles"] = int(out["pixel_values"].shape[0])
        count = count if count is not None else extra["tiles"] * analyzer.model.config.image_seq_length
    elif family == "llava_next":
        extra["image_sizes"] = tuple(int(v) for v in out["image_sizes"][0])
    return count, extra


def analyzer_layout(analyzer, size: tuple[int, int]):
    """The layout the analyzer builds for an image of ``size`` (its own call, without running the model)."""
    return analyzer.model_family.layout(size, analyzer.processor, analyzer.model)


def grid_regions(layout, name: str) -> np.ndarray:
    """[rows, cols, 4] regions of one grid of a layout (original pixels)."""
    return layout.regions[layout.grid(name).token_indices()]


class _FedIds:
    """Records the ``input_ids`` of the first forward of the model (what the analyzer feeds it)."""

    def __init__(self, model):
        self.ids = None
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if self.ids is None and isinstance(ids, torch.Tensor) and ids.shape[-1] > 1:
            self.ids = ids[0].detach().cpu().clone()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def assert_tiles(regions: np.ndarray, box, what: str, *, margin: float = 0.0) -> None:
    """[rows, cols, 4] cells form a gapless, non-overlapping grid whose union is ``box`` (each edge within
    ``margin`` pixels, inside it)."""
    assert np.isfinite(regions).all(), f"{what}: cells without a region"
    x1, y1, x2, y2 = (regions[..., i] for i in range(4))
    assert np.ptp(x1, axis=0).max() == 0 and np.ptp(x2, axis=0).max() == 0, f"{what}: ragged columns"
    assert np.ptp(y1, axis=1).max() == 0 and np.ptp(y2, axis=1).max() == 0, f"{what}: ragged rows"
    np.testing.assert_allclose(x2[0, :-1], x1[0, 1:], atol=1e-9, err_msg=f"{what}: columns overlap or leave gaps")
    np.testing.assert_allclose(y2[:-1, 0], y1[1:, 0], atol=1e-9, err_msg=f"{what}: rows overlap or leave gaps")
    assert (x2 > x1).all() and (y2 > y1).all(), f"{what}: empty cells"
    union = np.array([x1.min(), y1.min(), x2.max(), y2.max()])
    box = np.asarray(box, dtype=np.float64)
    inside = np.array([union[0] - box[0], union[1] - box[1], box[2] - union[2], box[3] - union[3]])
    assert (inside >= -1e-9).all() and (inside <= margin + 1e-9).all(), f"{what}: covers {union}, not {box}"


# ---------------------------------------------------------------------------------------------------- the folders
@pytest.mark.parametrize("name", NAMES)
def test_shrunk_folder_keeps_what_decides_tokens(built, name):
    """Only config.json (shrunk) and the weights are written; every other real file is a byte copy; every field
    that decides tokens, positions, prompts or layout is the real one."""
    import transformers

    shrunk = built.byte_copy(name)
    source = ck.CHECKPOINTS / name
    real_files = {p.name for p in source.iterdir() if p.is_file()}
    assert {p.name for p in shrunk.path.iterdir()} == real_files | {"model.safetensors"}
    for filename in real_files - {"config.json"}:
        assert (shrunk.path / filename).read_bytes() == (source / filename).read_bytes(), filename
    real = transformers.AutoConfig.from_pretrained(source)
    small = transformers.AutoConfig.from_pretrained(shrunk.path)
    assert type(small) is type(real) and small.architectures == real.architectures == [shrunk.model_class]
    kept_top = ["image_token_id", "vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints",
                "image_seq_length", "downsample_ratio", "tie_word_embeddings", "projector_hidden_act",
                "video_token_id", "vision_start_token_id", "vision_end_token_id", "use_image_newline_parameter"]
    kept_text = ["vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "max_position_embeddings",
                 "rms_norm_eps", "hidden_act", "sliding_window", "use_sliding_window"]
    kept_vision = ["image_size", "patch_size", "spatial_merge_size", "temporal_patch_size", "window_size",
                   "tokens_per_second", "num_channels", "hidden_act", "use_mean_pooling", "norm_type"]
    for obj_small, obj_real, keys in ((small, real, kept_top), (small.text_config, real.text_config, kept_text),
                                      (small.vision_config, real.vision_config, kept_vision)):
        for key in keys:
            assert getattr(obj_small, key, None) == getattr(obj_real, key, None), key
    t, rt = small.text_config, real.text_config
    for key in ("rope_theta", "rope_type", "type"):
        assert (t.rope_parameters or {}).get(key) == (rt.rope_parameters or {}).get(key), key
    assert t.num_hidden_layers == ck.TEXT_LAYERS >= 6 and t.hidden_size == ck.HIDDEN
    assert (t.num_key_value_heads < t.num_attention_heads) == (rt.num_key_value_heads < rt.num_attention_heads)
    if getattr(rt, "layer_types", None) is not None:
        assert t.layer_types == rt.layer_types[: ck.TEXT_LAYERS]
    if "mrope_section" in (rt.rope_parameters or {}):
        head_dim = t.hidden_size // t.num_attention_heads
        assert sum(t.rope_parameters["mrope_section"]) * 2 == head_dim
        assert [s * 8 for s in t.rope_parameters["mrope_section"]] == rt.rope_parameters["mrope_section"]
    v = small.vision_config
    if FAMILY[name] == "qwen2_5_vl":
        assert v.depth - 1 in v.fullatt_block_indexes and len(v.fullatt_block_indexes) < v.depth
        assert all(0 <= i < v.depth for i in v.fullatt_block_indexes)
    elif getattr(small, "vision_feature_layer", None) is not None:
        assert -v.num_hidden_layers <= small.vision_feature_layer < 0  # e.g. -2: a real intermediate layer


@pytest.mark.parametrize("name", NAMES)
def test_load_takes_the_users_path(built, name):
    """``d2pruner.load(folder)`` builds the real class from the folder, with the real processor (newest stack) or
    the documented fallback (oldest stack, Qwen2.5-VL / InternVL: no torchvision)."""
    analyzer = built.analyzer(name)
    family = FAMILY[name]
    assert analyzer.family == family and type(analyzer.model).__name__ == ck.FOLDERS[name][1]
    assert analyzer.num_layers == ck.TEXT_LAYERS and analyzer.model.dtype == torch.float32
    fallback = [n for n in analyzer.notes if "full processor unavailable" in n]
    if NEWEST or family in ("llava", "llava_next"):
        assert type(analyzer.processor).__name__ == ck.PROCESSOR_CLASSES[family] and not fallback
    else:
        assert isinstance(analyzer.processor, ProcessorParts) and fallback
    generation = ck.CHECKPOINTS / name / "generation_config.json"
    if generation.is_file():
        real = ck.real_json(name, "generation_config.json")
        assert analyzer.model.generation_config.eos_token_id == real["eos_token_id"]
        assert analyzer.model.generation_config.pad_token_id == real.get("pad_token_id")


SIZES = {
    "llava": [(640, 480), (480, 640), (200, 301), (339, 336), (1000, 100), (100, 1000), (20, 500), (336, 336)],
    "llava_next": [(640, 480), (200, 150), (1000, 100), (333, 999), (701, 333), (13, 3)],
    "qwen2_5_vl": [(640, 480), (480, 640), (200, 150), (50, 70), (28, 1000), (1000, 999)],
    "internvl": [(200, 200), (300, 150), (640, 480), (100, 1000), (901, 300), (449, 448)],
}


@pytest.mark.parametrize("name", NAMES)
def test_candidates_are_what_the_real_processor_produces(built, name):
    """Candidates (and LLaVA-NeXT's newlines) seen by the analyzer = the image tokens the real preprocessing puts
    into ``input_ids``, grid by grid; LLaVA-1.5: always 576 = 24×24."""
    analyzer = built.analyzer(name)
    family = FAMILY[name]
    for size in SIZES[family]:
        image = photo(size)
        obs = analyzer.observe(image, PROMPT, layer=1)
        grids = [(g.rows, g.cols) for g in obs.grids]
        count, extra = real_token_count(analyzer, image)
        num = obs.attention_flat.size
        newlines = obs.layout.newline_tokens.size
        assert num + newlines == count == obs.layout.num_tokens, (size, num, newlines, count)
        if family == "llava":
            assert num == 576 and grids == [(24, 24)], size
        elif family == "llava_next":
            assert extra["image_sizes"] == (size[1], size[0])
            assert grids[0] == (24, 24) and newlines == grids[1][0] and num == 576 + grids[1][0] * grids[1][1]
        elif family == "qwen2_5_vl":
            t, h, w = extra["image_grid_thw"]
            assert t == 1 and grids == [(h // 2, w // 2)], (size, extra)
        else:
            tiles = extra["tiles"]
            assert grids == [(16, 16)] * tiles and num == 256 * tiles, (size, tiles)
            assert [g.name for g in obs.grids][-1] == ("thumbnail" if tiles > 1 else "tile0")


ODD_SIZES = [(w, h) for w in (27, 337, 673, 1009) for h in (3, 99, 479, 1007)]


@pytest.mark.parametrize("name", ["llava-v1.6-mistral-7b-hf", "qwen2.5-vl-3b-instruct", "internvl3-1b-hf"])
def test_layout_counts_match_the_real_processor_for_odd_sizes(built, name):
    """The layout's arithmetic (what the analyzer checks the model's tokens against) gives the real preprocessing's
    token count for 16 odd sizes (unpadding remainders, rounding at multiples of 14 / 28, tile ratios)."""
    analyzer = built.analyzer(name)
    for size in ODD_SIZES:
        image = Image.new("RGB", size, (120, 90, 60))
        if analyzer.family == "qwen2_5_vl" and max(size) / min(size) > 200:  # refused by both, same message
            with pytest.raises(ValueError, match="aspect ratio"):
                real_token_count(analyzer, image)
            with pytest.raises(ValueError, match="aspect ratio"):
                analyzer.observe(image, PROMPT, layer=1)
            continue
        count, extra = real_token_count(analyzer, image)
        layout = analyzer_layout(analyzer, size)
        assert layout.num_tokens == count, (size, layout.num_tokens, count, extra)


def test_llava_regions_follow_the_real_center_crop(built):
    """The layout's shortest-edge resize and centre-crop offset are the real CLIP image processor's (resized size
    read with the crop off; the crop found inside the uncropped output), and the 576 regions tile the crop."""
    analyzer = built.analyzer("llava-1.5-7b-hf")
    ip = image_processor(analyzer)
    plain = dict(do_normalize=False, do_rescale=False, return_tensors="pt")
    for size in [(640, 480), (301, 200), (200, 301), (339, 336), (343, 336), (700, 341), (1000, 100)]:
        image = photo(size, seed=1)
        full = ip(images=image, do_center_crop=False, **plain)["pixel_values"][0]
        crop = ip(images=image, **plain)["pixel_values"][0]
        rh, rw = full.shape[-2:]
        offsets = [(dx, dy) for dy in range(rh - 335) for dx in range(rw - 335)
                   if torch.equal(full[:, dy : dy + 336, dx : dx + 336], crop)]
        layout = analyzer_layout(analyzer, size)
        assert layout.processed_size == (rw, rh), size
        (ox, oy), (sx, sy) = layout.frame_origin, layout.frame_scale
        assert offsets[:1] == [(round(ox / sx), round(oy / sy))], (size, offsets)
        footprint = layout.frame_to_original([0, 0, 336, 336])
        footprint = [max(footprint[0], 0), max(footprint[1], 0), min(footprint[2], size[0]), min(footprint[3], size[1])]
        assert_tiles(grid_regions(layout, "image"), footprint, f"llava {size}")


def test_llava_next_regions_follow_the_real_canvas(built):
    """The high-res canvas of the real LLaVA-NeXT image processor (the image's pixels inside the padded
    pinpoint canvas) is where the layout puts it; the base grid tiles the whole image, the high-res grid too up
    to the feature rows / columns unpadding drops (< one token cell)."""
    from d2pruner.families.llava_next import select_best_resolution

    analyzer = built.analyzer("llava-v1.6-vicuna-7b-hf")
    ip = image_processor(analyzer)
    for size in [(640, 480), (200, 150), (1000, 100), (701, 333), (337, 673), (999, 101)]:
        w, h = size
        pixels = ip(images=Image.new("RGB", size, (255, 255, 255)), do_normalize=False, do_rescale=False,
                    return_tensors="pt")["pixel_values"][0]
        best_h, best_w = select_best_resolution((h, w), ip.image_grid_pinpoints)
        cols = best_w // 336
        canvas = torch.zeros(best_h, best_w)
        for i, tile in enumerate(pixels[1:]):
            r, c = divmod(i, cols)
            canvas[r * 336 : (r + 1) * 336, c * 336 : (c + 1) * 336] = tile.sum(0)
        ys, xs = (canvas > 0).nonzero(as_tuple=True)
        content = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        layout = analyzer_layout(analyzer, size)
        fit_w, fit_h = layout.processed_size
        paste = (round(-layout.tiles[0][0] * fit_w / w), round(-layout.tiles[0][1] * fit_h / h))
        assert content == (paste[0], paste[1], paste[0] + fit_w, paste[1] + fit_h), size
        assert_tiles(grid_regions(layout, "base"), (0, 0, w, h), f"base {size}")
        cell = max(w / fit_w, h / fit_h) * 14
        assert_tiles(grid_regions(layout, "highres"), (0, 0, w, h), f"highres {size}", margin=cell)


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b-instruct", "internvl3-1b-hf"])
def test_regions_cover_the_image(built, name):
    """Qwen2.5-VL: one grid tiles the whole image. InternVL: every tile's grid tiles its tile, the tiles tile the
    image, the thumbnail tiles the whole image."""
    analyzer = built.analyzer(name)
    for size in [(640, 480), (300, 150), (200, 200)]:
        obs = analyzer.observe(photo(size), PROMPT, layer=1)
        w, h = size
        regions = obs.regions
        if analyzer.family == "qwen2_5_vl":
            (grid,) = obs.grids
            assert_tiles(regions.reshape(grid.rows, grid.cols, 4), (0, 0, w, h), f"qwen {size}")
            continue
        tiles = obs.layout.tiles or ((0.0, 0.0, float(w), float(h)),)
        for i, grid in enumerate(obs.grids):
            cells = regions[grid.offset : grid.offset + grid.rows * grid.cols].reshape(grid.rows, grid.cols, 4)
            box = (0, 0, w, h) if grid.name == "thumbnail" else tiles[i]
            assert_tiles(cells, box, f"internvl {size} {grid.name}")
        columns = [*sorted({t[0] for t in tiles}), w]
        rows = [*sorted({t[1] for t in tiles}), h]
        arranged = np.array([[[x1, y1, x2, y2] for x1, x2 in itertools.pairwise(columns)]
                             for y1, y2 in itertools.pairwise(rows)])
        assert_tiles(arranged, (0, 0, w, h), f"internvl tiles {size}")
        assert len(obs.grids) == len(obs.layout.tiles) + (len(obs.layout.tiles) > 1)


@pytest.mark.newest_stack
def test_qwen_and_internvl_fallback_equals_the_real_processor(built):
    """What the oldest stack feeds (tokenizer + image processor, the family adapter expanding the placeholders)
    equals what the real processor produces — token ids, pixels, grid — on the newest stack."""
    import transformers

    for name in ("qwen2.5-vl-3b-instruct", "internvl3-1b-hf"):
        analyzer = built.analyzer(name)
        path = str(built.folder(name).path)
        parts = ProcessorParts(transformers.AutoTokenizer.from_pretrained(path),
                               transformers.AutoImageProcessor.from_pretrained(path))
        for size in [(300, 150), (640, 480)]:
            real = analyzer.model_family.build_inputs(analyzer.model, analyzer.processor, photo(size), PROMPT)
            fallback = analyzer.model_family.build_inputs(analyzer.model, parts, photo(size), PROMPT)
            assert sorted(real) == sorted(fallback), name
            for key, value in real.items():
                assert torch.equal(value, fallback[key].to(value.dtype)), (name, size, key)


def assert_fed_the_real_template(analyzer, folder: Path, image, fed: torch.Tensor, question: str) -> None:
    """The ids fed to the model are the real chat template's rendering of ``question``, which they contain."""
    reference = real_rendering(analyzer, folder, image, question)
    decoded = tokenizer(analyzer).decode(fed)
    assert torch.equal(fed, reference), decoded[-300:]
    assert question in decoded
    if analyzer.family == "qwen2_5_vl":  # the real template's default system prompt
        assert decoded.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("name", NAMES)
def test_analyze_question_and_grounding(built, name):
    """Question mode and grounding mode (the paper's localization settings: K = 5 for LLaVA-1.5) on the real files:

    - the token ids fed to the model are exactly the real chat template's rendering (``processor.apply_chat_template``
      + the processor's tokenisation; oldest-stack Qwen / InternVL: the folder's template rendered and expanded as
      their processors do), and the grounding question is the family's prompt of ``d2pruner.grounding``;
    - exactly n sorted kept tokens per method, the graph inside the candidates, boxes inside the image or None;
    - a box written in the family's answer format about a ground-truth box parses back to it through the real layout.
    """
    analyzer = built.analyzer(name)
    family = FAMILY[name]
    folder = built.folder(name).path
    image = photo(RUN_SIZE[family])
    with _FedIds(analyzer.model) as fed:
        question = analyzer.analyze(image, PROMPT, methods=("fastv", "dart", "divprune", "mmr", "d2pruner"),
                                    keep_ratio=0.25, layer=2, max_new_tokens=2, prior="uniform")
    assert question.question == PROMPT
    assert_fed_the_real_template(analyzer, folder, image, fed.ids, PROMPT)

    settings = d2pruner.paper_settings("localization", family)
    layer = settings.pop("layer")
    with _FedIds(analyzer.model) as fed:
        grounded = analyzer.analyze(image, EXPRESSION, grounding=True, methods=("fastv", "d2pruner"),
                                    keep_ratio=0.25, layer=layer, max_new_tokens=2, prior="uniform", **settings)
    assert grounded.layer == (5 if family == "llava" else 2)
    assert grounded.question == analyzer.model_family.grounding_template.format(expr=EXPRESSION)
    assert_fed_the_real_template(analyzer, folder, image, fed.ids, grounded.question)
    if family == "internvl":  # <ref> … </ref> are single special tokens, as InternVL was trained with them
        for marker in ("<ref>", "</ref>"):
            assert int((fed.ids == tokenizer(analyzer).convert_tokens_to_ids(marker)).sum()) == 1, marker

    for result in (question, grounded):
        num = result.num_candidates
        assert result.n == max(1, round(0.25 * num)) and result.regions.shape == (num, 4)
        assert result.graph_edges.size == 0 or (result.graph_edges.min() >= 0 and result.graph_edges.max() < num)
        for method in result.methods.values():
            assert method.num_kept == result.n and len(method.kept) == result.n
            assert (np.diff(method.kept) > 0).all() and method.kept[0] >= 0 and method.kept[-1] < num
    w, h = image.size
    for box in [grounded.vanilla_box, *(m.box for m in grounded.methods.values())]:
        assert box is None or (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h)
    assert all(m.box is None for m in question.methods.values())
    gt = (0.3 * w, 0.35 * h, 0.45 * w, 0.6 * h)  # inside every family's frame (LLaVA-1.5: the centre crop)
    spec = analyzer.model_family
    answer = spec.format_answer(spec.to_model_units(gt, grounded.layout))
    scaled = spec.parse_box(answer, grounded.layout)
    tolerance = 1.0 if family in ("qwen2_5_vl", "internvl") else 0.01 * max(w, h)  # integer / 2-decimal units
    np.testing.assert_allclose(scaled, gt, atol=tolerance)


@pytest.mark.parametrize("name", NAMES)
def test_keep_all_is_the_unmodified_model(built, name):
    """keep_ratio = 1: every method's answer is the vanilla answer, which is plain ``generate`` of the unmodified
    model; and one forward inside ``prune(keep=all)`` gives bit-identical logits."""
    analyzer = built.analyzer(name)
    model, spec = analyzer.model, analyzer.model_family
    image = photo(RUN_SIZE[FAMILY[name]])
    result = analyzer.analyze(image, PROMPT, methods=("fastv", "d2pruner"), keep_ratio=1.0, layer=2,
                              max_new_tokens=3, prior="uniform")
    inputs = spec.build_inputs(model, analyzer.processor, image, PROMPT)
    tokens = spec.tokens_for(model, analyzer.processor, image.size, inputs)
    with torch.inference_mode():
        plain_ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        plain_logits = model(**inputs).logits
        with prune(model, tokens, layer=2, keep=torch.arange(tokens.num_candidates)) as state:
            kept_logits = model(**inputs).logits
    plain = tokenizer(analyzer).decode(plain_ids[0, tokens.seq_len :], skip_special_tokens=True).strip()
    assert result.n == result.num_candidates == tokens.num_candidates
    assert plain, "the random model says nothing: the equalities below would be vacuous"
    assert result.vanilla_answer == plain
    assert {m: r.answer for m, r in result.methods.items()} == dict.fromkeys(result.methods, plain)
    assert state.num_kept == tokens.num_candidates and torch.equal(plain_logits, kept_logits)


@pytest.mark.parametrize("name", NAMES)
def test_answers_stop_at_every_eos_id_of_the_checkpoint(built, name):
    """Generation stops at each eos id of the folder's ``generation_config.json`` (Qwen2.5-VL: 151645 and
    151643), vanilla and pruned: the first token is forced to the last listed id (unforced, the random model says
    something: see the keep-all test)."""
    analyzer = built.analyzer(name)
    eos = analyzer.model.generation_config.eos_token_id
    forced = eos[-1] if isinstance(eos, list) else eos
    real = ck.CHECKPOINTS / name / "generation_config.json"
    if real.is_file():
        listed = ck.real_json(name, "generation_config.json")["eos_token_id"]
        assert forced == (listed[-1] if isinstance(listed, list) else listed)

    def force(module, args, kwargs, output):  # the prefill's (first) step of every generate: forced eos
        ids = kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.shape[-1] > 1:
            output.logits[:, -1, forced] = 1e4
        return output

    image = photo(RUN_SIZE[FAMILY[name]])
    handle = analyzer.model.register_forward_hook(force, with_kwargs=True)
    try:
        stopped = analyzer.analyze(image, PROMPT, methods=("fastv",), keep_ratio=0.5, max_new_tokens=3,
                                   prior="uniform")
    finally:
        handle.remove()
    assert stopped.vanilla_answer == "" and stopped.methods["fastv"].answer == ""


# ---------------------------------------------------------------------------------------------------- priors
ROLES = {"llava": {"image"}, "llava_next": {"base", "highres"}, "qwen2_5_vl": {"image"},
         "internvl": {"tiles", "thumbnail"}}


@pytest.mark.parametrize("name", NAMES)
def test_prior_calibration(built, calibration_images, monkeypatch, name):
    """A prior calibrated by the CLI (``python -m d2pruner.calibrate``, in-process) on a few images is what
    ``get_prior`` then serves and ``analyze(prior="auto")`` uses; ``get_prior`` of an uncalibrated layer calibrates
    (from the bundled-images folder, here a 3-image stand-in) and saves it."""
    import d2pruner.calibrate as calibration_cli
    from d2pruner.priors import calibration, prior_filename

    analyzer = built.analyzer(name)
    family = FAMILY[name]
    path = str(built.folder(name).path)
    out = built.priors / prior_filename(path, 2)
    code = calibration_cli.main(["--model", path, "--images", str(calibration_images), "--num", "3",
                                 "--layer", "2", "--out", str(out), "--no-speedup"])
    assert code == 0 and out.is_file()
    prior = analyzer.get_prior(2)  # no test before asks this analyzer for a prior: served from the CLI's file
    assert prior.num_images == 3 and prior.layer == 2 and str(calibration_images) in prior.source
    assert set(prior.maps) == ROLES[family]
    result = analyzer.analyze(photo(RUN_SIZE[family]), PROMPT, methods=("d2pruner",), layer=2, max_new_tokens=1)
    assert result.prior_source == prior.describe()
    assert all(p.shape == (g.rows, g.cols) and np.isfinite(p).all() and (p > 0).all()
               for p, g in zip(result.prior, result.grids, strict=True))

    monkeypatch.setattr(calibration, "BUNDLED_IMAGES", calibration_images)
    fresh = built.priors / prior_filename(path, 3)
    assert not fresh.exists()
    calibrated = analyzer.get_prior(3)
    assert fresh.is_file() and calibrated.num_images == 3 and set(calibrated.maps) == ROLES[family]
    for role, values in calibrated.maps.items():
        assert torch.isfinite(values).all() and (values >= 0).all() and values.sum() > 0, role


# ---------------------------------------------------------------------------------------------------- the app
@pytest.fixture(scope="session")
def apps(built, request):
    """One ``python app.py --model <folder>`` per folder whose app test is selected, all started at once (their
    start-up overlaps), stopped at the end of the session."""
    from app_helpers import start_app

    wanted = [item.callspec.params["name"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_app_analyzes_the_checkpoint"]
    started = {}
    try:
        for name in wanted:
            started[name] = start_app("--model", str(built.folder(name).path), "--device", "cpu",
                                      name=f"checkpoint-{name}")
        yield started
    finally:
        for app in started.values():
            app.stop()


@pytest.mark.newest_stack
@pytest.mark.parametrize("name", NAMES)
def test_app_analyzes_the_checkpoint(built, apps, tmp_path, name):
    """``python app.py --model <folder>`` loads the folder itself (no tiny fallback) and answers one ``/analyze``
    (grounding) through gradio_client with the real token counts."""
    gradio_client = pytest.importorskip("gradio_client")

    folder = str(built.folder(name).path)
    family = FAMILY[name]
    size = RUN_SIZE[family]
    image_path = tmp_path / "image.png"
    photo(size).save(image_path)
    expected = built.analyzer(name).observe(photo(size), PROMPT, layer=1).attention_flat.size
    client = gradio_client.Client(apps[name].wait_ready(timeout=240), verbose=False)
    job = client.submit(api_name="/analyze", image=gradio_client.handle_file(str(image_path)), task="Grounding",
                        expression=EXPRESSION, methods=["fastv", "d2pruner"], keep_ratio=0.25, layer=2,
                        max_new_tokens=2, prior="uniform")
    status, *_plots, answers, _efficiency, _files, summary = job.result(timeout=180)
    assert f"**{folder}** ({family}" in status and f"N = {expected}" in status, status
    assert summary["settings"]["n"] == max(1, round(0.25 * expected))
    assert [row[0] for row in answers["data"]] == ["Vanilla (unpruned)", "FastV", "D²Pruner"]


# ---------------------------------------------------------------------------------------------------- findings
@pytest.mark.newest_stack
# F1 (found by these files, fixed): a tokenizer without video_token crashes load (AttributeError escapes the fallback)
def test_internvl_files_as_shipped_load(built):
    """The InternVL folder as it is (byte copies): building ``InternVLProcessor`` fails with AttributeError
    (``tokenizer.video_token``); ``_from_pretrained`` falls back only on ImportError / OSError / ValueError /
    TypeError, so ``load`` crashes instead of falling back to tokenizer + image processor with a note (the
    oldest stack gets a ValueError there and falls back)."""
    analyzer = built.load(built.byte_copy("internvl3-1b-hf").path)
    assert isinstance(analyzer.processor, ProcessorParts)
    assert any("full processor unavailable" in n for n in analyzer.notes)
    obs = analyzer.observe(photo((300, 150)), PROMPT, layer=1)
    assert obs.attention_flat.size == 3 * 256


# F3 (found by these files, fixed): the InternVL fallback did not pass crop_to_patches=True (1 tile, not the layout's)
def test_internvl_fallback_tiles_like_the_processor(built):
    """With ``crop_to_patches: false`` in ``preprocessor_config.json`` (what the conversion recipe writes),
    ``InternVLProcessor`` still tiles (it passes ``crop_to_patches=True`` on every call) but the fallback of the
    oldest stack calls the image processor without it: one 448² tile, while the layout (which assumes the
    processor's tiling) expects 3 → the analyzer raises 'layout … disagrees'."""
    import transformers

    edits = {**ck.INTERNVL_RECIPE, **ck.INTERNVL_HUB_PREPROCESSOR}
    shrunk = built.derived("internvl3-1b-hf", "hub-preprocessor", edits)
    conformance = built.analyzer("internvl3-1b-hf")  # same weights and tokenizer files; only the preprocessor differs
    analyzer = d2pruner.Analyzer(  # what _from_pretrained builds when the processor is unavailable (oldest stack)
        conformance.model,
        ProcessorParts(tokenizer(conformance), transformers.AutoImageProcessor.from_pretrained(shrunk.path)),
        name=str(shrunk.path), prior_dirs=[built.priors])
    obs = analyzer.observe(photo((300, 150)), PROMPT, layer=1)
    assert len(obs.grids) == 3 and obs.attention_flat.size == 3 * 256


# F2 (found by these files, fixed): a relative checkpoint path ('./folder') cannot name its prior file
def test_relative_checkpoint_path_gets_a_prior(built, calibration_images, monkeypatch):
    """``d2pruner.load("./llava-1.5-7b-hf")`` works, but its prior cannot be stored or found: ``prior_filename``
    refuses ids that start with '.', so ``get_prior`` / ``analyze(prior="auto")`` (the default) raise ValueError."""
    from d2pruner.priors import calibration

    shrunk = built.byte_copy("llava-1.5-7b-hf")
    monkeypatch.chdir(shrunk.path.parent)
    monkeypatch.setattr(calibration, "BUNDLED_IMAGES", calibration_images)
    analyzer = d2pruner.load(f"./{shrunk.path.name}")
    analyzer.prior_dirs = [built.priors]
    result = analyzer.analyze(photo((200, 150)), PROMPT, methods=("d2pruner",), max_new_tokens=1)
    assert result.prior_source.startswith("natural prior")


# F5 (found by these files, fixed): images with a side < 28 px are upscaled first: Qwen2.5-VL gets other tokens
def test_thin_image_tokens_are_the_real_processors(built):
    """The real Qwen2.5-VL processor takes a 10×1000 image as it is (smart_resize to min_pixels: 20×1 = 20 tokens);
    ``fit_image`` first upscales it to 28×2800 (shorter side below 28), so the model sees 100×1 = 100 tokens."""
    analyzer = built.analyzer("qwen2.5-vl-3b-instruct")
    image = photo((10, 1000))
    count, _ = real_token_count(analyzer, image)
    assert analyzer.observe(image, PROMPT, layer=1).attention_flat.size == count


# F6 (found by these files, fixed): images above max_pixels are downscaled before smart_resize: Qwen grid off by a row
def test_large_image_grid_is_the_real_processors(built):
    """A 3000×4500 photo (13.5 MP, above max_pixels 12 845 056): the real processor's ``smart_resize`` gives
    156×104 tokens; the analyzer first downscales to 2926×4389 (``fit_image``), whose ``smart_resize`` rounds to
    157×104. Checked without the model (16 000 tokens): the analyzer's own two calls, as in ``_prepare``."""
    from d2pruner.analysis.inputs import fit_image

    analyzer = built.analyzer("qwen2.5-vl-3b-instruct")
    image = Image.new("RGB", (3000, 4500), (120, 90, 60))
    _, extra = real_token_count(analyzer, image)
    spec = analyzer.model_family
    processed, _ = fit_image(image, spec.max_image_pixels, spec.min_image_side)
    layout = analyzer_layout(analyzer, processed.size)
    assert (layout.grids[0].rows, layout.grids[0].cols) == (extra["image_grid_thw"][1] // 2,
                                                             extra["image_grid_thw"][2] // 2)


# F4 (found by these files, fixed): load() rejects a pathlib.Path to a checkpoint folder
def test_load_takes_a_path_object(built):
    analyzer = d2pruner.load(built.byte_copy("llava-1.5-7b-hf").path)
    assert analyzer.family == "llava"
