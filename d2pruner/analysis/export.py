"""The downloadable record of one analysis (format ``d2pruner-lab-analysis/2``): every number the app shows — settings,
grids, per-token regions, attention (layer K−1 and every layer), prior, relative attention, graph edges, kept indices
and the selection steps, answers, boxes, IoUs ("no box" kept apart from IoU 0), FLOPs, KV bytes, timings — plus the
warning that a random model's answers mean nothing. Torch-free; no server path ever goes into it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from d2pruner.analysis.labels import VANILLA, label
from d2pruner.analysis.scoring import AnswerScore
from d2pruner.analysis.summary import CONVENTIONS, Summary

FORMAT = "d2pruner-lab-analysis/2"
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: this model is a tiny model with random weights. It shows the mechanics (token grids, attention "
    "capture, priors, pruning inside the model, boxes), not real behaviour: its answers and boxes mean nothing."
)
#: keys of :func:`analysis_record` left out of :func:`summary_record` (the per-token arrays)
BULKY = ("tokens", "graph_edges", "steps")


def numbers(values, digits: int = 6) -> list:
    """An array as a (nested) list of floats with ``digits`` significant digits (a smaller file; attention is not
    known to more)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mag = np.where((v != 0) & np.isfinite(v), np.floor(np.log10(np.abs(v))), 0)
        scale = 10.0 ** (digits - 1 - mag)
        out = np.where(np.isfinite(v), np.round(v * scale) / scale, v)
    return out.tolist()


def _answer(a: AnswerScore) -> dict:
    return {
        "answer": a.answer, "box": None if a.box is None else list(a.box), "num_kept": a.num_kept,
        "iou_vs_gt": a.vs_ground_truth.iou, "box_status": a.vs_ground_truth.status,
        "iou_vs_vanilla": a.vs_vanilla.iou, "agreement": a.agreement,
    }


def _steps(steps) -> list[dict]:
    return [{"token": int(s.token), "phase": s.phase, "score": None if s.score is None else float(s.score),
             "excluded": [int(i) for i in s.excluded], "pivot": s.pivot, "text_pivot": s.text_pivot} for s in steps]


def analysis_record(summary: Summary, *, settings: Mapping, image: Mapping | None = None, device: str = "",
                    versions: Mapping | None = None, requested_model: str | None = None) -> dict:
    """All numbers of one analysis as JSON-ready data.

    Arguments:
        summary: :func:`~d2pruner.analysis.summary.summarize` of the result.
        settings: what the request asked for beyond the result's own fields (``max_new_tokens``, ``prior``, the
            methods' hyperparameters, ``task``).
        image: facts about the input image (``uploaded_size``, ``sha1_16``, …), merged into ``"image"``.
        device: where it ran; ``versions``: library versions; ``requested_model``: when a stand-in model ran instead.
    """
    r = summary.result
    eff = summary.efficiency
    methods = {}
    for name, res in r.methods.items():
        methods[name] = {"label": label(name), **_answer(summary.answers[name]), "kept": [int(i) for i in res.kept],
                         "prefill_seconds": res.prefill_seconds, "select_seconds": res.select_seconds,
                         "params": dict(res.params), "efficiency": eff[name].record(),
                         "num_steps": len(res.steps)}
    layer_attention = getattr(r, "layer_attention", None)
    record = {
        "format": FORMAT,
        "warning": RANDOM_WEIGHTS_WARNING if summary.random_weights else None,
        "versions": dict(versions or {}),
        "model": r.model, "requested_model": requested_model or r.model, "family": r.family, "device": device,
        "random_weights": summary.random_weights,
        "task": "grounding" if summary.grounding else "question",
        "prompt": r.prompt, "question": r.question,
        "image": {"size": list(r.image_size), "processed_size": list(r.processed_size), **dict(image or {})},
        "settings": {"keep_ratio": r.keep_ratio, "layer": r.layer, "n": r.n, "num_candidates": r.num_candidates,
                     **dict(settings)},
        "layer_meaning": f"tokens are pruned from decoder layer K = {r.layer}, ranked by the attention of the last "
                         f"prompt token at layer K−1 = {r.layer - 1}",
        "grids": [{"name": g.name, "rows": g.rows, "cols": g.cols, "offset": g.offset} for g in r.grids],
        "prior_source": r.prior_source,
        "prompt_tokens": int(r.prompt_tokens),
        "ground_truth": None if summary.gt_box is None else list(summary.gt_box),
        "vanilla": {**_answer(summary.answers[VANILLA]), "prefill_seconds": r.vanilla_prefill_seconds,
                    "efficiency": eff[VANILLA].record()},
        "methods": methods,
        "timing": {"vision_seconds": r.vision_seconds, "generation_seconds": r.generation_seconds,
                   "prefill_measured": r.prefill_measured},
        "graph": {**dict(r.graph_params), "num_edges": len(r.graph_edges),
                  "num_semantic": int(sum(k == "semantic" for k in r.graph_edge_kinds))},
        "graph_edges": {"edges": np.asarray(r.graph_edges).tolist(), "kinds": list(r.graph_edge_kinds)},
        "tokens": {
            "regions": np.round(np.asarray(r.regions, dtype=np.float64), 3).tolist(),
            "attention": numbers(r.attention_flat),
            "prior": numbers(np.concatenate([np.ravel(p) for p in r.prior])),
            "relative_attention": numbers(r.relative_flat),
            "layer_attention": None if layer_attention is None else numbers(layer_attention),
        },
        "steps": {name: _steps(res.steps) for name, res in r.methods.items() if res.steps},
        "efficiency_conventions": dict(CONVENTIONS),
        "notes": list(dict.fromkeys(summary.notes)),
    }
    return record


def summary_record(record: Mapping) -> dict:
    """:func:`analysis_record` without the per-token arrays and kept indices (what the app shows as "all
    numbers")."""
    out = {k: v for k, v in record.items() if k not in BULKY}
    out["methods"] = {m: {k: v for k, v in d.items() if k != "kept"} for m, d in record["methods"].items()}
    return out


def write_json(record: Mapping, path: str | Path) -> Path:
    """Write a record (compact, one file); returns the path."""
    path = Path(path)
    path.write_text(json.dumps(record, separators=(",", ":"), default=float))
    return path
