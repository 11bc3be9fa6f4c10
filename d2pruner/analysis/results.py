"""What an analysis returns: per-method results, the whole analysis, an observation, a generation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from d2pruner.ops import GridView


@dataclass
class MethodResult:
    """One method's outcome.

    Attributes:
        kept: sorted int64 indices into the N candidate visual tokens.
        num_kept: ``len(kept)`` (= n).
        answer: generated text.
        box: parsed grounding box in original pixels (x1, y1, x2, y2), or None (also when grounding is off).
        prefill_seconds: a standalone pruned prefill with this method's budget (layers < K included — timed once
            in the vanilla run and added —, vision tower excluded). Every method keeps the same number of tokens,
            so the pruned prefill does the same work for all of them: it is measured once per analysis
            (``prefill_measured`` says how) and shared.
        select_seconds: the selection call.
        params: the method's hyperparameters used.
        steps: the selection step by step (``d2pruner.select(..., return_steps=True)``), when asked for.
    """

    method: str
    kept: np.ndarray
    num_kept: int
    answer: str
    box: tuple[float, float, float, float] | None
    prefill_seconds: float
    select_seconds: float
    params: dict
    steps: tuple = ()


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
        generation_seconds: wall time of the methods' generation (all methods in one batched generation, or in
            ``generation_chunks`` chunks when memory required it).
        prefill_measured: how ``MethodResult.prefill_seconds`` was obtained.
        layer_attention: [num_layers, N] float32 — the last prompt token's attention to each candidate at every
            decoder layer (mean over heads), from the same unpruned forward; ``layer_attention_heads`` the same per
            head [num_layers, H, N] (with ``analyze(heads=True)``, else None). Row K−1 is ``attention_flat``.
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
    generation_seconds: float = 0.0
    generation_chunks: int = 1
    prefill_measured: str = ""
    layer_attention: np.ndarray | None = None
    layer_attention_heads: np.ndarray | None = None


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
        attention_heads: [H, N] float32, the same attention row per head (``observe(heads=True)``), else None.
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
    attention_heads: np.ndarray | None = None
