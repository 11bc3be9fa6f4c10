"""Input checking and normalisation, in one place: images, prompts, method lists and parameters, budgets, limits.

Every public entry point (``Analyzer.analyze`` / ``generate`` / ``observe``, and the app through them) validates
its arguments here once; inner code trusts them. A problem is a ``ValueError`` whose message names the parameter
and what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from d2pruner.methods import METHODS, build_method, method_parameters

#: images whose shorter side is below this are upscaled (every family's processor needs a few patches)
MIN_IMAGE_SIDE = 28
#: aspect ratios above this are rejected (Qwen2.5-VL's processor limit, applied to every family)
MAX_ASPECT_RATIO = 200.0
#: the longest prompt or referring expression accepted (characters)
MAX_PROMPT_CHARS = 2000
#: the most tokens one answer may generate
MAX_NEW_TOKENS = 512


def keep_count(keep_ratio: float, num_tokens: int) -> int:
    """``n = max(1, round(keep_ratio · N))`` after checking ``keep_ratio ∈ (0, 1]``."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real) or not math.isfinite(keep_ratio):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    if not 0.0 < float(keep_ratio) <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, round(float(keep_ratio) * num_tokens))


def to_rgb(image) -> object:
    """Any PIL image (RGBA, LA, P, L, CMYK, I;16, I, F, …) or HxW[xC] uint8/float array → RGB PIL image.

    Transparency is composited on white; 16-bit / 32-bit / float single-channel images are scaled by their
    own min–max range to 8 bits."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
            raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr.astype(np.float64))
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL.Image or a numpy array, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image is empty ({image.width}x{image.height})")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image.convert("F") if mode.startswith("I;16") else image, dtype=np.float64)
        return Image.fromarray(_to_uint8(arr)).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if mode != "RGB" else image


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) / (hi - lo) * 255.0).astype(np.uint8)


def fit_image(image, max_pixels: int | None, min_side: int = MIN_IMAGE_SIDE) -> tuple[object, list[str]]:
    """Downscale above ``max_pixels`` / upscale below :data:`MIN_IMAGE_SIDE` (aspect kept); notes say so."""
    from PIL import Image

    w, h = image.size
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio {max(w, h) / min(w, h):.0f}:1 exceeds {MAX_ASPECT_RATIO:.0f}:1")
    notes = []
    if max_pixels is not None and w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        image = image.resize(size, Image.BICUBIC)
        notes.append(f"image downscaled from {w}x{h} to {size[0]}x{size[1]} (family maximum {max_pixels} pixels)")
    elif min(w, h) < min_side:
        scale = min_side / min(w, h)
        size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
        image = image.resize(size, Image.NEAREST)
        notes.append(f"image upscaled from {w}x{h} to {size[0]}x{size[1]} (shorter side below {min_side} px)")
    return image, notes




def check_prompt(prompt, *, what: str = "prompt", limit: int = MAX_PROMPT_CHARS) -> str:
    """A non-empty string of at most ``limit`` characters that encodes as UTF-8 (stripped)."""
    if not isinstance(prompt, str):
        raise ValueError(f"{what} must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid text: it holds an unpaired surrogate character") from None
    prompt = prompt.strip()
    if not prompt:
        raise ValueError(f"{what} is empty")
    if len(prompt) > limit:
        raise ValueError(f"{what} has {len(prompt)} characters; at most {limit} are accepted")
    return prompt


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """An integer (not a bool) in ``[low, high]``."""
    span = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {span}, got {value}")
    return int(value)


def check_methods(methods) -> tuple[str, ...]:
    """Method names from ``d2pruner.METHODS``: one name or a sequence of distinct names."""
    choices = ", ".join(sorted(METHODS))
    if isinstance(methods, str):
        methods = (methods,)
    if not isinstance(methods, Sequence) or isinstance(methods, (bytes, bytearray)):
        raise ValueError(f"methods must be a method name or a list of names ({choices}); got "
                         f"{type(methods).__name__}")
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"methods is empty; choose from {choices}")
    if not all(isinstance(m, str) for m in methods):
        bad = next(m for m in methods if not isinstance(m, str))
        raise ValueError(f"methods must be names (strings); got {bad!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {choices}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat: {list(methods)}")
    return methods


def route_params(methods: Sequence[str], params: dict) -> dict[str, dict]:
    """Route ``**method_params`` to every requested method that takes a parameter of that name, and check the
    values by building each method once (its dataclass validates and names the parameter)."""
    routed: dict[str, dict] = {m: {} for m in methods}
    for key, value in params.items():
        takers = [m for m in methods if key in method_parameters(METHODS[m])]
        if not takers:
            raise ValueError(f"no requested method has a parameter {key!r} (methods: {list(methods)})")
        for m in takers:
            routed[m][key] = value
    for method, chosen in routed.items():
        try:
            build_method(method, **chosen)
        except TypeError as error:
            raise ValueError(f"bad parameter for method {method!r}: {error}") from None
    return routed
