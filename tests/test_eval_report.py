"""python -m d2pruner.report: lmms-eval result folders → a method × keep-ratio table and an SVG plot."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from eval_helpers import evaluation_results, require_lmms_eval, write_results

from d2pruner.eval.results import read_runs, result_files, tables
from d2pruner.eval.svg import line_chart, nice_ticks
from d2pruner.report import main, write_report

LLAVA = "llava-hf/llava-1.5-7b-hf"
TASK = "refcoco_bbox_rec_strict_val"
SVG = "{http://www.w3.org/2000/svg}"


def _metrics(acc05: float, no_box: int) -> dict:
    return {"refcoco_IoU": acc05 * 0.9, "refcoco_ACC@0.5": acc05, "refcoco_Center_ACC": acc05 + 0.05,
            "no_box_count": no_box, "no_box_rate": no_box / 100}


def _args(method: str, budget: str = "", extra: str = ",preset=localization") -> str:
    return f"pretrained={LLAVA},method={method}{budget}{extra}"


@pytest.fixture
def folders(tmp_path):
    """Two output folders as a sweep would leave them (one run per lmms-eval call, one rerun, two models)."""
    runs = [
        (_args("none"), _metrics(0.80, 2), "20260101_100000"),
        (_args("fastv", ",keep_ratio=0.333"), _metrics(0.70, 3), "20260101_100100"),
        (_args("fastv", ",keep_ratio=0.222"), _metrics(0.60, 4), "20260101_100200"),
        (_args("fastv", ",keep_ratio=0.111"), _metrics(0.40, 9), "20260101_100300"),
        (_args("fastv", ",keep_ratio=0.111"), _metrics(0.41, 8), "20260102_100300"),  # a later rerun
        (_args("d2pruner", ",keep_ratio=0.333"), _metrics(0.78, 2), "20260101_100400"),
        (_args("d2pruner", ",keep_ratio=0.111"), _metrics(0.66, 5), "20260101_100500"),
        (_args("d2pruner", ",keep=64"), _metrics(0.65, 5), "20260101_100600"),
    ]
    first, second = tmp_path / "sweep-a", tmp_path / "sweep-b"
    for i, (model_args, metrics, date) in enumerate(runs):
        write_results(first if i < 4 else second, evaluation_results(TASK, model_args, metrics, 100), date)
    qwen = evaluation_results(TASK, "pretrained=Qwen/Qwen2.5-VL-3B-Instruct,method=none", _metrics(0.9, 0), 100)
    write_results(second, qwen, "20260101_110000")
    return [first, second]


def test_table_rows_are_methods_and_columns_keep_ratios(folders, tmp_path):
    written = write_report(folders, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert written[0].name == "report.md" and [p.suffix for p in written[1:]] == [".svg"]
    lines = report.splitlines()
    header = lines.index("| method | unpruned | keep 33.3 % | keep 22.2 % | keep 11.1 % | keep 64 |")
    assert lines[header + 2 : header + 5] == [
        "| unpruned | 80.0 (2) | — | — | — | — |",
        "| fastv | — | 70.0 (3) | 60.0 (4) | 41.0 (8) | — |",  # the later rerun wins
        "| d2pruner | — | 78.0 (2) | — | 66.0 (5) | 65.0 (5) |",
    ]
    assert f"## {TASK} — {LLAVA}" in report and "all runs: preset=localization" in report
    assert "superseded by the later" in report and "20260101_100300_results.json" in report
    assert f"## {TASK} — Qwen/Qwen2.5-VL-3B-Instruct" in report  # one table per model
    assert "(k): k answers held no box" in report


def test_the_plot_has_one_line_per_method_and_the_baseline_dashed(folders, tmp_path):
    write_report(folders, tmp_path / "report")
    svg = ET.parse(tmp_path / "report" / f"{TASK}__llava-hf_llava-1.5-7b-hf.svg").getroot()
    assert svg.tag == f"{SVG}svg"
    lines = svg.findall(f"{SVG}polyline")
    assert [len(p.get("points").split()) for p in lines] == [3, 2]  # fastv 3 ratios, d2pruner 2 (keep=64 is no ratio)
    assert len(svg.findall(f"{SVG}circle")) == 5
    dashed = [e for e in svg.findall(f"{SVG}line") if e.get("stroke-dasharray")]
    assert len(dashed) == 2  # the baseline and its legend entry
    texts = [t.text for t in svg.findall(f"{SVG}text")]
    assert {"unpruned", "fastv", "d2pruner", "keep ratio (%)"} <= set(texts)
    # the Qwen table has only the unpruned run: no plot, no link
    assert "Qwen2.5-VL-3B-Instruct.svg" not in (tmp_path / "report" / "report.md").read_text()


def test_runs_that_differ_in_a_setting_get_their_own_rows(tmp_path):
    for alpha, acc, date in (("0.5", 0.7, "20260101_000001"), ("1.0", 0.6, "20260101_000002")):
        args = _args("d2pruner", ",keep_ratio=0.222", f",alpha={alpha},layer=5")
        write_results(tmp_path, evaluation_results(TASK, args, _metrics(acc, 1), 10), date)
    (table,) = tables(run for path in result_files([tmp_path]) for run in read_runs(path))
    assert table.rows == ["d2pruner (alpha=0.5)", "d2pruner (alpha=1.0)"]
    assert table.common == {"layer": "5"}


def test_command_line_and_its_errors(folders, tmp_path, capsys):
    assert main([str(f) for f in folders] + ["--out", str(tmp_path / "out"), "--metric", "refcoco_IoU"]) == 0
    assert "report.md" in capsys.readouterr().out
    assert "| unpruned | 72.0 (2) |" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([str(folders[0]), "--metric", "accuracy", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "metric 'accuracy' is in no results file; available: no_box_count" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty")])
    assert "no *_results.json" in capsys.readouterr().err
    (tmp_path / "bad_results.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not an lmms-eval results file"):
        read_runs(tmp_path / "bad_results.json")


@pytest.mark.newest_stack
def test_lmms_eval_writer_output_reads_the_same(tmp_path):
    """The synthetic folders match what lmms-eval 0.7.3's own writer (EvaluationTracker) produces."""
    require_lmms_eval()
    from lmms_eval.loggers import EvaluationTracker

    results = evaluation_results(TASK, _args("fastv", ",keep_ratio=0.111"), _metrics(0.4, 9), 100)
    tracker = EvaluationTracker(output_path=str(tmp_path / "lmms"))
    tracker.general_config_tracker.log_experiment_args(model_source="d2pruner", model_args=results["config"][
        "model_args"], system_instruction=None, chat_template=None, fewshot_as_multiturn=False)
    tracker.save_results_aggregated(results=json.loads(json.dumps(results)), samples=None,
                                    datetime_str="20260101_100300")
    ours = write_results(tmp_path / "ours", results, "20260101_100300")
    (theirs,) = result_files([tmp_path / "lmms"])
    assert theirs.relative_to(tmp_path / "lmms") == ours.relative_to(tmp_path / "ours")
    strip = {"path"}
    a, b = read_runs(theirs)[0], read_runs(ours)[0]
    assert {k: v for k, v in vars(a).items() if k not in strip} == {k: v for k, v in vars(b).items() if k not in strip}


def test_svg_chart_basics():
    assert nice_ticks(11.1, 33.3) == [10, 15, 20, 25, 30, 35]
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    text = line_chart({"a": [(2, 1.0), (1, 0.5)], "b": []}, title="t <&>")
    root = ET.fromstring(text)
    assert len(root.findall(f"{SVG}polyline")) == 1 and "t &lt;&amp;&gt;" in text
    with pytest.raises(ValueError, match="at least one point"):
        line_chart({"a": []})
    with pytest.raises(ValueError, match="finite"):
        line_chart({"a": [(1, float("nan"))]})
