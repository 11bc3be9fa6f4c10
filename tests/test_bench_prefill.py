"""bench/prefill.py: the CLI documents itself, and a tiny-width smoke run writes the expected table.

Values only (kept counts, rows, analytic ratios); never times.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from d2pruner.efficiency import ARCHITECTURES, efficiency_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "prefill.py"
METHODS = ("fastv", "dart", "divprune", "mmr", "d2pruner")
VISUAL = {"llava-1.5-7b": 576, "llava-next-7b": 2880}
PROTECTED = {"llava-1.5-7b": 0, "llava-next-7b": 48}
ARCH = {"llava-1.5-7b": "llava-hf/llava-1.5-7b-hf", "llava-next-7b": "llava-hf/llava-v1.6-vicuna-7b-hf"}
TEXT = 30
TINY = ["--hidden", "64", "--layers", "3", "--runs", "1", "--decode-steps", "1", "--text-tokens", str(TEXT),
        "--dtype", "float32", "--threads", "1"]


@pytest.fixture(scope="module")
def prefill():
    spec = importlib.util.spec_from_file_location("bench_prefill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(prefill, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefill") / "prefill-test.md"
    threads = torch.get_num_threads()
    try:
        path = prefill.main([*TINY, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert path == out
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_help_documents_the_options():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--device", "--layers", "--prune-layer", "--dtype", "--threads", "--runs", "--decode-steps",
                   "--text-tokens", "--methods", "--ratios", "--out"):
        assert option in result.stdout
    assert "peak memory" in result.stdout and "LlavaNextForConditionalGeneration" in result.stdout


def test_bad_arguments_are_refused(prefill):
    with pytest.raises(SystemExit):
        prefill.parse_args(["--layers", "4", "--prune-layer", "4"])
    with pytest.raises(SystemExit):
        prefill.parse_args(["--runs", "0"])
    for bad in ("0", "3/2", "x"):
        with pytest.raises(SystemExit):
            prefill.parse_args(["--ratios", bad])
    args = prefill.parse_args([])
    assert (args.layers, args.prune_layer, args.dtype, args.threads, args.runs) == (4, 2, "bfloat16", 2, 5)
    assert [str(r) for r in args.ratios] == ["1/3", "1/9"]


def test_smoke_rows_and_kept_counts(smoke):
    _, data = smoke
    rows = data["rows"]
    assert [s["name"] for s in data["meta"]["shapes"]] == list(VISUAL)
    for shape_meta in data["meta"]["shapes"]:
        name = shape_meta["name"]
        assert shape_meta["visual"] == VISUAL[name]
        assert shape_meta["protected"] == PROTECTED[name]
        assert shape_meta["text"] == TEXT
        assert shape_meta["seq_len"] == VISUAL[name] + PROTECTED[name] + TEXT
    for name, n_total in VISUAL.items():
        sub = [r for r in rows if r["shape"] == name]
        assert [(r["method"], r["ratio"]) for r in sub] == [("unpruned", None)] + [
            (m, ratio) for ratio in ("1/3", "1/9") for m in METHODS
        ]
        assert sub[0]["kept"] == n_total
        for r in sub[1:]:
            assert r["kept"] == round(Fraction(r["ratio"]) * n_total)
        assert {r["kept"] for r in sub[1:]} == ({192, 64} if n_total == 576 else {960, 320})


def test_smoke_analytic_ratios(smoke):
    _, data = smoke
    for r in data["rows"]:
        text = TEXT + PROTECTED[r["shape"]]
        report = efficiency_report(ARCHITECTURES[ARCH[r["shape"]]], text_tokens=text, visual_tokens=r["visual"],
                                   layer=2, kept=r["kept"])
        assert r["flops_ratio_paper"] == pytest.approx(report.flops_reduction)
        assert r["kv_ratio_paper"] == pytest.approx(report.kv_reduction)
        if r["method"] == "unpruned":
            assert r["flops_ratio_paper"] == r["flops_ratio_bench"] == 1.0
        else:
            assert 1.0 < r["flops_ratio_bench"] < 3 / 2  # 3 layers, K = 2: at most L / K
        for key in ("prefill_ms", "extrapolated_prefill_ms", "decode_ms", "peak_mb"):
            assert math.isfinite(r[key])
        assert r["peak_total_mb"] is None  # CUDA only
        assert (r["select_ms"] is None) == (r["method"] == "unpruned")
        assert len(r["layer_ms"]) == 3


def test_smoke_markdown_table(smoke):
    text, data = smoke
    meta = data["meta"]
    assert meta["layers"] == 3 and meta["full_layers"] == 32 and meta["dtype"] == "float32"
    assert "torch " + torch.__version__ in text and "3 of 32 layers" in text and "K = 2" in text
    for name, n_total in VISUAL.items():
        section = text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]
        lines = [line for line in section.splitlines() if line.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        for column in ("method", "keep", "kept", "prefill ms", "speedup", "decode ms/tok", "peak Δ MB",
                       "select ms", "select %", "extrap. 32L prefill ms", "extrap. select %",
                       "FLOPs × (32L, paper)", "KV × (32L, paper)"):
            assert column in header
        body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
        assert len(body) == 1 + 2 * len(METHODS)
        kept = {(cells[0], cells[1]): int(cells[header.index("kept")]) for cells in body}
        assert kept[("unpruned", "1")] == n_total
        for method in METHODS:
            assert kept[(method, "1/3")] == round(n_total / 3)
            assert kept[(method, "1/9")] == round(n_total / 9)
    assert "## Against the targets" in text and "0.8 %" in text


def test_render_reproduces_the_saved_table(prefill, smoke, tmp_path):
    text, data = smoke
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    out = prefill.main(["--render", str(saved), "--out", str(tmp_path / "again.md")])
    assert out.read_text() == text
