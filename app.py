"""D²Pruner lab — the Gradio app: which visual tokens each pruning method keeps inside a multimodal LLM, and why.

    python app.py [--model NAME] [--device cuda|cpu] [--port N] [--share] [--host ADDR]

Structure (after hysts' gradio-sam-prompter): constants → optional ``spaces`` → input checking helpers → the model
host (one model in memory, offline-aware loading with a tiny fallback) → rendering helpers → one handler per event
(``LabApp``) → ``build_demo`` (layout + wiring) → ``main`` (CLI → launch). The app is UI only: it calls the public
API of ``d2pruner`` (``load`` / ``Analyzer.analyze`` / ``observe`` / ``get_prior``, ``efficiency_report``,
``grounding.box_iou``) and draws with ``d2pruner.viz``.

Results are cached lazily: the first analysis of an (image, prompt, settings, model) is computed when asked for and
kept in a small LRU cache, so re-picking an example, toggling the colour scale or a sweep that includes the current
keep ratio costs nothing. Nothing is computed at start-up (Gradio's own example caching is off because its cache
would not follow a model switch).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import gradio as gr
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

try:  # Hugging Face ZeroGPU: allocate a GPU for the decorated calls. Imported before torch, as `spaces` asks.
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:  # anywhere else: a no-op

    def gpu(fn):
        return fn


import d2pruner
from d2pruner import resources, viz

log = logging.getLogger("d2pruner.app")

# ----------------------------------------------------------------------------------------------------
# Constants.

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = resources.EXAMPLES_DIR
DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
MODEL_CHOICES = [*d2pruner.ARCHITECTURES, *d2pruner.TINY_NAMES]
#: the methods offered (d2pruner-nospatial is left out: analyze() would route the α slider to it as well)
METHODS = ("fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di")
METHOD_CHOICES = [(viz.METHOD_LABELS[m], m) for m in METHODS]
PRIOR_CHOICES = [("calibrated natural prior (auto)", "auto"), ("content-free prior", "content-free"),
                 ("uniform (no debiasing)", "uniform")]
TASKS = ("Grounding", "Question")
COLOUR_CHOICES = [("per panel", "independent"), ("shared", "shared")]
BLANK_COLOURS = {"grey": (128, 128, 128), "white": (255, 255, 255), "black": (0, 0, 0)}
DEFAULT_SWEEP = "0.75, 0.5, 0.25, 0.1"
MAX_SWEEP_RATIOS = 8
MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 512
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: longest side of the working copy of an image too large to decode at full size
MAX_WORKING_SIDE = 4096
#: Pillow refuses to decode above twice its MAX_IMAGE_PIXELS; JPEGs can be decoded at 1/8 scale below this
MAX_JPEG_PIXELS = 65535 * 65535
RESULT_CACHE_SIZE = 16
HUB_PROBE_SECONDS = 2.0

CSS = """
.lab-header h1 {margin: 0 0 2px 0; font-size: 1.7em;}
.lab-header p {margin: 0; color: var(--body-text-color-subdued);}
.banner {border-radius: 8px; padding: 10px 14px; margin: 4px 0; font-size: 0.95em; line-height: 1.4;}
.banner.warn {background: #FEF3C7; border: 1px solid #F59E0B; color: #78350F;}
.banner.ok {background: #ECFDF5; border: 1px solid #10B981; color: #064E3B;}
.banner b {font-weight: 650;}
#status-md {min-height: 2.2em;}
#analyze-btn {min-height: 46px; font-size: 1.05em;}
.small-note {font-size: 0.85em; color: var(--body-text-color-subdued);}
"""


class InputError(ValueError):
    """Bad user input; the message is shown in the UI as is."""


# ----------------------------------------------------------------------------------------------------
# Input checking (pure helpers, unit-tested).


@dataclasses.dataclass
class LoadedImage:
    """A decoded upload: RGB image, how it relates to the file, and what the user should know."""

    image: Image.Image
    original_size: tuple[int, int]
    scale: float  # working pixels per file pixel (< 1 after a safety downscale)
    notes: list[str]
    digest: str


def load_image(path: str | os.PathLike | dict | None) -> LoadedImage:
    """Decode an uploaded file defensively (a path, or Gradio's raw file payload with a ``"path"``).

    Handles: missing / 0-byte / oversized files, non-images and corrupt or truncated data (clear errors),
    decompression bombs (JPEGs are decoded at reduced scale, other formats above Pillow's limit are refused),
    animated images (first frame), EXIF orientation (applied), any colour mode (converted to RGB).

    Raises:
        InputError: with a message for the user.
    """
    if isinstance(path, dict) or hasattr(path, "path"):  # the raw payload of gr.Image (events use preprocess=False)
        path = path.get("path") if isinstance(path, dict) else path.path
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InputError("No image: upload one (or pick an example) first.")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"The uploaded file {p.name!r} could not be found on the server; please upload it again.")
    nbytes = p.stat().st_size
    if nbytes == 0:
        raise InputError(f"The uploaded file {p.name!r} is empty (0 bytes).")
    if nbytes > MAX_UPLOAD_BYTES:
        raise InputError(f"The uploaded file is {nbytes / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
    notes: list[str] = []
    limit = Image.MAX_IMAGE_PIXELS or 0
    oversized = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
            size = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        img, size = _open_oversized(p, err)
        oversized = True
        notes.append(
            f"the image is {size[0]}×{size[1]} ({size[0] * size[1] / 1e6:.0f} MP), above Pillow's "
            f"{limit / 1e6:.0f} MP decompression-bomb limit: it was decoded at reduced resolution"
        )
    except UnidentifiedImageError:
        raise InputError(
            f"{p.name!r} is not an image this app can read (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{p.name!r} could not be opened as an image: {err}") from None
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
        if frames > 1:
            img.seek(0)
            notes.append(f"animated image with {frames} frames: the first frame is analysed")
        orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
        img.load()
        if orientation not in (None, 1):
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated upright according to its EXIF orientation tag ({orientation})")
        rgb = d2pruner.to_rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"{p.name!r} is damaged or truncated and cannot be decoded ({err}).") from None
    finally:
        if "rgb" not in locals() or rgb is not img:
            img.close()
    upright = (size[1], size[0]) if orientation in (5, 6, 7, 8) else (size[0], size[1])
    if oversized and max(rgb.size) > MAX_WORKING_SIDE:
        factor = MAX_WORKING_SIDE / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))), Image.LANCZOS)
    scale = rgb.width / upright[0]
    if rgb.size != upright:
        notes.append(f"the working copy is {rgb.width}×{rgb.height}: boxes and regions are in its pixels "
                     f"(a typed ground-truth box is scaled by {scale:.4g})")
    digest = hashlib.sha1(rgb.tobytes()).hexdigest()[:16]
    return LoadedImage(rgb, (int(upright[0]), int(upright[1])), scale, notes, digest)


def _open_oversized(path: Path, err: Exception):
    """Open an image above Pillow's pixel limit without decoding it at full size, or refuse clearly."""
    with path.open("rb") as f:
        magic = f.read(3)
    if magic == b"\xff\xd8\xff":  # JPEG: the DCT can decode directly at 1/2, 1/4 or 1/8 scale
        try:
            jpeg = JpegImagePlugin.JpegImageFile(str(path))  # the plugin alone skips the size check
        except (OSError, SyntaxError, ValueError) as inner:
            raise InputError(f"{path.name!r} could not be opened as a JPEG: {inner}") from None
        size = jpeg.size
        if size[0] * size[1] > MAX_JPEG_PIXELS:
            raise InputError(f"The image is {size[0]}×{size[1]} pixels, too large to decode safely.")
        jpeg.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        return jpeg, size
    if isinstance(err, Image.DecompressionBombWarning):  # within twice the limit: Pillow decodes it, then we shrink
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        return img, img.size
    pixels = re.search(r"\((\d+) pixels\)", str(err))
    count = f"{int(pixels.group(1)) / 1e6:.0f} million pixels" if pixels else "too many pixels"
    raise InputError(
        f"The image has {count}, more than Pillow will decode safely ({2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} "
        "million; decompression-bomb protection). Please downscale it (e.g. to 4096 px on the longer side) or "
        "upload it as a JPEG, which can be decoded at reduced resolution."
    ) from None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_prompt(text: str | None, *, what: str = "prompt") -> tuple[str, list[str]]:
    """Strip control characters and whitespace; refuse empty text; truncate above MAX_PROMPT_CHARS (noted)."""
    text = _CONTROL.sub("", text or "").strip()
    if not text:
        hint = "describe the object to locate, e.g. 'the red cup on the left'" if what != "prompt" else \
            "type a question about the image"
        raise InputError(f"The {what} is empty: {hint}.")
    notes = []
    if len(text) > MAX_PROMPT_CHARS:
        cut = text[:MAX_PROMPT_CHARS]
        cut = cut[: cut.rfind(" ")] if " " in cut[-200:] else cut
        notes.append(f"the {what} was {len(text):,} characters long; only the first {len(cut):,} are used")
        text = cut.rstrip()
    return text, notes


def parse_box(text: str | None, image_size: tuple[int, int], scale: float = 1.0) -> tuple | None:
    """``"x1, y1, x2, y2"`` (pixels of the uploaded image) → a box in working-image pixels, clipped; None if blank.

    Raises:
        InputError: not four numbers, reversed / empty, or wholly outside the image.
    """
    if text is None or not str(text).strip():
        return None
    nums = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", str(text))
    rest = re.sub(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[\s,;()\[\]]", "", str(text))
    if len(nums) != 4 or rest:
        raise InputError(f"The ground-truth box must be four numbers 'x1, y1, x2, y2' in pixels; got {text!r}.")
    x1, y1, x2, y2 = (float(v) * scale for v in nums)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise InputError(f"The ground-truth box needs x2 > x1 and y2 > y1 (top-left, then bottom-right); got {text!r}.")
    w, h = image_size
    box = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"The ground-truth box {text!r} lies outside the {w}×{h} image.")
    return box


def _number(value, name: str, lo: float, hi: float, *, lo_open: bool = False, integer: bool = False) -> float:
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    bad = not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo)
    if integer and not bad and v != round(v):
        raise InputError(f"{name} must be a whole number, got {value!r}.")
    if bad:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise InputError(f"{name} must be in {rng}, got {value!r}.")
    return round(v) if integer else v


def parse_ratios(text: str | None) -> list[float]:
    """``"0.75, 0.5, 0.25, 0.1"`` (fractions or percentages) → unique ratios in (0, 1], largest first."""
    parts = [t for t in re.split(r"[\s,;]+", str(text or "").strip()) if t]
    if not parts:
        raise InputError("List at least one keep ratio for the sweep, e.g. '0.75, 0.5, 0.25, 0.1'.")
    ratios = []
    for t in parts:
        pct = t.endswith("%")
        try:
            v = float(t.rstrip("%")) / (100 if pct else 1)
        except ValueError:
            raise InputError(f"Sweep keep ratios must be numbers in (0, 1]; {t!r} is not a number.") from None
        ratios.append(_number(v, "Each sweep keep ratio", 0.0, 1.0, lo_open=True))
    ratios = sorted(set(ratios), reverse=True)
    if len(ratios) > MAX_SWEEP_RATIOS:
        raise InputError(f"At most {MAX_SWEEP_RATIOS} keep ratios per sweep, got {len(ratios)}.")
    return ratios


def word_f1(answer: str, reference: str) -> float:
    """Answer agreement: SQuAD-style word-level F1 of two texts (case- and punctuation-insensitive)."""
    a = re.findall(r"\w+", answer.lower())
    b = re.findall(r"\w+", reference.lower())
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    common = sum(min(a.count(w), b.count(w)) for w in set(a))
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _bytes(value: float) -> str:
    for factor, prefix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.0f} B"


def _box_text(box) -> str:
    return "–" if box is None else ", ".join(f"{v:.0f}" for v in box)


# ----------------------------------------------------------------------------------------------------
# The model host: one model in memory, offline-aware loading, a tiny fallback.


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here; the message says why in a few words."""


@dataclasses.dataclass
class ModelStatus:
    requested: str
    loaded: str
    device: str
    reason: str | None = None  # why the requested model is not the loaded one
    seconds: float = 0.0

    @property
    def is_tiny(self) -> bool:
        return self.loaded in d2pruner.TINY_NAMES

    def banner_html(self) -> str:
        if self.reason:
            return (
                f"<div class='banner warn'><b>Could not load <code>{_esc(self.requested)}</code></b>: "
                f"{_esc(self.reason)}.<br>Running <b><code>{self.loaded}</code></b> instead — a tiny model with "
                "<b>random weights</b>: it shows the mechanics (token grids, attention capture, priors, pruning "
                "inside the model, boxes), <b>not real behaviour</b>; its answers are gibberish.</div>"
            )
        if self.is_tiny:
            return (f"<div class='banner warn'><b><code>{self.loaded}</code></b> on {self.device}: a tiny model with "
                    "random weights — mechanics, not real behaviour.</div>")
        return (f"<div class='banner ok'><b><code>{_esc(self.loaded)}</code></b> loaded on {self.device} in "
                f"{self.seconds:.0f} s.</div>")


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def tiny_stand_in(name: str) -> str:
    """The tiny model of the family a hub id most likely belongs to."""
    low = name.lower()
    if "qwen" in low:
        return "tiny-qwen2.5-vl"
    if "internvl" in low:
        return "tiny-internvl"
    if "v1.6" in low or "next" in low:
        return "tiny-llava-next"
    return "tiny-llava"


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """A TCP connection to the Hub endpoint (or to the configured HTTPS proxy) within ``timeout`` seconds."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _available_memory(device: str) -> float | None:
    """Free bytes on the target device (CUDA: free memory; CPU: MemAvailable), or None if unknown."""
    try:
        if device.startswith("cuda"):
            import torch

            return float(torch.cuda.mem_get_info()[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        return None
    return None


def _checkpoint_bytes(name: str) -> float | None:
    """Size of the cached checkpoint's weights (from its safetensors index), or None if unknown."""
    from huggingface_hub import try_to_load_from_cache

    try:
        index = try_to_load_from_cache(name, "model.safetensors.index.json")
        if isinstance(index, str):
            with open(index) as f:
                return float(json.load(f)["metadata"]["total_size"])
        single = try_to_load_from_cache(name, "model.safetensors")
        if isinstance(single, str):
            return float(os.path.getsize(single))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def precheck(name: str, device: str, reclaimable: float = 0.0) -> None:
    """Fail fast, before anything is unloaded, when a checkpoint obviously cannot be loaded here.

    Offline without the checkpoint in the local Hugging Face cache → ModelUnavailable at once (instead of
    transformers' ~25 s of retries); offline with it cached → Hub offline mode, so loading does not retry either;
    cached weights larger than the free memory of the device (plus ``reclaimable`` bytes, the model that would be
    unloaded first) → ModelUnavailable.
    """
    if name in d2pruner.TINY_NAMES or Path(name).is_dir():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise ModelUnavailable("offline mode (HF_HUB_OFFLINE) and the checkpoint is not in the local "
                                   "Hugging Face cache")
    elif not _hub_reachable():
        if not cached:
            raise ModelUnavailable("no network connection to the Hugging Face Hub and the checkpoint is not in the "
                                   "local cache")
        constants.HF_HUB_OFFLINE = True  # cached: load from the cache without retrying the network
    weights = _checkpoint_bytes(name)
    free = _available_memory(device)
    free = None if free is None else free + reclaimable
    if weights and free:
        need = weights * (2.0 if device == "cpu" else 1.0)  # float32 on CPU, the stored 16-bit dtype on GPU
        if need > 0.95 * free:
            raise ModelUnavailable(f"not enough memory: the weights need about {need / 1e9:.0f} GB on {device}, "
                                   f"{free / 1e9:.0f} GB are free")


class ModelHost:
    """Holds the one loaded :class:`d2pruner.Analyzer`; loads, switches and falls back to a tiny model.

    Arguments:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
        loader: ``d2pruner.load`` (replaceable in tests).
    """

    def __init__(self, device: str | None = None, loader: Callable = d2pruner.load):
        import torch

        self.device_note = None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            self.device_note = "CUDA was requested but is not available: running on CPU"
            device = "cpu"
        self.device = device
        self.loader = loader
        self.analyzer: d2pruner.Analyzer | None = None
        self.status: ModelStatus | None = None
        self.lock = threading.RLock()

    def load(self, name: str, progress: Callable[[str], None] | None = None) -> ModelStatus:
        """Load ``name`` (unloading the current model first); on failure load its family's tiny model."""
        name = (name or "").strip() or DEFAULT_MODEL
        with self.lock:
            start = time.perf_counter()
            reason = None
            try:
                precheck(name, self.device, reclaimable=self._loaded_bytes())
                if progress:
                    progress(f"loading {name} on {self.device} …")
                self._unload()
                analyzer = self.loader(name, device=self.device)
                loaded = name
            except ModelUnavailable as err:
                reason = str(err)
            except Exception as err:  # any failure to load falls back, and says why
                log.exception("loading %s failed", name)
                reason = _load_failure(err)
            if reason is not None:
                loaded = name if name in d2pruner.TINY_NAMES else tiny_stand_in(name)
                if progress:
                    progress(f"{name} unavailable; loading {loaded} …")
                self._unload()
                analyzer = self.loader(loaded, device=self.device)
            self.analyzer = analyzer
            self.status = ModelStatus(name, loaded, self.device, reason, time.perf_counter() - start)
            log.info("model: %s", self.status)
            return self.status

    def _loaded_bytes(self) -> float:
        if self.analyzer is None:
            return 0.0
        return float(sum(p.numel() * p.element_size() for p in self.analyzer.model.parameters()))

    def _unload(self) -> None:
        if self.analyzer is None:
            return
        self.analyzer = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except RuntimeError:
            pass


def _load_failure(err: Exception) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    if "out of memory" in text.lower() or isinstance(err, MemoryError):
        return "not enough memory to load it"
    if isinstance(err, OSError) and ("connect" in text or "offline" in text.lower() or "cached" in text):
        return "no network connection and it is not in the local Hugging Face cache"
    first = text.splitlines()[0]
    return first[:300]


# ----------------------------------------------------------------------------------------------------
# One request, validated.


@dataclasses.dataclass
class Request:
    """Everything one analysis needs, validated; ``key`` identifies its result in the cache."""

    image: LoadedImage
    grounding: bool
    text: str
    gt_box: tuple | None
    methods: tuple[str, ...]
    keep_ratio: float
    layer: int
    params: dict
    max_new_tokens: int
    prior: str
    notes: list[str]

    def key(self, model: str, keep_ratio: float | None = None) -> str:
        parts = [model, self.image.digest, self.grounding, self.text, self.methods,
                 round(self.keep_ratio if keep_ratio is None else keep_ratio, 6), self.layer,
                 sorted(self.params.items()), self.max_new_tokens, self.prior]
        return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


@dataclasses.dataclass
class Entry:
    """A cached analysis: the result and the numbers computed with the model's config at the time."""

    result: d2pruner.AnalysisResult
    efficiency: dict[str, dict]
    device: str
    seconds: float


# ----------------------------------------------------------------------------------------------------
# Rendering: result → figures, tables, JSON, files.


def geometry_of(result) -> viz.TokenGeometry:
    return viz.TokenGeometry.from_grids(result.grids, result.regions, result.image_size)


def _flat(maps: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])


def efficiency_numbers(result, model) -> dict[str, dict]:
    """Per method (and "vanilla"): kept tokens, analytic prefill FLOPs / KV cache (paper and exact conventions)
    and measured prefill time."""
    arch = d2pruner.arch_from_config(model.config)
    visual = int(result.layout.num_tokens)  # LLaVA-NeXT newline tokens included (always kept)
    protected = visual - result.num_candidates
    text = max(0, int(result.prompt_tokens) - visual)
    bpv = int(getattr(getattr(model, "dtype", None), "itemsize", 2) or 2)
    out = {}
    rows = [("vanilla", None, result.vanilla_prefill_seconds, 0.0)]
    rows += [(m, r.num_kept + protected, r.prefill_seconds, r.select_seconds) for m, r in result.methods.items()]
    for name, kept, prefill, select in rows:
        reports = {
            conv: d2pruner.efficiency_report(arch, text_tokens=text, visual_tokens=visual, layer=result.layer,
                                             kept=kept, bytes_per_value=bpv, convention=conv)
            for conv in ("paper", "exact")
        }
        out[name] = {
            "visual_tokens": visual, "kept_tokens": visual if kept is None else kept, "text_tokens": text,
            "bytes_per_value": bpv,
            **{f"{k}_{conv}": v for conv, rep in reports.items() for k, v in (
                ("flops", rep.flops), ("flops_unpruned", rep.flops_unpruned), ("kv_bytes", rep.kv_bytes),
                ("kv_bytes_unpruned", rep.kv_bytes_unpruned))},
            "prefill_seconds": float(prefill), "select_seconds": float(select),
        }
    return out


def _grounding_numbers(result, gt_box) -> dict[str, dict]:
    rows = {"vanilla": (result.vanilla_answer, result.vanilla_box)}
    rows.update({m: (r.answer, r.box) for m, r in result.methods.items()})
    out = {}
    for name, (answer, box) in rows.items():
        out[name] = {
            "answer": answer,
            "box": None if box is None else [float(v) for v in box],
            "iou_vs_gt": None if gt_box is None else float(d2pruner.box_iou(box, gt_box)),
            "iou_vs_vanilla": None if name == "vanilla" or result.vanilla_box is None or box is None
            else float(d2pruner.box_iou(box, result.vanilla_box)),
            "agreement": word_f1(answer, result.vanilla_answer),
        }
    return out


@dataclasses.dataclass
class AnalysisView:
    """Everything the analysis tab shows (the outputs of /analyze, by name)."""

    status: str
    attention: object
    prior: object
    relative: object
    graph: object
    methods: object
    answers: list[list]
    efficiency: list[list]
    files: list[str]
    summary: dict

    def outputs(self) -> tuple:
        return (self.status, self.attention, self.prior, self.relative, self.graph, self.methods,
                self.answers, self.efficiency, self.files, self.summary)


ANSWER_HEADERS = ["method", "tokens kept", "answer", "box (x1, y1, x2, y2)", "IoU vs GT", "IoU vs vanilla",
                  "agreement with vanilla"]
EFFICIENCY_HEADERS = ["method", "visual tokens", "prefill FLOPs", "FLOPs ×", "KV cache", "KV ×",
                      "measured prefill", "speed-up", "selection"]
SWEEP_HEADERS = ["method", "keep ratio", "tokens kept", "metric", "answer"]


def _label(name: str) -> str:
    return "Vanilla (unpruned)" if name == "vanilla" else viz.METHOD_LABELS.get(name, name)


def render_analysis(entry: Entry, request: Request, *, colour: str, log_colour: bool, out_dir: Path,
                    seconds: float | None = None) -> AnalysisView:
    """Figures, tables, the JSON summary and the download files of one analysis."""
    result = entry.result
    image = request.image.image
    geo = geometry_of(result)
    att = result.attention_flat.astype(np.float64)
    prior = _flat(result.prior)
    rel = result.relative_flat.astype(np.float64)
    k = result.layer
    if colour == "shared":
        rel_colour = rel * float(np.mean(prior))
        shared = viz.value_range(att, prior, rel_colour, log=log_colour)
        ranges, colours = (shared, shared, shared), (None, None, rel_colour)
        labels = ("attention", "attention (prior)", "relative × mean prior")
    else:
        ranges, colours = (None, None, None), (None, None, None)
        labels = ("attention", "prior", "attention / prior")
    prior_title = "uniform" if result.prior_source == "uniform" else result.prior_source.split(" of ")[0]
    fig_att = viz.token_heatmap(image, geo, att, title=f"Raw attention · layer {k - 1} → last prompt token",
                                value_label="attention", log=log_colour, zrange=ranges[0], colorbar_title=labels[0])
    fig_prior = viz.token_heatmap(image, geo, prior, title=f"Positional-bias prior · {prior_title}",
                                  value_label="prior", log=log_colour, zrange=ranges[1], colorbar_title=labels[1])
    fig_rel = viz.token_heatmap(image, geo, rel, title="Relative attention = attention / prior",
                                value_label="relative attention", colorscale=viz.RELATIVE_COLORSCALE,
                                color_values=colours[2], zrange=ranges[2], log=log_colour, colorbar_title=labels[2])
    kept_d2 = result.methods["d2pruner"].kept if "d2pruner" in result.methods else None
    gp = result.graph_params
    fig_graph = viz.graph_figure(
        image, geo, result.graph_edges, result.graph_edge_kinds,
        title=f"Hybrid graph · α = {gp['alpha']:g}, θ = {gp['theta']:g}", highlight=kept_d2,
        highlight_label="kept by D²Pruner",
    )
    panels = [viz.Panel("Vanilla", viz.VANILLA_COLOR, None, result.vanilla_box)]
    panels += [viz.Panel(_label(m), viz.METHOD_COLORS.get(m, "#111827"), r.kept, r.box)
               for m, r in result.methods.items()]
    n_all = result.num_candidates
    fig_methods = viz.methods_figure(
        image, geo, panels, gt_box=request.gt_box, reference_box=result.vanilla_box,
        title=f"Kept tokens and boxes · keep {result.n} of {n_all} ({result.n / n_all:.0%}) from layer {k}",
        cols=4 if len(panels) > 3 else len(panels),
    )
    fig_graph.update_layout(height=max(400, fig_methods.layout.height))
    grounding = _grounding_numbers(result, request.gt_box)
    eff = entry.efficiency
    answers = []
    for name, g in grounding.items():
        kept = n_all if name == "vanilla" else result.methods[name].num_kept
        answers.append([
            _label(name), f"{kept} / {n_all}", g["answer"] or "(empty)",
            _box_text(g["box"]) if request.grounding else "–",
            "–" if g["iou_vs_gt"] is None else f"{g['iou_vs_gt']:.2f}",
            "–" if g["iou_vs_vanilla"] is None else f"{g['iou_vs_vanilla']:.2f}",
            "–" if name == "vanilla" else f"{g['agreement']:.2f}" + (" (same)" if g["agreement"] == 1.0 else ""),
        ])
    efficiency = []
    van = eff["vanilla"]
    for name, e in eff.items():
        efficiency.append([
            _label(name), f"{e['kept_tokens']} / {e['visual_tokens']}",
            _si(e["flops_paper"], "FLOPs"), f"{e['flops_unpruned_paper'] / e['flops_paper']:.2f}×",
            _bytes(e["kv_bytes_paper"]), f"{e['kv_bytes_unpruned_paper'] / e['kv_bytes_paper']:.2f}×",
            f"{e['prefill_seconds'] * 1e3:.1f} ms",
            f"{van['prefill_seconds'] / e['prefill_seconds']:.2f}×" if e["prefill_seconds"] > 0 else "–",
            "–" if name == "vanilla" else f"{e['select_seconds'] * 1e3:.1f} ms",
        ])
    full = analysis_json(entry, request, grounding)
    summary = {key: value for key, value in full.items() if key not in ("tokens", "graph")}
    summary["methods"] = {m: {k2: v for k2, v in d.items() if k2 != "kept"} for m, d in full["methods"].items()}
    summary["graph"] = {k2: v for k2, v in full["graph"].items() if k2 not in ("edges", "kinds")}
    files = _write_files(full, entry, request, geo, panels, colours, ranges, labels, log_colour, out_dir, kept_d2)
    status = _status_markdown(entry, request, seconds)
    return AnalysisView(status, fig_att, fig_prior, fig_rel, fig_graph, fig_methods, answers, efficiency, files,
                        summary)


def _status_markdown(entry: Entry, request: Request, seconds: float | None) -> str:
    r = entry.result
    grids = ", ".join(f"{g.name} {g.rows}×{g.cols}" for g in r.grids)
    took = entry.seconds if seconds is None else seconds
    lines = [
        f"**{r.model}** ({r.family}, {entry.device}) · **N = {r.num_candidates}** visual tokens ({grids}) · "
        f"keep **n = {r.n}** ({r.n / r.num_candidates:.0%}) from layer **K = {r.layer}** · "
        f"{'grounding' if request.grounding else 'question'}: *{_esc(request.text[:120])}*"
        f"{'…' if len(request.text) > 120 else ''}",
        f"prior: {r.prior_source} · vision tower {r.vision_seconds * 1e3:.0f} ms · "
        f"vanilla prefill {r.vanilla_prefill_seconds * 1e3:.0f} ms · "
        + (f"computed in {entry.seconds:.1f} s" if seconds is None else f"from cache ({took:.2f} s)"),
    ]
    notes = list(dict.fromkeys([*request.notes, *r.notes]))
    if notes:
        lines.append("<span class='small-note'>Notes: " + " · ".join(_esc(n) for n in notes) + "</span>")
    return "\n\n".join(lines)


def analysis_json(entry: Entry, request: Request, grounding: dict[str, dict]) -> dict:
    """All numbers of one analysis (the downloadable JSON)."""
    r = entry.result
    methods = {}
    for m, res in r.methods.items():
        methods[m] = {
            "label": _label(m), "num_kept": int(res.num_kept), "kept": [int(i) for i in res.kept],
            **grounding[m], "prefill_seconds": res.prefill_seconds, "select_seconds": res.select_seconds,
            "params": res.params, "efficiency": entry.efficiency[m],
        }
    return {
        "format": "d2pruner-lab-analysis/1",
        "versions": {"d2pruner": d2pruner.__version__, "gradio": gr.__version__},
        "model": r.model, "family": r.family, "device": entry.device,
        "task": "grounding" if request.grounding else "question",
        "prompt": r.prompt, "question": r.question,
        "image": {"size": list(r.image_size), "processed_size": list(r.processed_size),
                  "uploaded_size": list(request.image.original_size), "sha1_16": request.image.digest},
        "settings": {"keep_ratio": r.keep_ratio, "layer": r.layer, "n": r.n, "num_candidates": r.num_candidates,
                     "max_new_tokens": request.max_new_tokens, "prior": request.prior, **request.params},
        "grids": [{"name": g.name, "rows": g.rows, "cols": g.cols, "offset": g.offset} for g in r.grids],
        "prior_source": r.prior_source,
        "prompt_tokens": int(r.prompt_tokens),
        "ground_truth": None if request.gt_box is None else [float(v) for v in request.gt_box],
        "vanilla": {**grounding["vanilla"], "prefill_seconds": r.vanilla_prefill_seconds,
                    "efficiency": entry.efficiency["vanilla"]},
        "methods": methods,
        "timing": {"vision_seconds": r.vision_seconds, "total_seconds": entry.seconds},
        "graph": {**r.graph_params, "num_edges": len(r.graph_edges),
                  "num_semantic": int(sum(k == "semantic" for k in r.graph_edge_kinds)),
                  "edges": np.asarray(r.graph_edges).tolist(), "kinds": list(r.graph_edge_kinds)},
        "tokens": {"regions": np.round(r.regions, 3).tolist(), "attention": r.attention_flat.tolist(),
                   "prior": _flat(r.prior).tolist(), "relative_attention": r.relative_flat.tolist()},
        "efficiency_conventions": {
            "paper": "FastV / D²Pruner Table 4: 4nd² + 2n²d + 2ndm per layer, KV at the pruned length everywhere",
            "exact": "2 FLOPs per MAC, GQA, gated FFN; KV full length below K",
        },
        "notes": list(dict.fromkeys([*request.notes, *r.notes])),
    }


def _write_files(full: dict, entry: Entry, request: Request, geo, panels, colours, ranges, labels, log_colour,
                 out_dir: Path, highlight) -> list[str]:
    r = entry.result
    stem = f"d2pruner-{re.sub(r'[^A-Za-z0-9.]+', '-', r.model).strip('-')}-{request.image.digest[:8]}-" \
           f"keep{round(r.keep_ratio * 100)}-K{r.layer}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(full, indent=1, default=float))
    att, prior, rel = r.attention_flat, _flat(r.prior), r.relative_flat
    heat = [
        ("raw attention", att, viz.ATTENTION_COLORSCALE, ranges[0], log_colour, labels[0]),
        ("bias prior", prior, viz.ATTENTION_COLORSCALE, ranges[1], log_colour, labels[1]),
        ("relative attention", rel if colours[2] is None else colours[2], viz.RELATIVE_COLORSCALE, ranges[2],
         log_colour, labels[2]),
    ]
    header = [
        f"model {r.model} ({r.family}) · N = {r.num_candidates} visual tokens · keep n = {r.n} from layer K = "
        f"{r.layer} · prior: {r.prior_source}",
        f"{'grounding' if request.grounding else 'question'}: {request.text[:300]}",
    ]
    footer = []
    for name, d in [("vanilla", full["vanilla"]), *full["methods"].items()]:
        e = entry.efficiency[name]
        iou = "" if d["iou_vs_gt"] is None else f" · IoU {d['iou_vs_gt']:.2f}"
        footer.append(f"{_label(name)}: {e['kept_tokens']}/{e['visual_tokens']} tokens · "
                      f"{_si(e['flops_paper'], 'FLOPs')} · KV {_bytes(e['kv_bytes_paper'])}{iou} · "
                      f"answer: {(d['answer'] or '(empty)')[:160]}")
    png = viz.report_png(request.image.image, geo, heatmaps=heat, edges=r.graph_edges, kinds=r.graph_edge_kinds,
                         panels=panels, gt_box=request.gt_box, reference_box=r.vanilla_box, header=header,
                         footer=footer, highlight=highlight,
                         graph_title=f"graph α={r.graph_params['alpha']:g} θ={r.graph_params['theta']:g}")
    png_path = out_dir / f"{stem}.png"
    png.save(png_path, optimize=True)
    return [str(json_path), str(png_path)]


# ----------------------------------------------------------------------------------------------------
# Handlers.


@contextmanager
def user_errors(what: str):
    """Turn bad input into a clear gr.Error (the app keeps serving); log anything unexpected."""
    try:
        yield
    except gr.Error:
        raise
    except (InputError, ValueError) as err:
        raise gr.Error(str(err), title=f"Cannot {what}", print_exception=False) from None
    except Exception as err:
        log.exception("%s failed", what)
        raise gr.Error(f"{what} failed: {type(err).__name__}: {err}", title=f"{what.capitalize()} failed") from None


class LabApp:
    """The event handlers. One instance per process; per-call state lives in locals and ``Request``."""

    def __init__(self, host: ModelHost, out_root: Path | None = None):
        self.host = host
        self.cache: OrderedDict[str, Entry] = OrderedDict()
        self._out_root = Path(out_root or tempfile.mkdtemp(prefix="d2pruner-lab-"))
        self._out_root.mkdir(parents=True, exist_ok=True)
        self._out_dirs: list[Path] = []

    # ---- helpers
    @property
    def analyzer(self) -> d2pruner.Analyzer:
        if self.host.analyzer is None:
            raise InputError("No model is loaded yet.")
        return self.host.analyzer

    def _out_dir(self) -> Path:
        d = Path(tempfile.mkdtemp(dir=self._out_root))
        self._out_dirs.append(d)
        while len(self._out_dirs) > 32:
            shutil.rmtree(self._out_dirs.pop(0), ignore_errors=True)
        return d

    def make_request(self, image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha, theta,
                     r_pivot, max_new_tokens, prior) -> Request:
        """Validate every input (clear messages) and decode the image."""
        grounding = (task or TASKS[0]) == "Grounding"
        if task not in TASKS and task is not None:
            raise InputError(f"Task must be one of {', '.join(TASKS)}, got {task!r}.")
        methods = tuple(dict.fromkeys(methods or ()))
        if not methods:
            raise InputError("Select at least one pruning method.")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(f"Unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
        keep = _number(keep_ratio, "Keep ratio", 0.0, 1.0)
        if keep == 0:
            raise InputError("Keep ratio 0 would remove every visual token: choose a value in (0, 1], "
                             "e.g. 0.25 keeps a quarter of them.")
        num_layers = self.analyzer.num_layers
        layer = _number(layer, f"Layer K ({self.host.status.loaded} has {num_layers} decoder layers)", 1,
                        num_layers - 1, integer=True)
        alpha = _number(alpha, "α (weight of semantic similarity in the hybrid graph)", 0.0, 1.0)
        theta = _number(theta, "θ (edge threshold of the hybrid graph)", 0.0, 1.0)
        r_pivot = _number(r_pivot, "r_pivot (share of pivots)", 0.0, 1.0)
        max_new_tokens = _number(max_new_tokens, "Max new tokens", 1, MAX_NEW_TOKENS, integer=True)
        if prior not in [v for _, v in PRIOR_CHOICES]:
            raise InputError(f"Prior must be one of {[v for _, v in PRIOR_CHOICES]}, got {prior!r}.")
        text, notes = clean_prompt(expression if grounding else prompt,
                                   what="referring expression" if grounding else "prompt")
        loaded = load_image(image)
        notes = [*loaded.notes, *notes]
        box = parse_box(gt_box, loaded.image.size, loaded.scale)
        if box is not None and not grounding:
            notes.append("the ground-truth box is only used in grounding mode")
            box = None
        if keep == 1.0:
            notes.append("keep ratio 1 keeps every visual token: each method equals the unpruned model")
        params = {"alpha": alpha, "theta": theta, "r_pivot": r_pivot} if "d2pruner" in methods else {}
        return Request(loaded, grounding, text, box, methods, keep, layer, params, max_new_tokens, prior, notes)

    def _analysis(self, request: Request, keep_ratio: float, progress) -> tuple[Entry, bool]:
        """The cached analysis of ``request`` at ``keep_ratio`` (computed lazily)."""
        host = self.host
        with host.lock:
            key = request.key(host.status.loaded, keep_ratio)
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key], True
            analyzer = self.analyzer

            def calibrating(done: int, total: int, message: str) -> None:
                progress((done, total), desc=f"calibrating the prior: {message}")

            start = time.perf_counter()
            result = analyzer.analyze(
                request.image.image, request.text, methods=request.methods, keep_ratio=keep_ratio,
                layer=request.layer, grounding=request.grounding, max_new_tokens=request.max_new_tokens,
                prior=request.prior, progress=calibrating, **request.params,
            )
            entry = Entry(result, efficiency_numbers(result, analyzer.model), host.device,
                          time.perf_counter() - start)
            self.cache[key] = entry
            while len(self.cache) > RESULT_CACHE_SIZE:
                self.cache.popitem(last=False)
            return entry, False

    # ---- events
    def analyze(self, image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha, theta, r_pivot,
                max_new_tokens, prior, colour_scale="independent", log_colour=False, progress=gr.Progress()):  # noqa: B008 - Gradio's progress hook
        """Run the unpruned model and every selected method on one image; return all panels."""
        return self.run_analysis(image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha, theta,
                                 r_pivot, max_new_tokens, prior, colour_scale, log_colour, progress).outputs()

    def run_analysis(self, image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha, theta,
                     r_pivot, max_new_tokens, prior, colour_scale="independent", log_colour=False,
                     progress=None) -> AnalysisView:
        progress = progress or (lambda *a, **k: None)
        with user_errors("analyse"):
            request = self.make_request(image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha,
                                        theta, r_pivot, max_new_tokens, prior)
            for note in request.notes:
                gr.Warning(note[0].upper() + note[1:] + ".")
            progress(0.05, desc=f"running the unpruned model and {len(request.methods)} methods …")
            start = time.perf_counter()
            entry, cached = self._analysis(request, request.keep_ratio, progress)
            progress(0.9, desc="drawing the panels …")
            return render_analysis(entry, request, colour=colour_scale, log_colour=bool(log_colour),
                                   out_dir=self._out_dir(), seconds=time.perf_counter() - start if cached else None)

    def rerender(self, *args):
        """Redraw the panels after a colour-scale change, only if that analysis is already cached."""
        try:
            request = self.make_request(*args[:13])
        except (InputError, ValueError):
            return tuple(gr.skip() for _ in range(10))
        if request.key(self.host.status.loaded, request.keep_ratio) not in self.cache:
            return tuple(gr.skip() for _ in range(10))
        return self.analyze(*args)

    def sweep(self, image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha, theta, r_pivot,
              max_new_tokens, prior, ratios, progress=gr.Progress()):  # noqa: B008 - Gradio's progress hook
        """Every selected method at several keep ratios: IoU against the ground truth (grounding with a box) or
        answer agreement with the unpruned model, against keep ratio."""
        with user_errors("run the sweep"):
            ratio_list = parse_ratios(ratios)
            request = self.make_request(image, task, prompt, expression, gt_box, methods, 0.5, layer, alpha, theta,
                                        r_pivot, max_new_tokens, prior)
            use_iou = request.grounding and request.gt_box is not None
            metric = "IoU with the ground-truth box" if use_iou else "answer agreement with vanilla (word F1)"
            series = {m: [] for m in request.methods}
            rows, vanilla_iou = [], None
            for i, ratio in enumerate(ratio_list):
                progress((i, len(ratio_list)), desc=f"keep {ratio:.0%}: {len(request.methods)} methods …",
                         unit="ratios")
                entry, _ = self._analysis(request, ratio, progress)
                r = entry.result
                if use_iou:
                    vanilla_iou = float(d2pruner.box_iou(r.vanilla_box, request.gt_box))
                for m, res in r.methods.items():
                    value = float(d2pruner.box_iou(res.box, request.gt_box)) if use_iou else word_f1(res.answer,
                                                                                             r.vanilla_answer)
                    series[m].append(value)
                    rows.append([_label(m), f"{ratio:g}", f"{res.num_kept} / {r.num_candidates}", f"{value:.3f}",
                                 res.answer[:80] + ("…" if len(res.answer) > 80 else "")])
            progress((len(ratio_list), len(ratio_list)), desc="done", unit="ratios")
            named = {_label(m): v for m, v in series.items()}
            colors = {_label(m): viz.METHOD_COLORS[m] for m in series}
            if vanilla_iou is not None:
                named["Vanilla (unpruned)"] = [vanilla_iou] * len(ratio_list)
                colors["Vanilla (unpruned)"] = "#6B7280"
            fig = viz.sweep_figure(ratio_list, named, metric_label=metric, colors=colors,
                                   title=f"Keep-ratio sweep · {metric}")
            return fig, rows

    def explore_bias(self, layer, blank_colour="grey", log_colour=False, progress=gr.Progress()):  # noqa: B008 - Gradio's progress hook
        """The loaded model's positional bias at layer K: natural and content-free priors, their marginals, and
        the attention on a blank image."""
        with user_errors("explore the bias"):
            analyzer = self.analyzer
            k = _number(layer, f"Layer K ({analyzer.num_layers} decoder layers)", 1, analyzer.num_layers - 1,
                        integer=True)
            if blank_colour not in BLANK_COLOURS:
                raise InputError(f"Blank colour must be one of {list(BLANK_COLOURS)}, got {blank_colour!r}.")

            def report(kind):
                return lambda done, total, message: progress((done, total), desc=f"{kind} prior: {message}")

            with self.host.lock:
                natural = analyzer.get_prior(k, "natural", progress=report("natural"))
                content_free = analyzer.get_prior(k, "content-free", progress=report("content-free"))
                blank = Image.new("RGB", (448, 448), BLANK_COLOURS[blank_colour])
                prompt = natural.prompt or "Describe the image."
                observed = analyzer.observe(blank, prompt, layer=k)
            nat = {role: m.detach().cpu().numpy() for role, m in natural.maps.items()}
            cf = {role: m.detach().cpu().numpy() for role, m in content_free.maps.items()}
            obs = {g.name: a for g, a in zip(observed.grids, observed.attention, strict=True)}
            log_c = bool(log_colour)
            fig_nat = viz.maps_figure(nat, title=f"Natural prior · layer {k - 1} attention, mean over "
                                      f"{natural.num_images} photos", value_label="mean attention", log=log_c,
                                      normalise=True)
            fig_cf = viz.maps_figure(cf, title=f"Content-free prior · {content_free.num_images} blank / noise images",
                                     value_label="mean attention", log=log_c, normalise=True)
            fig_blank = viz.maps_figure(obs, title=f"Attention on a blank {blank_colour} image",
                                        value_label="attention", log=log_c, normalise=True)
            main = _main_role(nat)
            fig_marg = viz.marginals_figure(
                {"natural prior": nat[main], "content-free prior": cf.get(main, next(iter(cf.values()))),
                 "blank image": obs[_main_role(obs)]},
                colors={"natural prior": "#DC2626", "content-free prior": "#2563EB", "blank image": "#6B7280"},
                dashes={"blank image": "dot"},
                title=f"Row and column marginals ({main}) · 1 = uniform",
            )
            status = _bias_markdown(analyzer, k, natural, content_free, nat[main], prompt)
            return status, fig_nat, fig_cf, fig_blank, fig_marg

    def switch_model(self, name, progress=gr.Progress()):  # noqa: B008 - Gradio's progress hook
        """Load another model (one in memory at a time); fall back to a tiny model with a banner on failure."""
        with user_errors("switch the model"):
            progress(0.1, desc=f"loading {name} …")
            status = self.host.load(name, progress=lambda msg: progress(0.3, desc=msg))
            if status.reason:
                gr.Warning(f"{name} could not be loaded ({status.reason}); running {status.loaded}.")
            layers = self.analyzer.num_layers
            return status.banner_html(), gr.update(maximum=layers - 1, value=min(2, layers - 1)), \
                _model_markdown(self.host)

    def pick_corner(self, pending, evt: gr.SelectData):
        """Two clicks on the input image set the ground-truth box (first corner, then the opposite one)."""
        x, y = (float(v) for v in evt.index[:2])
        if not pending:
            gr.Info(f"First corner at ({x:.0f}, {y:.0f}); click the opposite corner.")
            return gr.skip(), [x, y]
        x0, y0 = pending
        box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return gr.skip(), None
        return ", ".join(f"{v:.0f}" for v in box), None


def _main_role(maps: dict) -> str:
    detail = [r for r in maps if r not in ("base", "thumbnail")]
    return detail[0] if detail else next(iter(maps))


def _bias_markdown(analyzer, layer, natural, content_free, main_map: np.ndarray, prompt: str) -> str:
    rows = main_map.mean(axis=1)
    third = max(1, len(rows) // 3)
    ratio = rows[-third:].sum() / max(rows[:third].sum(), 1e-12)
    lean = "bottom-heavy" if ratio > 1.1 else "top-heavy" if ratio < 1 / 1.1 else "balanced top–bottom"
    return "\n\n".join([
        f"**{analyzer.name}** · layer K = {layer} (attention of the last prompt token at layer {layer - 1}) · "
        f"prompt used: *{_esc(prompt)}*",
        f"natural: {_esc(natural.describe())}",
        f"content-free: {_esc(content_free.describe())}",
        f"Bottom third / top third of the rows: **{ratio:.2f}×** the attention mass ({lean}).",
    ])


def _model_markdown(host: ModelHost) -> str:
    a = host.analyzer
    if a is None:
        return ""
    params = sum(p.numel() for p in a.model.parameters())
    note = f" · {host.device_note}" if host.device_note else ""
    return (f"<span class='small-note'>running <b>{_esc(a.name)}</b> · family <b>{a.family}</b> · "
            f"{a.num_layers} decoder layers · "
            f"{params / 1e6:,.1f} M parameters · {host.device} · dtype {str(a.model.dtype).replace('torch.', '')}"
            f"{note}</span>")


# ----------------------------------------------------------------------------------------------------
# Layout.


def load_examples() -> list[dict]:
    with (EXAMPLES_DIR / "examples.json").open() as f:
        items = json.load(f)
    return [e for e in items if (EXAMPLES_DIR / e["file"]).is_file()]


ABOUT = """
### How to read the panels
* **Raw attention** — attention of the last prompt token to every visual token at layer K−1 (mean over heads), as
  the model computed it. FastV keeps the largest of these.
* **Positional-bias prior** — the mean of that attention over many natural photos (calibrated once per model and
  layer from `assets/calibration/`, then cached). LLaVA-1.5 puts more attention on the bottom rows whatever the
  image shows; the prior measures this.
* **Relative attention** — attention / prior (D²Pruner eq. 3): what the prompt attends to *beyond* the positional habit.
* **Hybrid graph** — D²Pruner joins tokens i ≠ j when α·Ŝ_sem + (1−α)·S_spat > θ: solid blue edges join grid
  neighbours that are also similar, dotted pink edges join distant tokens by similarity alone (only when α > θ).
  Red nodes: the tokens D²Pruner kept — pivots (largest relative attention) plus a greedy independent set.
* **Kept tokens and boxes** — per method, pruned tokens are shaded; the facet title gives the kept count and the IoU
  of its box with the ground truth (dashed green); the vanilla box is dotted.
* **Efficiency** — analytic prefill FLOPs and KV cache (paper convention, `d2pruner.efficiency`; the downloaded
  JSON also has the exact count) and the measured prefill time of each pruned forward pass. The vanilla prefill
  runs with the attention-capture hooks on; on a tiny CPU model the times are dominated by overhead, and the first
  pass after loading includes warm-up.
* **Sweep** — IoU with the ground-truth box (grounding with a box), else word-F1 agreement with the vanilla answer,
  at each keep ratio.

Multi-grid models have buttons in the panels: LLaVA-NeXT's *high-res grid* / *base grid*, InternVL's *tiles* /
*thumbnail*. Boxes and regions are in pixels of the uploaded image (LLaVA-1.5: the model sees the centre crop).
A tiny model has random weights: its answers are gibberish and its boxes rarely parse; everything else is real.
"""


def build_demo(lab: LabApp) -> gr.Blocks:
    """The Gradio Blocks of the app, wired to ``lab``'s handlers."""
    analyzer = lab.analyzer
    examples = load_examples()
    layers = analyzer.num_layers
    with gr.Blocks(title="D²Pruner lab", delete_cache=(3600, 7200)) as demo:
        gr.HTML(
            "<div class='lab-header'><h1>D²Pruner lab</h1><p>Which visual tokens does each pruning method keep "
            "inside a multimodal LLM — and why? Raw attention is biased by position; D²Pruner divides it by a "
            "calibrated prior and keeps diverse tokens on a hybrid spatial–semantic graph.</p></div>"
        )
        banner = gr.HTML(lab.host.status.banner_html(), elem_id="model-banner")
        # rendered below the examples, created first so that the examples can fill them
        task = gr.Radio(list(TASKS), value="Grounding", label="Task", render=False)
        prompt = gr.Textbox("", label="Question", lines=2, visible=False, max_length=20000, render=False,
                            placeholder="What is on the table?")
        expression = gr.Textbox("", label="Referring expression", lines=1, max_length=20000, render=False,
                                placeholder="the spoon on the saucer")
        gt_box = gr.Textbox("", label="Ground-truth box (optional)", placeholder="x1, y1, x2, y2 in pixels",
                            info="typed, or two clicks on the image; IoU is measured against it", render=False)
        with gr.Row(equal_height=True):
            model_dd = gr.Dropdown(MODEL_CHOICES, value=lab.host.status.requested, label="Model",
                                   allow_custom_value=True, scale=3, elem_id="model-dropdown",
                                   info="A hub id of a supported family (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, InternVL "
                                        "-hf), a local path, or a tiny random model. One model is kept in memory.")
            model_md = gr.Markdown(_model_markdown(lab.host), elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Analysis", id="analysis"), gr.Row():
                with gr.Column(scale=1, min_width=340):
                    image = gr.Image(type="filepath", label="Image · click two corners to set the GT box",
                                     sources=["upload", "clipboard"], height=280, elem_id="input-image")
                    gr.Examples(
                        examples=[[str(EXAMPLES_DIR / e["file"]), "Grounding", e["prompt"],
                                   e["referring_expression"], ", ".join(str(v) for v in e["box"])]
                                  for e in examples],
                        inputs=[image, task, prompt, expression, gt_box],
                        example_labels=[Path(e["file"]).stem.replace("_", " ") for e in examples],
                        label="Examples: photos with a referring expression and a hand-placed box",
                        cache_examples=False, examples_per_page=12,
                    )
                    for component in (task, prompt, expression, gt_box):
                        component.render()
                    methods = gr.CheckboxGroup(METHOD_CHOICES, value=list(METHODS), label="Methods")
                    analyze_btn = gr.Button("Analyze", variant="primary", elem_id="analyze-btn")
                    with gr.Accordion("Pruning settings", open=True):
                        keep_ratio = gr.Slider(0.0, 1.0, value=0.25, step=0.01, label="Keep ratio",
                                               info="fraction of the N visual tokens kept, 0 < r ≤ 1",
                                               elem_id="keep-ratio")
                        layer = gr.Slider(1, max(2, layers - 1), value=min(2, layers - 1), step=1,
                                          label="Layer K", info="tokens are dropped from decoder layer K on")
                        prior = gr.Dropdown(PRIOR_CHOICES, value="auto", label="Prior for relative attention")
                        with gr.Row():
                            alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="α", min_width=120,
                                              info="semantic weight of the graph")
                            theta = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="θ", min_width=120,
                                              info="edge threshold")
                        with gr.Row():
                            r_pivot = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="r_pivot", min_width=120,
                                                info="share of pivots")
                            max_new_tokens = gr.Slider(1, 256, value=24, step=1, label="Max new tokens",
                                                       min_width=120, info="greedy decoding")
                    with gr.Accordion("Display", open=True), gr.Row(equal_height=True):
                        colour_scale = gr.Radio(COLOUR_CHOICES, value="independent", label="Heatmap colours",
                                                scale=3, info="shared: one range for the three heatmaps")
                        log_colour = gr.Checkbox(False, label="log colour", scale=1)
                    corner = gr.State(None)
                with gr.Column(scale=3):
                    status = gr.Markdown("Pick an example (or upload an image) and press **Analyze**.",
                                         elem_id="status-md")
                    with gr.Row(equal_height=True):
                        plot_att = gr.Plot(label="Raw attention", show_label=False, elem_id="plot-attention")
                        plot_prior = gr.Plot(label="Bias prior", show_label=False, elem_id="plot-prior")
                        plot_rel = gr.Plot(label="Relative attention", show_label=False, elem_id="plot-relative")
                    with gr.Row(equal_height=True):
                        plot_graph = gr.Plot(label="Hybrid graph", show_label=False, elem_id="plot-graph", scale=2)
                        plot_methods = gr.Plot(label="Kept tokens and boxes", show_label=False,
                                               elem_id="plot-methods", scale=5)
                    answers = gr.Dataframe(headers=ANSWER_HEADERS, label="Answers and boxes", interactive=False,
                                           wrap=True, elem_id="answers",
                                           column_widths=["13%", "8%", "37%", "14%", "8%", "9%", "11%"])
                    efficiency = gr.Dataframe(headers=EFFICIENCY_HEADERS, elem_id="efficiency", interactive=False,
                                              label="Efficiency · analytic prefill FLOPs and KV cache (paper "
                                                    "convention) · measured prefill time", wrap=True)
                    with gr.Row():
                        files = gr.File(label="Download the analysis: JSON with every number + PNG of the panels",
                                        file_count="multiple", interactive=False, elem_id="downloads", scale=1)
                        with gr.Column(scale=1), gr.Accordion("All numbers (JSON summary)", open=False):
                            summary = gr.JSON(label="summary", elem_id="summary")
                    with gr.Accordion("Keep-ratio sweep", open=True):
                        with gr.Row(equal_height=True):
                            ratios = gr.Textbox(DEFAULT_SWEEP, label="Keep ratios", scale=4,
                                                info="every selected method at each ratio, same inputs as above; "
                                                     "IoU with the GT box, else answer agreement with vanilla")
                            sweep_btn = gr.Button("Run sweep", scale=1, elem_id="sweep-btn")
                        plot_sweep = gr.Plot(label="Sweep", show_label=False, elem_id="plot-sweep")
                        sweep_table = gr.Dataframe(headers=SWEEP_HEADERS, label="Sweep numbers", interactive=False,
                                                   wrap=True, max_height=320, elem_id="sweep-table",
                                                   column_widths=["14%", "10%", "12%", "10%", "54%"])
            with gr.Tab("Bias explorer", id="bias"):
                with gr.Row(equal_height=True):
                    blank_colour = gr.Radio(list(BLANK_COLOURS), value="grey", label="Blank image colour", scale=2)
                    bias_log = gr.Checkbox(False, label="log colour", scale=1)
                    bias_btn = gr.Button("Show the positional bias", variant="primary", scale=2, elem_id="bias-btn")
                gr.Markdown("<span class='small-note'>Uses the model above and layer K of the analysis settings. The "
                            "first use per model and layer calibrates the priors (progress bar), then they are cached."
                            "</span>")
                bias_status = gr.Markdown(elem_id="bias-status")
                with gr.Row(equal_height=True):
                    plot_nat = gr.Plot(label="Natural prior", show_label=False, elem_id="plot-natural")
                    plot_cf = gr.Plot(label="Content-free prior", show_label=False, elem_id="plot-content-free")
                with gr.Row(equal_height=True):
                    plot_blank = gr.Plot(label="Attention on a blank image", show_label=False, elem_id="plot-blank")
                    plot_marg = gr.Plot(label="Marginals", show_label=False, elem_id="plot-marginals")
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)

        inputs = [image, task, prompt, expression, gt_box, methods, keep_ratio, layer, alpha, theta, r_pivot,
                  max_new_tokens, prior]
        outputs = [status, plot_att, plot_prior, plot_rel, plot_graph, plot_methods, answers, efficiency, files,
                   summary]
        # preprocess=False: the handlers get the raw values — the uploaded file's path undecoded and slider numbers
        # unchecked — and explain bad ones themselves (Gradio's own decoding fails with a bare exception on corrupt
        # files and decompression bombs, and its range check does not name the parameter). Uploads are still moved
        # to Gradio's cache and checked to come from its upload folder.
        analyze_btn.click(gpu(lab.analyze), [*inputs, colour_scale, log_colour], outputs, api_name="analyze",
                          concurrency_id="gpu", concurrency_limit=1, preprocess=False)
        for control in (colour_scale, log_colour):
            control.change(gpu(lab.rerender), [*inputs, colour_scale, log_colour], outputs, api_visibility="private",
                           concurrency_id="gpu", concurrency_limit=1, show_progress="minimal", preprocess=False)
        sweep_btn.click(gpu(lab.sweep), [*inputs, ratios], [plot_sweep, sweep_table], api_name="sweep",
                        concurrency_id="gpu", concurrency_limit=1, preprocess=False)
        bias_btn.click(gpu(lab.explore_bias), [layer, blank_colour, bias_log],
                       [bias_status, plot_nat, plot_cf, plot_blank, plot_marg], api_name="bias",
                       concurrency_id="gpu", concurrency_limit=1, preprocess=False)
        model_dd.change(gpu(lab.switch_model), [model_dd], [banner, layer, model_md], api_name="load_model",
                        concurrency_id="gpu", concurrency_limit=1)
        task.change(lambda t: (gr.update(visible=t != "Grounding"), gr.update(visible=t == "Grounding")), [task],
                    [prompt, expression], api_visibility="private", queue=False)
        image.select(lab.pick_corner, [corner], [gt_box, corner], api_visibility="private", show_progress="hidden")
        image.upload(lambda: ("", None), None, [gt_box, corner], api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


# ----------------------------------------------------------------------------------------------------
# CLI.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="D²Pruner lab: visual-token pruning, side by side.")
    parser.add_argument("--model", default=os.environ.get("D2PRUNER_MODEL", DEFAULT_MODEL),
                        help=f"hub id, local path or tiny-* name (default {DEFAULT_MODEL})")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: CUDA when available")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--host", default=None, help="address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host = ModelHost(device=args.device)
    status = host.load(args.model, progress=lambda msg: log.info(msg))
    if status.reason:
        log.warning("could not load %s (%s); running %s", status.requested, status.reason, status.loaded)
    demo = build_demo(LabApp(host))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=gr.themes.Soft(), css=CSS,
                max_file_size=MAX_UPLOAD_BYTES, footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
