"""The analysis API the app calls: load a model once, then analyze (image, prompt) with several methods.

``load(name)`` → :class:`Analyzer`; ``analyzer.analyze(image, prompt, methods=..., keep_ratio=..., layer=...)``
→ :class:`AnalysisResult`; ``analyzer.observe(image, prompt, layer=K)`` → :class:`Observation` (attention
only, early exit); ``analyzer.get_prior(K)`` → the model's positional-bias prior (calibrated on first use).

What one request computes, and what is shared:

1. preprocessing and the **vision tower + projector once** (``adapter.encode_image``); every later forward gets
   the features through the model's own ``mm_encoder_outputs=`` argument instead of ``pixel_values``;
2. **one vanilla run** (``generate`` inside :func:`~d2pruner.adapters.prune` in observe mode): the unpruned
   answer, and the layer-(K−1) attention row, the visual hidden states entering layer K and the layer-(K−1)
   keys that every method selects from;
3. **selection once per method** from those shared captures (``d2pruner.select``);
4. **one generation per method** with the kept indices applied at layer K (``prune(..., keep=...)``), replaying
   the vanilla run's layers < K (``prune(..., replay=prefix)``: their output, KV cache and attention row are put
   back at layer K; identical results, tested), so layers < K too run once per request.
   ``prefill_seconds`` is a method's pruned prefill forward plus the shared time before layer K (measured once
   in the vanilla run), i.e. what a standalone pruned prefill costs; ``select_seconds`` the selection.

Coordinates: every region and box is in pixels of the image as passed in (after mode conversion). Images
larger than the family's maximum are downscaled before preprocessing and tiny ones (shorter side < 28 px) are
upscaled; regions and boxes are mapped back to the original pixels, and a note says so.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from d2pruner.adapters import (
    FAMILIES,
    FamilyAdapter,
    ProcessorParts,
    VisualTokens,
    adapter_for,
    adapter_for_model_type,
    capture,
    prune,
)
from d2pruner.ops import GridView
from d2pruner.priors import Prior
from d2pruner.resources import BUNDLED_PRIORS_DIR
from d2pruner.tiny import TINY_NAMES, build_tiny

#: ``progress(done, total, message)``
Progress = Callable[[int, int, str], None]
#: what ``analyze(prior=...)`` accepts
PriorArg = str | Prior | torch.Tensor | Sequence[torch.Tensor] | None
#: the bundled priors (writable in a checkout; read-only on a Space or an installed copy)
BUNDLED_PRIORS = BUNDLED_PRIORS_DIR


def user_prior_dir() -> Path:
    """Where priors are cached when the bundled folder is read-only: ``$D2PRUNER_CACHE`` or
    ``$XDG_CACHE_HOME/d2pruner/priors`` (default ``~/.cache/d2pruner/priors``)."""
    if os.environ.get("D2PRUNER_CACHE"):
        return Path(os.environ["D2PRUNER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2pruner" / "priors"


#: images whose shorter side is below this are upscaled (every family's processor needs a few patches)
MIN_IMAGE_SIDE = 28
#: aspect ratios above this are rejected (Qwen2.5-VL's processor limit, applied to every family)
MAX_ASPECT_RATIO = 200.0


@dataclass
class MethodResult:
    """One method's outcome.

    Attributes:
        kept: sorted int64 indices into the N candidate visual tokens.
        num_kept: ``len(kept)`` (= n).
        answer: generated text.
        box: parsed grounding box in original pixels (x1, y1, x2, y2), or None (also when grounding is off).
        prefill_seconds: the pruned prefill (layers < K included — timed once in the vanilla run and added —,
            vision tower excluded).
        select_seconds: the selection call.
        params: the method's hyperparameters used.
    """

    method: str
    kept: np.ndarray
    num_kept: int
    answer: str
    box: tuple[float, float, float, float] | None
    prefill_seconds: float
    select_seconds: float
    params: dict


@dataclass
class AnalysisResult:
    """Everything one request produced. N = number of candidate visual tokens (grid tokens; LLaVA-NeXT's
    newline tokens are not candidates and are always kept).

    Attributes:
        model, family: the loaded model name and its family.
        prompt: the user prompt; ``question`` the text sent to the model (grounding template applied).
        image_size: (width, height) of the image as given; ``processed_size`` what was preprocessed
            (differs only after a down/upscale, see ``notes``).
        layer, keep_ratio, num_candidates (N), n: the pruning setting; n = max(1, round(keep_ratio · N)).
        grids: the token grids, in candidate order.
        regions: [N, 4] float64 (x1, y1, x2, y2) of each candidate token in original pixels (NaN if none).
        layout: the :class:`d2pruner.layout.VisualLayout` of the processed image (regions in its pixels).
        candidate_tokens: [N] indices of the candidates in the layout's visual-token sequence.
        attention / prior / relative_attention: one [rows, cols] float32 array per grid — raw layer-(K−1)
            attention of the last prompt token, the prior used (resized to the grid), and their ratio.
        attention_flat / relative_flat: the same as [N] vectors.
        prior_source: which prior was used (a calibrated prior's description, ``"uniform"`` or ``"given"``).
        graph_edges: [E, 2] int64 edges (i < j, indices into the N candidates) of D²Pruner's hybrid graph;
            ``graph_edge_kinds`` [E] ``"spatial"`` / ``"semantic"``; ``graph_params`` α, θ used.
        vanilla_answer, vanilla_box, vanilla_prefill_seconds: the unpruned run.
        vision_seconds: the shared vision tower + projector.
        prompt_tokens: the prompt's length L in tokens (visual tokens included).
        methods: method name → :class:`MethodResult`, in request order.
        notes: human-readable remarks (normalisations, missing prior, …).
    """

    model: str
    family: str
    prompt: str
    question: str
    image_size: tuple[int, int]
    processed_size: tuple[int, int]
    layer: int
    keep_ratio: float
    num_candidates: int
    n: int
    grids: list[GridView]
    regions: np.ndarray
    layout: object
    candidate_tokens: np.ndarray
    attention: list[np.ndarray]
    prior: list[np.ndarray]
    relative_attention: list[np.ndarray]
    attention_flat: np.ndarray
    relative_flat: np.ndarray
    prior_source: str
    graph_edges: np.ndarray
    graph_edge_kinds: list[str]
    graph_params: dict
    vanilla_answer: str
    vanilla_box: tuple[float, float, float, float] | None
    vanilla_prefill_seconds: float
    vision_seconds: float
    prompt_tokens: int = 0
    methods: dict[str, MethodResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Generation:
    """One answer of :meth:`Analyzer.generate` (a pruned or unpruned generation for one image and prompt).

    Attributes:
        answer: the generated text.
        box: grounding mode: the answer's box in original-image pixels (x1, y1, x2, y2), None if none parsed.
        box_normalized: the same box in [0, 1] of the original image's width and height.
        num_kept: visual tokens kept (None: unpruned); ``num_candidates`` N.
        question: the text sent to the model (the family's grounding prompt applied in grounding mode).
        settings: the method, layer K and hyperparameters used.
        notes: remarks (image resized, newline tokens, …).
    """

    answer: str
    box: tuple[float, float, float, float] | None
    box_normalized: tuple[float, float, float, float] | None
    num_kept: int | None
    num_candidates: int
    question: str
    settings: dict
    notes: list[str] = field(default_factory=list)


@dataclass
class Observation:
    """Layer-(K−1) attention of one (image, prompt), computed with early exit (see :meth:`Analyzer.observe`).

    Attributes:
        layer: K.
        grids: the token grids, in candidate order.
        attention: one [rows, cols] float32 array per grid; ``attention_flat`` the same as [N].
        hidden: [N, D] visual hidden states entering layer K; ``keys``: [N, Dk] layer-(K−1) keys or None.
        regions, layout, image_size, processed_size, prompt_tokens, notes: as in :class:`AnalysisResult`.
    """

    layer: int
    grids: list[GridView]
    attention: list[np.ndarray]
    attention_flat: np.ndarray
    hidden: torch.Tensor
    keys: torch.Tensor | None
    regions: np.ndarray
    layout: object
    image_size: tuple[int, int]
    processed_size: tuple[int, int]
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Request:
    """One prepared (image, prompt): the model inputs, where the visual tokens are, and the geometry."""

    prompt: str
    question: str
    inputs: dict
    tokens: VisualTokens
    layout: object
    processed_size: tuple[int, int]
    original_size: tuple[int, int]
    notes: list[str]

    @property
    def grids(self) -> list[GridView]:
        return [
            GridView(lg.name, g.rows, g.cols, g.offset)
            for lg, g in zip(self.layout.grids, self.tokens.grids, strict=True)
        ]

    @property
    def candidate_tokens(self) -> np.ndarray:
        return np.asarray(self.layout.grid_tokens, dtype=np.int64)

    @property
    def regions(self) -> np.ndarray:
        return _rescale(self.layout.regions[self.candidate_tokens], self.processed_size, self.original_size)

    def per_grid(self, flat: np.ndarray) -> list[np.ndarray]:
        """Split an [N] vector into one [rows, cols] array per grid."""
        splits = [g.offset for g in self.tokens.grids[1:]]
        return [a.reshape(s) for a, s in zip(np.split(flat, splits), self.tokens.grid_shapes, strict=True)]

    def box(self, answer: str) -> tuple[float, float, float, float] | None:
        """The answer's grounding box in original-image pixels, or None."""
        from d2pruner.grounding import parse_box

        box = parse_box(answer, self.layout)
        if box is None:
            return None
        scaled = _rescale(np.asarray(box, dtype=np.float64)[None], self.processed_size, self.original_size)[0]
        return tuple(float(v) for v in scaled)


# ----------------------------------------------------------------------------------------------------
# Input normalisation (one place).


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


def fit_image(image, max_pixels: int) -> tuple[object, list[str]]:
    """Downscale above ``max_pixels`` / upscale below :data:`MIN_IMAGE_SIDE` (aspect kept); notes say so."""
    from PIL import Image

    w, h = image.size
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio {max(w, h) / min(w, h):.0f}:1 exceeds {MAX_ASPECT_RATIO:.0f}:1")
    notes = []
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        image = image.resize(size, Image.BICUBIC)
        notes.append(f"image downscaled from {w}x{h} to {size[0]}x{size[1]} (family maximum {max_pixels} pixels)")
    elif min(w, h) < MIN_IMAGE_SIDE:
        scale = MIN_IMAGE_SIDE / min(w, h)
        size = (max(MIN_IMAGE_SIDE, round(w * scale)), max(MIN_IMAGE_SIDE, round(h * scale)))
        image = image.resize(size, Image.NEAREST)
        notes.append(f"image upscaled from {w}x{h} to {size[0]}x{size[1]} (shorter side below {MIN_IMAGE_SIDE} px)")
    return image, notes


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty")
    return prompt.strip()


def _check_methods(methods) -> tuple[str, ...]:
    from d2pruner.methods import METHODS

    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not methods:
        raise ValueError("methods is empty; choose from " + ", ".join(sorted(METHODS)))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(sorted(METHODS))}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat: {list(methods)}")
    return methods


def _method_params(methods: Sequence[str], params: dict) -> dict[str, dict]:
    """Route ``**method_params`` to every requested method that takes a parameter of that name."""
    from d2pruner.methods import METHODS, method_parameters

    routed: dict[str, dict] = {m: {} for m in methods}
    for key, value in params.items():
        takers = [m for m in methods if key in method_parameters(METHODS[m])]
        if not takers:
            raise ValueError(f"no requested method has a parameter {key!r} (methods: {list(methods)})")
        for m in takers:
            routed[m][key] = value
    return routed


# ----------------------------------------------------------------------------------------------------
# Loading.


def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(
    name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, *, attn_implementation="sdpa"
) -> Analyzer:
    """Load a model and its preprocessing once; return an :class:`Analyzer`.

    Arguments:
        name: ``tiny-llava`` / ``tiny-llava-next`` / ``tiny-qwen2.5-vl`` / ``tiny-internvl`` (offline, random
            weights), or a hub id / local path of a transformers-native checkpoint of a supported family
            (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, InternVL "-hf"). Never uses remote code.
        device: default CUDA when available, else CPU.
        dtype: default float32 on CPU and the checkpoint's dtype (``"auto"``) otherwise.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("model name must be a non-empty string")
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
    device = _default_device(device)
    notes: list[str] = []
    if name in TINY_NAMES:
        tiny = build_tiny(name, attn_implementation=attn_implementation)
        model, processor = tiny.model, tiny.processor
        model = model.to(device=device, dtype=dtype or torch.float32)
        notes.append("tiny model with random weights: answers are meaningless, the mechanics are real")
    elif name.startswith("tiny-"):
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_NAMES)}")
    else:
        model, processor, more = _from_pretrained(name, device, dtype, attn_implementation)
        notes.extend(more)
    return Analyzer(model, processor, name=name, notes=notes)


def _from_pretrained(name: str, device: torch.device, dtype, attn_implementation: str):
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ValueError as err:  # e.g. a remote-code-only checkpoint
        supported = ", ".join(a.model_class for a in FAMILIES.values())
        raise ValueError(
            f"cannot load {name!r} without remote code ({err}); supported transformers-native families: {supported}"
        ) from err
    adapter = adapter_for_model_type(config.model_type)
    cls = getattr(transformers, adapter.model_class)
    model = cls.from_pretrained(
        name,
        config=config,
        dtype=dtype if dtype is not None else (torch.float32 if device.type == "cpu" else "auto"),
        attn_implementation=attn_implementation,
        trust_remote_code=False,
    )
    model = model.to(device).eval()
    notes = []
    try:
        processor = transformers.AutoProcessor.from_pretrained(name, trust_remote_code=False)
    except (ImportError, OSError, ValueError, TypeError) as err:
        if adapter.name not in ("qwen2_5_vl", "internvl"):
            raise
        processor = ProcessorParts(
            tokenizer=transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=False),
            image_processor=transformers.AutoImageProcessor.from_pretrained(name, trust_remote_code=False),
        )
        notes.append(f"full processor unavailable ({type(err).__name__}); image processor + tokenizer used")
    return model, processor, notes


# ----------------------------------------------------------------------------------------------------
# The analyzer.


class Analyzer:
    """A loaded model + preprocessing; :meth:`analyze` runs one request.

    Arguments:
        model: a supported ``*ForConditionalGeneration`` (eval mode).
        processor: its transformers processor, or :class:`~d2pruner.adapters.ProcessorParts`.
        name: a display name; also the model id of its prior files.
        notes: remarks copied into every result (e.g. "tiny random model").
        prior_dirs: where priors are looked up, in order, and saved (the first writable one); default the
            repository's ``priors/`` folder, then :func:`user_prior_dir`.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        name: str = "",
        notes: Sequence[str] = (),
        prior_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.adapter: FamilyAdapter = adapter_for(model)
        self.notes = list(notes)
        #: where priors are looked up, then saved (first writable): the bundled folder, then the user cache
        self.prior_dirs = (
            [Path(d) for d in prior_dirs] if prior_dirs is not None else [BUNDLED_PRIORS, user_prior_dir()]
        )
        self._priors: dict[tuple[int, str], Prior] = {}
        self._warmed_up = False

    @property
    def family(self) -> str:
        return self.adapter.name

    @property
    def num_layers(self) -> int:
        return len(self.adapter.language_model(self.model).layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def analyze(
        self,
        image,
        prompt: str,
        *,
        methods: Sequence[str] | str = ("fastv", "dart", "d2pruner"),
        keep_ratio: float = 0.25,
        layer: int = 2,
        grounding: bool = False,
        max_new_tokens: int = 32,
        prior: PriorArg = "auto",
        progress: Progress | None = None,
        **method_params,
    ) -> AnalysisResult:
        """Run the vanilla model and every method on one (image, prompt).

        Arguments:
            image: a PIL image of any mode, or an HxW[xC] array.
            prompt: the question; with ``grounding=True`` the referring expression (the family's grounding
                template is applied and boxes are parsed).
            methods: names from ``d2pruner.METHODS``.
            keep_ratio: fraction of the N candidate visual tokens kept, in (0, 1]; n = max(1, round(r · N)).
            layer: K, the decoder layer from which tokens are pruned, 1 ≤ K < num_layers.
            max_new_tokens: greedy decoding length (≥ 1).
            prior: ``"auto"`` (the calibrated natural prior of this model and layer, calibrated from the
                bundled images on first use and cached), ``"content-free"``, ``"uniform"`` (or None), a
                :class:`~d2pruner.priors.Prior`, or a 2-D tensor (resized to every grid) / one per grid.
            progress: ``progress(done, total, message)``, called while a prior is being calibrated.
            **method_params: hyperparameters, given to every requested method that has them
                (e.g. ``alpha=1.0`` for ``d2pruner``); also α / θ of the displayed graph.

        Raises:
            ValueError: bad image, empty prompt, keep_ratio outside (0, 1], layer outside [1, num_layers),
                unknown methods or parameters, a malformed prior.
        """
        from d2pruner.graph import hybrid_graph
        from d2pruner.methods import relative_attention, select

        methods = _check_methods(methods)
        routed = _method_params(methods, method_params)
        layer = self._check_layer(layer)
        keep_count(keep_ratio, 1)  # range check now; n needs N
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        request = self._prepare(image, prompt, grounding=grounding)
        model, tokens, notes = self.model, request.tokens, request.notes
        num = tokens.num_candidates
        n = keep_count(keep_ratio, num)
        priors, prior_source = self._prior_maps(prior, layer, request, progress, notes)

        if not self._warmed_up:  # first request: one untimed early-exit pass, so that one-time kernel and
            capture(model, tokens, request.inputs, layer=1)  # allocator set-up does not land in the timings
            self._warmed_up = True

        # ---- shared: vision tower once, one vanilla run capturing what the methods select from
        text_inputs = {k: v for k, v in request.inputs.items() if k != "pixel_values"}
        gen_kwargs = self._generation_kwargs(max_new_tokens)
        with torch.inference_mode():
            start = time.perf_counter()
            encoded = self.adapter.encode_image(model, request.inputs)
            _sync(self.device)
            vision_seconds = time.perf_counter() - start
            with prune(model, tokens, layer=layer, record=True) as observed:
                vanilla_ids = model.generate(**text_inputs, mm_encoder_outputs=encoded, **gen_kwargs)
        vanilla_answer = self._decode(vanilla_ids, tokens.seq_len)
        hidden, attention, keys, shared = observed.hidden, observed.attention, observed.keys, observed.prefix
        grid_shapes = tokens.grid_shapes
        grid_arg = grid_shapes[0] if len(grid_shapes) == 1 else grid_shapes
        relative = relative_attention(attention.cpu(), priors, grid_shapes)

        # ---- graph for display (D²Pruner's α, θ unless overridden)
        graph_params = self._graph_params(routed)
        graph = hybrid_graph(hidden.cpu(), grid_arg, alpha=graph_params["alpha"], theta=graph_params["theta"])

        # ---- per method: select once, generate with the kept indices
        results: dict[str, MethodResult] = {}
        for method in methods:
            params = routed[method]
            start = time.perf_counter()
            kept = select(
                method, n=n, hidden=hidden, attention=attention, grid=grid_arg, prior=priors, keys=keys, **params
            )
            select_seconds = time.perf_counter() - start
            with torch.inference_mode(), prune(model, tokens, layer=layer, keep=kept.cpu(), replay=shared) as state:
                ids = model.generate(**text_inputs, mm_encoder_outputs=encoded, **gen_kwargs)
            answer = self._decode(ids, tokens.seq_len)
            results[method] = MethodResult(
                method=method,
                kept=state.kept.numpy(),
                num_kept=int(state.num_kept),
                answer=answer,
                box=request.box(answer) if grounding else None,
                prefill_seconds=float(state.prefill_seconds),
                select_seconds=select_seconds,
                params=params,
            )

        att_np = attention.cpu().numpy().astype(np.float32)
        rel_np = relative.numpy().astype(np.float32)
        return AnalysisResult(
            model=self.name,
            family=self.family,
            prompt=request.prompt,
            question=request.question,
            image_size=request.original_size,
            processed_size=request.processed_size,
            layer=layer,
            keep_ratio=float(keep_ratio),
            num_candidates=num,
            n=n,
            grids=request.grids,
            regions=request.regions,
            layout=request.layout,
            candidate_tokens=request.candidate_tokens,
            attention=request.per_grid(att_np),
            prior=[p.numpy().astype(np.float32) for p in priors],
            relative_attention=request.per_grid(rel_np),
            attention_flat=att_np,
            relative_flat=rel_np,
            prior_source=prior_source,
            graph_edges=graph.edges.numpy(),
            graph_edge_kinds=graph.edge_kinds,
            graph_params=graph_params,
            vanilla_answer=vanilla_answer,
            vanilla_box=request.box(vanilla_answer) if grounding else None,
            vanilla_prefill_seconds=float(observed.prefill_seconds),
            vision_seconds=vision_seconds,
            prompt_tokens=tokens.seq_len,
            methods=results,
            notes=notes,
        )

    def generate(
        self,
        images: Sequence,
        prompts: Sequence[str],
        *,
        method: str | None = None,
        keep_ratio: float | None = None,
        keep: int | None = None,
        layer: int | None = None,
        preset: str | None = None,
        grounding: bool = False,
        max_new_tokens: int = 32,
        prior: PriorArg = "auto",
        **method_params,
    ) -> list[Generation]:
        """Answers for several (image, prompt) pairs with one method (or unpruned) — the evaluation entry point.

        Arguments:
            images, prompts: equally long sequences (an image as for :meth:`analyze`; a prompt string each).
            method: a name from ``d2pruner.METHODS``, or None for the unpruned model (same code path: the
                hooks run in observe mode).
            keep_ratio / keep: the budget, one of them (with a method): a fraction of the N candidates in
                (0, 1] (n = max(1, round(r · N))) or a count n ≥ 1 (capped at N).
            layer: K (default: the preset's, else 2).
            preset: ``"understanding"`` or ``"localization"``: the paper's K, α, θ, r_pivot
                (:func:`d2pruner.paper_settings`) wherever ``layer`` / ``method_params`` do not set them.
            grounding: apply the family's grounding prompt to each prompt (a referring expression) and parse
                the answer's box into original pixels and [0, 1].
            max_new_tokens, prior: as for :meth:`analyze`.
            **method_params: the method's hyperparameters.

        Returns:
            One :class:`Generation` per pair, in order.
        """
        from d2pruner.methods import METHODS, method_parameters
        from d2pruner.methods import select as select_tokens
        from d2pruner.presets import paper_settings

        images, prompts = list(images), list(prompts)
        if not images or len(images) != len(prompts):
            raise ValueError(f"images and prompts must be equally long and non-empty; got {len(images)} and "
                             f"{len(prompts)}")
        settings: dict = {}
        if preset is not None:
            settings = paper_settings(preset, self.family)
        layer = self._check_layer(settings.get("layer", 2) if layer is None else layer)
        if method is None:
            if keep_ratio is not None or keep is not None or method_params:
                raise ValueError("keep_ratio, keep and method parameters need a method (method=None is unpruned)")
            params: dict = {}
        else:
            (method,) = _check_methods(method)
            if (keep_ratio is None) == (keep is None):
                raise ValueError("give exactly one of keep_ratio (a fraction in (0, 1]) and keep (a count >= 1)")
            if keep_ratio is not None:
                keep_count(keep_ratio, 1)
            elif isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or keep < 1:
                raise ValueError(f"keep must be an integer >= 1 (visual tokens to keep), got {keep!r}")
            takes = method_parameters(METHODS[method])
            params = {k: v for k, v in settings.items() if k in takes}
            params.update(_method_params((method,), method_params)[method])
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        used = {"method": method, "layer": layer, "preset": preset, **params}
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            request = self._prepare(image, prompt, grounding=grounding)
            tokens, notes = request.tokens, list(request.notes)
            num = tokens.num_candidates
            select_fn = None
            if method is not None:
                n = keep_count(keep_ratio, num) if keep_ratio is not None else min(int(keep), num)
                priors, _ = self._prior_maps(prior, layer, request, None, notes)
                shapes = tokens.grid_shapes
                grid = shapes[0] if len(shapes) == 1 else shapes

                def select_fn(inputs, n=n, priors=priors, grid=grid):
                    return select_tokens(method, n=n, hidden=inputs.hidden, attention=inputs.attention, grid=grid,
                                         prior=priors, keys=inputs.keys, **params)

            text_inputs = dict(request.inputs)
            with torch.inference_mode(), prune(self.model, tokens, layer=layer, select=select_fn) as state:
                ids = self.model.generate(**text_inputs, **self._generation_kwargs(max_new_tokens))
            answer = self._decode(ids, tokens.seq_len)
            box = request.box(answer) if grounding else None
            width, height = request.original_size
            normalized = None if box is None else (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
            out.append(Generation(answer, box, normalized, state.num_kept, num, request.question, used, notes))
        return out

    def observe(self, image, prompt: str, *, layer: int = 2) -> Observation:
        """The layer-(K−1) attention of one (image, prompt), with early exit: only the vision tower and the
        first K decoder layers run, nothing is generated (used for calibration and the bias explorer)."""
        return self._observe(self._prepare(image, prompt), self._check_layer(layer))

    def _observe(self, request: _Request, layer: int) -> Observation:
        state = capture(self.model, request.tokens, request.inputs, layer=layer)
        attention = state.attention.cpu().numpy().astype(np.float32)
        return Observation(
            layer=layer,
            grids=request.grids,
            attention=request.per_grid(attention),
            attention_flat=attention,
            hidden=state.hidden.cpu(),
            keys=None if state.keys is None else state.keys.cpu(),
            regions=request.regions,
            layout=request.layout,
            image_size=request.original_size,
            processed_size=request.processed_size,
            prompt_tokens=request.tokens.seq_len,
            notes=request.notes,
        )

    def get_prior(self, layer: int, kind: str = "natural", *, progress: Progress | None = None) -> Prior:
        """This model's positional-bias prior at layer K: from ``prior_dirs`` if one was saved, else calibrated
        now — from the bundled photographs (``kind="natural"``) or blank and noise images
        (``"content-free"``) — and saved to the first writable directory of ``prior_dirs``."""
        from d2pruner.calibration import calibrate_bundled
        from d2pruner.priors import KINDS, PriorFileError, load_prior, prior_filename, save_prior

        layer = self._check_layer(layer)
        if kind not in KINDS:
            raise ValueError(f"prior kind must be one of {KINDS}; got {kind!r}")
        if (layer, kind) in self._priors:
            return self._priors[(layer, kind)]
        filename = prior_filename(self.name, layer, kind)
        for folder in self.prior_dirs:
            path = Path(folder) / filename
            if path.is_file():
                try:
                    self._priors[(layer, kind)] = load_prior(path, model_id=self.name, layer=layer)
                    return self._priors[(layer, kind)]
                except PriorFileError as error:
                    self.notes.append(f"ignored an unusable prior file: {error}")
        prior = calibrate_bundled(self, layer=layer, kind=kind, progress=progress)
        for folder in self.prior_dirs:
            try:
                save_prior(prior, Path(folder) / filename)
                break
            except OSError:
                continue
        self._priors[(layer, kind)] = prior
        return prior

    # ---- request preparation (shared by analyze and observe)
    def _prepare(self, image, prompt: str, *, grounding: bool = False) -> _Request:
        from d2pruner.grounding import grounding_prompt
        from d2pruner.layout import layout_from_processor

        prompt = _check_prompt(prompt)
        rgb = to_rgb(image)
        processed, notes = fit_image(rgb, self.adapter.max_image_pixels)
        question = grounding_prompt(self.family, prompt) if grounding else prompt
        model, adapter = self.model, self.adapter
        inputs = adapter.build_inputs(model, self.processor, processed, question)
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        tokens = adapter.visual_tokens(model, inputs)
        layout = layout_from_processor(self.family, processed.size, self.processor, **adapter.layout_overrides(model))
        self._check_layout(layout, tokens)
        if tokens.protected.numel():
            notes.append(
                f"{tokens.protected.numel()} newline tokens are not candidates and are always kept; "
                f"n counts the {tokens.num_candidates} grid tokens"
            )
        return _Request(
            prompt=prompt,
            question=question,
            inputs=inputs,
            tokens=tokens,
            layout=layout,
            processed_size=processed.size,
            original_size=rgb.size,
            notes=[*self.notes, *notes],
        )

    def _prior_maps(
        self, prior: PriorArg, layer: int, request: _Request, progress: Progress | None, notes: list[str]
    ) -> tuple[list[torch.Tensor], str]:
        """One prior map per grid, exactly grid-shaped, and a description of where it came from."""
        from d2pruner.layout import tile_arrangement
        from d2pruner.priors import Prior, fit_prior, resize_prior

        shapes = request.tokens.grid_shapes
        if prior is None or (isinstance(prior, str) and prior == "uniform"):
            notes.append("uniform prior: relative attention = raw attention")
            return [torch.ones(r, c) for r, c in shapes], "uniform"
        if isinstance(prior, str):
            kinds = {"auto": "natural", "natural": "natural", "content-free": "content-free"}
            if prior not in kinds:
                raise ValueError(f"prior must be 'auto', 'content-free', 'uniform', a Prior or tensors; got {prior!r}")
            prior = self.get_prior(layer, kinds[prior], progress=progress)
        if isinstance(prior, Prior):
            if prior.layer != layer:
                notes.append(f"the prior was calibrated at layer {prior.layer} but K = {layer}")
            names = [(g.name, g.rows, g.cols) for g in request.grids]
            return fit_prior(prior, self.family, names, tile_arrangement(request.layout)), prior.describe()
        given = [prior] if isinstance(prior, torch.Tensor) else list(prior)
        if len(given) == 1:
            given = given * len(shapes)
        if len(given) != len(shapes) or any(not isinstance(p, torch.Tensor) or p.ndim != 2 for p in given):
            raise ValueError(f"prior must be one 2-D tensor or one per grid ({len(shapes)} grids)")
        from d2pruner.priors import check_map

        for p in given:
            check_map(p)
        return [resize_prior(p, shape) for p, shape in zip(given, shapes, strict=True)], "given"

    def _check_layer(self, layer) -> int:
        num_layers = self.num_layers
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 1 <= layer < num_layers:
            raise ValueError(f"layer must be an integer in [1, {num_layers}), got {layer!r}")
        return int(layer)

    def _generation_kwargs(self, max_new_tokens: int) -> dict:
        kwargs = dict(max_new_tokens=int(max_new_tokens), do_sample=False, prefill_chunk_size=None)
        tokenizer = self.adapter.tokenizer(self.processor)
        if getattr(tokenizer, "pad_token_id", None) is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        return kwargs

    # ---- helpers
    def _decode(self, ids: torch.Tensor, prompt_len: int) -> str:
        tokenizer = self.adapter.tokenizer(self.processor)
        return tokenizer.decode(ids[0, prompt_len:].tolist(), skip_special_tokens=True).strip()

    def _check_layout(self, layout, tokens) -> None:
        grids = [(g.rows, g.cols) for g in layout.grids]
        expected = tokens.num_candidates + int(tokens.protected.numel())
        if grids != tokens.grid_shapes or layout.num_tokens != expected:
            raise RuntimeError(
                f"layout {grids} ({layout.num_tokens} tokens) disagrees with the model's image tokens "
                f"{tokens.grid_shapes} ({expected}); please report this image size {layout.image_size}"
            )

    @staticmethod
    def _graph_params(routed: dict[str, dict]) -> dict:
        from d2pruner.methods import METHODS

        defaults = {f.name: f.default for f in dataclasses.fields(METHODS["d2pruner"])}
        chosen = routed.get("d2pruner", {})
        return {name: float(chosen.get(name, defaults[name])) for name in ("alpha", "theta")}


def _rescale(boxes: np.ndarray, processed_size, original_size) -> np.ndarray:
    """Boxes [M, 4] from processed-image pixels to original-image pixels."""
    sx = original_size[0] / processed_size[0]
    sy = original_size[1] / processed_size[1]
    return np.asarray(boxes, dtype=np.float64) * np.array([sx, sy, sx, sy])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
