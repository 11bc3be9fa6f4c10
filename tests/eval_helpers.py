"""Helpers of the evaluation tests: requiring lmms-eval, and lmms-eval-format result folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

#: the metrics lmms-eval's RefCOCO tasks and our strict variants report (plus our no-box counts)
REFCOCO_METRICS = ("refcoco_IoU", "refcoco_ACC@0.1", "refcoco_ACC@0.3", "refcoco_ACC@0.5", "refcoco_ACC@0.7",
                   "refcoco_ACC@0.9", "refcoco_Center_ACC")


def require_lmms_eval():
    """Import lmms-eval (the eval extra); skip without it — fail in CI, whose newest stack installs it."""
    try:
        import lmms_eval
    except ImportError as err:
        message = f"needs the eval extra (pip install -e '.[eval]'): {err}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return lmms_eval


def evaluation_results(task: str, model_args: str, metrics: dict[str, float], samples: int) -> dict:
    """What lmms-eval 0.7.3's ``simple_evaluate`` returns for one task (the part its writer dumps):
    ``results[task]`` with ``"<metric>,none"`` values and ``"_stderr"`` siblings, the run ``config``, ``n-samples``."""
    task_results = {"alias": task}
    for name, value in metrics.items():
        task_results[f"{name},none"] = value
        task_results[f"{name}_stderr,none"] = "N/A"
    return {
        "results": {task: task_results},
        "group_subtasks": {task: []},
        "configs": {task: {"task": task, "output_type": "generate_until"}},
        "versions": {task: "0.1"},
        "n-shot": {task: 0},
        "higher_is_better": {task: {name: not name.startswith("no_box") for name in metrics}},
        "n-samples": {task: {"original": samples, "effective": samples}},
        "config": {"model": "d2pruner", "model_args": model_args, "batch_size": 1, "batch_sizes": [], "limit": None},
        "git_hash": None,
        "date": 1764600000.0,
    }


def sanitized_model_name(pretrained: str) -> str:
    """lmms-eval's folder name for a model (``sanitize_model_name``: the last two path parts joined by ``__``)."""
    parts = pretrained.split("/")
    return "__".join(parts[-2:]) if len(parts) > 1 else parts[-1]


def write_results(output_path: Path, results: dict, date_id: str) -> Path:
    """Write ``results`` as lmms-eval's writer lays it out: ``<output_path>/<model>/<date_id>_results.json``."""
    args = dict(p.split("=", 1) for p in results["config"]["model_args"].split(",") if "=" in p)
    folder = Path(output_path) / sanitized_model_name(args["pretrained"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{date_id}_results.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return path
