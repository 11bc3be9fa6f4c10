"""A fake analyzer for the app's UI tests (after hysts' ``_mock_inference.py``): the interface of
:class:`d2pruner.Analyzer` that the app uses, answering at once with deterministic results of real layouts —
LLaVA-1.5's 24×24 centre-cropped grid (576 tokens, 32 layers), LLaVA-NeXT's base + high-res grids with newline tokens
(2,880 grid tokens), InternVL tiles + thumbnail — so the UI is tested at real sizes without a model. The settings are
validated by the package itself (``AnalysisSettings.create``), so its messages are the ones the UI shows.

``fake_loader(name, device=…, local_folder=…)`` is a :class:`~d2pruner.serving.host.ModelHost` loader: ``tiny-*``
names and anything containing "next" / "internvl" pick those layouts.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from types import SimpleNamespace

import numpy as np

from d2pruner.analysis.results import AnalysisResult, MethodResult, Observation
from d2pruner.analysis.settings import AnalysisSettings
from d2pruner.methods import SelectionStep
from d2pruner.ops import GridView
from d2pruner.priors import Prior

LAYOUTS = ("llava-1.5", "llava-next", "internvl")
#: answers whose box parses, per method (the rest have none): "no box" must be shown as such
BOXED = {"fastv", "d2pruner", "divprune"}


class _Param:
    def __init__(self, n: int, size: int = 2):
        self._n, self._size = n, size

    def numel(self) -> int:
        return self._n

    def element_size(self) -> int:
        return self._size


class FakeModel:
    """What the app reads of a model: its config (efficiency arithmetic), dtype and parameter count."""

    def __init__(self, layers: int, heads: int):
        text = SimpleNamespace(num_hidden_layers=layers, hidden_size=4096, intermediate_size=11008,
                               num_attention_heads=heads, num_key_value_heads=heads, head_dim=128, vocab_size=32064)
        self.config = SimpleNamespace(get_text_config=lambda: text, name_or_path="fake", model_type="llava")
        self.dtype = SimpleNamespace(itemsize=2)

    def parameters(self):
        return [_Param(7_000_000)]


def _seed(*parts) -> int:
    return int(hashlib.sha1(repr(parts).encode()).hexdigest()[:8], 16)


def _cells(x0, y0, x1, y1, rows, cols) -> np.ndarray:
    xs, ys = np.linspace(x0, x1, cols + 1), np.linspace(y0, y1, rows + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(rows) for c in range(cols)])


class FakeAnalyzer:
    """Deterministic analyses of a real layout at once; ``delay`` seconds per analysis (to test concurrency)."""

    def __init__(self, name: str, layout: str = "llava-1.5", *, layers: int = 32, heads: int = 4, delay: float = 0.0):
        if layout not in LAYOUTS:
            raise ValueError(layout)
        self.name, self.layout_kind, self.delay = name, layout, delay
        self.family = {"llava-1.5": "llava", "llava-next": "llava_next", "internvl": "internvl"}[layout]
        self.model = FakeModel(layers, heads)
        self._layers, self._heads = layers, heads
        self.calls = 0
        self.calibrated: set[tuple[int, str]] = set()
        self._lock = threading.Lock()

    @property
    def num_layers(self) -> int:
        return self._layers

    # ---- geometry of the fake layouts
    def _grids(self, size: tuple[int, int]):
        w, h = size
        if self.layout_kind == "llava-1.5":  # centre crop of the shorter side, 24×24
            side = min(w, h)
            x0, y0 = (w - side) / 2, (h - side) / 2
            return [("image", 24, 24, _cells(x0, y0, x0 + side, y0 + side, 24, 24))], 0
        if self.layout_kind == "llava-next":  # base 24×24 over the image + 48×60 high-res; newline per row
            return [("base", 24, 24, _cells(0, 0, w, h, 24, 24)), ("highres", 48, 48, _cells(0, 0, w, h, 48, 48))], 48
        tiles = [(f"tile{i}", 16, 16, _cells(i * w / 2, 0, (i + 1) * w / 2, h, 16, 16)) for i in range(2)]
        return [*tiles, ("thumbnail", 16, 16, _cells(0, 0, w, h, 16, 16))], 0

    # ---- the Analyzer interface the app uses
    def analyze(self, image, prompt, *, methods=("fastv", "dart", "d2pruner"), keep_ratio=0.25, layer=2,
                grounding=False, max_new_tokens=32, prior="auto", steps=False, heads=False, progress=None,
                **method_params) -> AnalysisResult:
        settings = AnalysisSettings.create(num_layers=self.num_layers, methods=methods, keep_ratio=keep_ratio,
                                           layer=layer, grounding=grounding, max_new_tokens=max_new_tokens,
                                           prior=prior, steps=steps, heads=heads, **method_params)
        from d2pruner.analysis.inputs import check_prompt

        prompt = check_prompt(prompt, what="referring expression" if grounding else "prompt")
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        size = image.size
        specs, newlines = self._grids(size)
        grids, regions, offset = [], [], 0
        for name, rows, cols, cells in specs:
            grids.append(GridView(name, rows, cols, offset))
            regions.append(cells)
            offset += rows * cols
        regions = np.concatenate(regions)
        num = offset
        rng = np.random.default_rng(_seed(self.name, prompt, size, settings.layer))
        logits = rng.normal(size=num) + np.linspace(0, 1.5, num)  # bottom-heavy, like LLaVA
        att = (np.exp(logits) / np.exp(logits).sum() * 0.4).astype(np.float32)
        prior_flat = np.full(num, 1.0 / num, np.float32) if settings.prior == "uniform" else \
            (np.exp(np.linspace(0, 1.5, num)) / np.exp(np.linspace(0, 1.5, num)).sum() * 0.4).astype(np.float32)
        rel = (att / (prior_flat + 1e-7)).astype(np.float32)
        n = max(1, round(settings.keep_ratio * num))
        edges = np.array([[g.offset + i, g.offset + i + 1] for g in grids for i in range(g.size - 1)
                          if (i + 1) % g.cols][:: 2], dtype=np.int64)
        results = {}
        w, h = size
        for m in settings.methods:
            mrng = np.random.default_rng(_seed(m, prompt, size, n))
            order = np.argsort(-(rel if m != "divprune" else mrng.random(num)), kind="stable")
            count = min(num, 4 + 8 * (n // 8)) if m == "dart-official" else n
            if m != "fastv":
                order = np.concatenate([order[: count // 2], mrng.permutation(order[count // 2:])])
            picks = order[:count]
            kept = np.sort(picks).astype(np.int64)
            box = (0.2 * w, 0.25 * h, 0.7 * w, 0.8 * h) if grounding and m in BOXED else None
            trace = tuple(self._steps(m, picks, rel, grids)) if settings.steps else ()
            results[m] = MethodResult(m, kept, len(kept), f"[{m}] answer about {prompt[:20]}" if not grounding
                                      else ("[0.20, 0.25, 0.70, 0.80]" if box else "no idea"), box,
                                      0.004, 0.001, dict(settings.params[m]), trace)
        layer_rows = rng.dirichlet(np.ones(num), size=(self.num_layers, self._heads)).astype(np.float32) * 0.4
        layer_rows[settings.layer - 1] = att[None] * (1 + 0.1 * rng.normal(size=(self._heads, num)))
        layer_mean = layer_rows.mean(1)
        layer_mean[settings.layer - 1] = att
        per_grid = [a.reshape(g.rows, g.cols) for a, g in zip(np.split(att, [g.offset for g in grids[1:]]), grids,
                                                               strict=True)]
        split = [g.offset for g in grids[1:]]
        return AnalysisResult(
            model=self.name, family=self.family, prompt=prompt,
            question=f"Please provide the bounding box coordinate of the region this sentence describes: {prompt}"
            if grounding else prompt,
            image_size=size, processed_size=size, layer=settings.layer, keep_ratio=settings.keep_ratio,
            num_candidates=num, n=n, grids=grids, regions=regions,
            layout=SimpleNamespace(num_tokens=num + newlines), candidate_tokens=np.arange(num),
            attention=per_grid, prior=[p.reshape(g.rows, g.cols) for p, g in zip(np.split(prior_flat, split), grids,
                                                                                  strict=True)],
            relative_attention=[p.reshape(g.rows, g.cols) for p, g in zip(np.split(rel, split), grids, strict=True)],
            attention_flat=att, relative_flat=rel,
            prior_source="uniform" if settings.prior == "uniform" else f"natural prior of {self.name}, layer "
                                                                        f"{settings.layer}, 40 images",
            graph_edges=edges, graph_edge_kinds=["spatial"] * len(edges), graph_params=dict(settings.graph),
            vanilla_answer="[0.25, 0.25, 0.75, 0.75]" if grounding else f"the answer about {prompt[:20]}",
            vanilla_box=(0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h) if grounding else None,
            vanilla_prefill_seconds=0.01, vision_seconds=0.002, prompt_tokens=num + newlines + 40,
            methods=results, notes=[f"fake analysis ({self.layout_kind} layout)"], generation_seconds=0.01,
            layer_attention=layer_mean, layer_attention_heads=layer_rows if settings.heads else None,
            prefill_measured="fake",
        )

    @staticmethod
    def _steps(method, picks, rel, grids):
        picks = [int(t) for t in picks]
        if method == "d2pruner":
            pivots = max(1, math.floor(len(picks) * 0.7))
            out = []
            taken = set(picks)
            for i, t in enumerate(picks):
                cols = next(g.cols for g in grids if g.offset <= t < g.offset + g.size)
                neighbours = tuple(sorted(x for x in (t - 1, t + 1, t - cols, t + cols)
                                          if 0 <= x < len(rel) and x not in taken))
                taken.update(neighbours)
                out.append(SelectionStep(t, "pivot" if i < pivots else "independent-set", float(rel[t]), neighbours))
            return out
        if method in ("dart", "dart-official"):
            return [SelectionStep(t, "pivot" if i < 4 else "duplicate-aware", 1.0 if i < 4 else -0.2,
                                  pivot=None if i < 4 else picks[i % 4]) for i, t in enumerate(picks)]
        phase = "top-n" if method in ("fastv", "d2pruner-di") else "greedy"
        return [SelectionStep(t, phase, float(rel[t])) for t in picks]

    def observe(self, image, prompt, *, layer=2, heads=False) -> Observation:
        specs, _ = self._grids(image.size)
        grids, offset, regions = [], 0, []
        for name, rows, cols, cells in specs:
            grids.append(GridView(name, rows, cols, offset))
            regions.append(cells)
            offset += rows * cols
        att = np.full(offset, 1.0 / offset, np.float32)
        return Observation(layer=layer, grids=grids, attention=[att[g.offset:g.offset + g.size].reshape(g.rows, g.cols)
                                                               for g in grids], attention_flat=att, hidden=None,
                           keys=None, regions=np.concatenate(regions), layout=None, image_size=image.size,
                           processed_size=image.size, prompt_tokens=offset + 20, notes=[],
                           attention_heads=np.tile(att, (self._heads, 1)) if heads else None)

    def get_prior(self, layer, kind="natural", *, progress=None) -> Prior:
        import torch

        specs, _ = self._grids((336, 336))
        maps = {}
        for name, rows, cols, _ in specs:
            role = "tiles" if name.startswith("tile") else name
            maps[role] = torch.linspace(0.5, 1.5, rows * cols).reshape(rows, cols) / (rows * cols)
        return Prior(maps=maps, model_id=self.name, layer=int(layer), kind=kind, num_images=40, source="fake",
                     prompt="Please describe the provided image.")

    def prior_for(self, result, layer, kind="natural", *, calibrate=True, progress=None):
        """Stored priors for layers K ≤ 3; others only after ``calibrate=True``."""
        if layer > 3 and (layer, kind) not in self.calibrated:
            if not calibrate:
                return None
            self.calibrated.add((layer, kind))
        maps = [np.asarray(p, np.float32) for p in result.prior]
        return maps, f"{kind} prior of {self.name}, layer {layer} (fake)", []


def layout_for(name: str) -> str:
    low = name.lower()
    if "next" in low or "v1.6" in low:
        return "llava-next"
    if "internvl" in low:
        return "internvl"
    return "llava-1.5"


def fake_loader(name: str, *, device: str = "cpu", local_folder: str | None = None, delay: float = 0.0):
    """A :class:`~d2pruner.serving.host.ModelHost` loader answering with :class:`FakeAnalyzer` s."""
    return FakeAnalyzer(name, layout_for(name), delay=delay)


class OnlineProbe:
    """The Hub and the cache as the app's tests and benchmarks want them: reachable, every checkpoint cached, 7 M
    parameters (nothing is downloaded: the loader is :func:`fake_loader`)."""

    def reachable(self) -> bool:
        return True

    def cached(self, name: str) -> bool:
        return True

    def parameters(self, name: str) -> float:
        return 7e6

    def cached_weight_bytes(self, name: str) -> None:
        return None

    def local_snapshot(self, name: str):
        raise AssertionError("not offline")
