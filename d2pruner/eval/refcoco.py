"""The strict RefCOCO / RefCOCO+ / RefCOCOg protocol: task functions referenced by ``d2pruner/eval/tasks/*.yaml``.

Same datasets, splits, document preprocessing (lmms-eval's ``refcoco_bbox_rec_preprocess_dataset``: one row per
referring expression, the ground truth as [x1, y1, x2, y2] in [0, 1] of the original image) and metric
definitions (lmms-eval's ``compute_iou`` / ``compute_accuracy`` / ``compute_center_accuracy``, imported) as
lmms-eval's ``refcoco*_bbox_rec_*`` tasks, with three differences:

1. :func:`doc_to_text` hands the RAW referring expression to the model; the plugin applies the family's own
   grounding prompt and frame (the task's ``generation_kwargs`` say ``grounding: native``);
2. a response that is not exactly one box string — the plugin's ``"(no box) …"`` — is a miss: IoU 0, every
   ACC@t 0 and Center_ACC 0 (lmms-eval scores a missing box as ``[0, 0, 0, 0]``, whose centre (0, 0) counts
   as a Center_ACC hit when the ground truth touches the image's top-left corner);
3. ``no_box_count`` (a sum) and ``no_box_rate`` (a mean) count those misses.

The metric names are lmms-eval's (``refcoco_ACC@0.5`` etc., for all three datasets), so reports read both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmms_eval.tasks.refcoco.utils_rec import compute_accuracy, compute_center_accuracy, compute_iou

from d2pruner.eval.box_text import parse_box_text

THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: metric name → scorer(ground truth, prediction); the names lmms-eval's RefCOCO tasks report
SCORERS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "refcoco_IoU": compute_iou,
    **{f"refcoco_ACC@{t}": (lambda gt, pred, t=t: compute_accuracy(gt, pred, t)) for t in THRESHOLDS},
    "refcoco_Center_ACC": compute_center_accuracy,
}
NO_BOX_METRICS = ("no_box_count", "no_box_rate")


def doc_to_text(doc: dict) -> str:
    """The raw referring expression (the plugin adds the family's grounding prompt)."""
    expression = doc["answer"]
    if not isinstance(expression, str):
        raise ValueError(f"doc {doc.get('question_id')!r}: answer must be one referring expression, got {expression!r}")
    return expression.strip()


def process_results(doc: dict, results: Sequence[str]) -> dict[str, dict]:
    """Per document: the parsed prediction (None: no box) and the ground truth, under every metric name."""
    response = results[0] if results else ""
    data = {
        "pred": parse_box_text(response),
        "bbox": list(doc["bbox"]),
        "ann_id": doc.get("question_id"),
        "answer": doc.get("answer"),
    }
    return {name: data for name in (*SCORERS, *NO_BOX_METRICS)}


def score(metric: str, item: dict) -> float:
    """One document's value of ``metric`` (a :data:`SCORERS` name); 0 when the response held no box."""
    pred, gt = item["pred"], item["bbox"]
    if pred is None:
        return 0.0
    return float(SCORERS[metric](gt, pred))


def _mean(metric: str, items: Sequence[dict]) -> float:
    if not items:
        return float("nan")
    return sum(score(metric, item) for item in items) / len(items)


def iou(items):
    return _mean("refcoco_IoU", items)


def acc01(items):
    return _mean("refcoco_ACC@0.1", items)


def acc03(items):
    return _mean("refcoco_ACC@0.3", items)


def acc05(items):
    return _mean("refcoco_ACC@0.5", items)


def acc07(items):
    return _mean("refcoco_ACC@0.7", items)


def acc09(items):
    return _mean("refcoco_ACC@0.9", items)


def center_acc(items):
    return _mean("refcoco_Center_ACC", items)


def no_box_count(items) -> int:
    """How many responses held no box."""
    return sum(item["pred"] is None for item in items)


def no_box_rate(items) -> float:
    """The fraction of responses without a box."""
    return no_box_count(items) / len(items) if items else float("nan")
