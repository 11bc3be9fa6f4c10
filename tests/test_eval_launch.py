"""The real thing, offline: ``accelerate launch`` (2 CPU processes) → ``-m lmms_eval`` → the d2pruner model on the
bundled-examples grounding task, unpruned and with every method, in one launch (lmms-eval's ``--config`` list).

About 100 s on 2 cores; most of it is fixed cost: starting the two processes and importing lmms-eval (~25 s once),
then per configuration lmms-eval re-indexing its ~1,900 task files (~6 s) and the run itself (~3 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import require_lmms_eval

from d2pruner.eval.results import read_runs, result_files
from d2pruner.report import write_report

pytestmark = [pytest.mark.newest_stack, pytest.mark.slow]
METHODS = ("none", "fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di")
TASK = "d2pruner_examples_bbox_rec"
DOCS = 11  # the bundled examples
RANK_LINE = re.compile(r"d2pruner rank (\d+)/(\d+) \[method=([\w-]+)[^\]]*\]: (\d+) generate_until requests")


#: the sweep, as docs/eval.md gives it
SWEEP = ["--pretrained", "tiny-llava", "--methods", ",".join(METHODS), "--keep-ratios", "0.25",
         "--model-args", "layer=2,preset=localization,max_new_tokens=4", "--tasks", TASK]


def launch_command(config: Path) -> list[str]:
    """``accelerate launch`` with two CPU processes: ``--cpu --num_processes 2`` starts ONE process in accelerate
    1.15 (its multi-CPU path needs MPI); the multi-process launcher plus ``ACCELERATE_USE_CPU=1`` starts two, on
    gloo."""
    script = Path(sys.executable).with_name("accelerate")
    accelerate = [str(script)] if script.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    return [*accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval", "--config", str(config)]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    require_lmms_eval()
    tmp = tmp_path_factory.mktemp("lmms")
    config = tmp / "sweep.yaml"
    subprocess.run([sys.executable, "-m", "d2pruner.eval.sweep", *SWEEP, "--output-path", str(tmp / "out"), "--out",
                    str(config)], check=True, timeout=120)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(launch_command(config), env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    (tmp / "launch.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    assert "Error during evaluation" not in log, log[-6000:]
    return tmp / "out", log


def test_both_processes_answered_a_shard_for_every_method(launched):
    _, log = launched
    counts: dict[str, dict[int, int]] = {}
    for rank, world, method, requests in RANK_LINE.findall(log):
        assert world == "2"
        counts.setdefault(method, {})[int(rank)] = int(requests)
    assert set(counts) == set(METHODS)
    for method, per_rank in counts.items():
        assert set(per_rank) == {0, 1} and all(n >= 1 for n in per_rank.values()), (method, per_rank)
        assert sum(per_rank.values()) >= DOCS, (method, per_rank)  # lmms-eval pads the shorter shard


def test_every_method_has_acc05_and_no_box_counts_over_all_documents(launched):
    out, _ = launched
    for method in METHODS:
        (path,) = result_files([out / (method if method == "none" else f"{method}-0.25")])
        (run,) = read_runs(path)
        assert run.task == TASK and run.method == method and run.samples == DOCS
        assert "refcoco_ACC@0.5" in run.metrics and 0.0 <= run.metrics["refcoco_ACC@0.5"] <= 1.0
        assert run.metrics["no_box_count"] == DOCS * run.metrics["no_box_rate"]
        (samples,) = path.parent.glob(f"*_samples_{TASK}.jsonl")
        logged = [json.loads(line) for line in samples.read_text().splitlines()]
        assert sorted(s["doc_id"] for s in logged) == list(range(DOCS))  # gathered from both shards
        # 4 new tokens of a random tiny model: no box, scored as a miss and counted
        assert all(s["filtered_resps"].startswith("(no box)") for s in logged)
        assert run.metrics["no_box_count"] == DOCS


def test_the_report_reads_the_sweep(launched, tmp_path):
    out, _ = launched
    write_report([out], tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| method | unpruned | keep 25 % |" in report
    assert "| unpruned | 0.0 (11) | — |" in report
    for method in METHODS[1:]:
        assert f"| {method} | — | 0.0 (11) |" in report
