"""Shared fixtures: every tiny model is built once per session (per attention implementation)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

FAMILY_NAMES = (
    "tiny-llava",
    "tiny-llava-next",
    "tiny-qwen2.5-vl",
    "tiny-internvl",
    "tiny-qwen3-vl",
    "tiny-llava-onevision",
)


class _TinyCache:
    def __init__(self):
        self._models = {}

    def get(self, name: str, attn: str = "sdpa"):
        from d2pruner.families import build_tiny

        key = (name, attn)
        if key not in self._models:
            self._models[key] = build_tiny(name, attn_implementation=attn)
        return self._models[key]


@pytest.fixture(scope="session")
def tiny_models() -> _TinyCache:
    """``tiny_models.get(name, attn)`` → a :class:`d2pruner.tiny.TinyModel`, built once per session."""
    return _TinyCache()


@pytest.fixture(scope="session")
def test_image() -> Image.Image:
    """A deterministic 112×168 RGB image (Qwen2.5-VL: image_grid_thw [1, 8, 12] → 4×6 tokens)."""
    rng = np.random.RandomState(0)
    arr = (rng.rand(112, 168, 3) * 255).astype("uint8")
    arr[20:60, 30:90] = (250, 30, 30)  # some structure
    return Image.fromarray(arr)


class _AnalyzerCache:
    def __init__(self, prior_dir):
        self._analyzers = {}
        self._prior_dir = prior_dir

    def get(self, name: str):
        from d2pruner.analysis import load

        if name not in self._analyzers:
            analyzer = load(name)
            analyzer.prior_dirs = [self._prior_dir]  # never write into the repository's priors/
            self._analyzers[name] = analyzer
        return self._analyzers[name]


@pytest.fixture(scope="session")
def session_priors(tmp_path_factory):
    """A session copy of the bundled priors/ folder: tests read the shipped priors and write their own here."""
    from d2pruner.resources import BUNDLED_PRIORS_DIR

    folder = tmp_path_factory.mktemp("priors")
    for path in BUNDLED_PRIORS_DIR.glob("*.safetensors"):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def tiny_analyzers(session_priors) -> _AnalyzerCache:
    """``tiny_analyzers.get(name)`` → an :class:`d2pruner.analyzer.Analyzer`, loaded once per session."""
    return _AnalyzerCache(session_priors)


def cache_of(output):
    """The KV cache of a model output (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cache_argument(cache) -> dict:
    """The keyword this transformers release's forward takes the cache under (``cache`` from 5.24)."""
    import inspect

    from transformers import LlamaModel

    name = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
    return {name: cache}
