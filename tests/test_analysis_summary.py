"""What the app shows, from the package: scoring ("no box" kept apart from IoU 0), the efficiency table, the sweep,
the export format, the selection replayed step by step, ``observe(heads=True)`` and ``prior_for`` — and a script that
calls the package gets exactly the numbers the app shows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_helpers import EXAMPLES, example
from PIL import Image

from d2pruner.analysis import export, labels, scoring, steps, summary
from d2pruner.methods import METHODS, SelectionStep

# ---- scoring


def test_box_scores_keep_no_box_apart_from_zero():
    assert scoring.box_score((0, 0, 10, 10), (5, 5, 15, 15)).iou == pytest.approx(25 / 175)
    far = scoring.box_score((0, 0, 1, 1), (5, 5, 6, 6))
    assert far.iou == 0.0 and far.status == scoring.OK and far.text() == "0.00"
    none = scoring.box_score(None, (5, 5, 15, 15))
    assert none.iou is None and none.status == scoring.NO_BOX and none.text() == "no box"
    assert scoring.box_score((0, 0, 1, 1), None).text() == "–"


def test_means_leave_missing_values_out():
    mean = scoring.mean_score([0.5, None, 1.0, float("nan")])
    assert mean.mean == pytest.approx(0.75) and mean.count == 2 and mean.missing == 2
    assert "2 without a box left out" in mean.text()
    assert scoring.mean_score([None, None]).mean is None


def test_word_f1():
    assert scoring.word_f1("a red cup", "the red cup") == pytest.approx(2 / 3)
    assert scoring.word_f1("Red cup!", "red CUP") == 1.0 and scoring.word_f1("", "x") == 0.0
    assert scoring.word_f1("", "") == 1.0


def test_parse_ratios():
    assert scoring.parse_ratios("0.1, 75%, 0.5 0.5") == [0.75, 0.5, 0.1]
    assert scoring.parse_ratios([0.5, 1]) == [1.0, 0.5]
    for bad, message in [("", "ratios is empty"), ("0.5, half", "'half' is not a number"), ("0", r"in \(0, 1\]"),
                         (5, "ratios must be text"), ([True], r"in \(0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            scoring.parse_ratios(bad)
    with pytest.raises(ValueError, match="at most 8"):
        scoring.parse_ratios(", ".join(str(i / 10) for i in range(1, 11)))


def test_labels_cover_every_method():
    assert set(METHODS) <= set(labels.METHOD_INFO)
    assert labels.label("dart") != labels.label("dart-official")  # never confused
    assert all(info.paper and len(info.summary) > 80 for info in labels.METHOD_INFO.values())


# ---- a real tiny analysis


@pytest.fixture(scope="module")
def analysis(tiny_analyzers):
    analyzer = tiny_analyzers.get("tiny-llava")
    ex = example("coffee")
    with Image.open(EXAMPLES / ex["file"]) as img:
        image = img.convert("RGB")
    result = analyzer.analyze(image, ex["referring_expression"], methods=("fastv", "dart", "d2pruner"),
                              keep_ratio=0.25, layer=2, grounding=True, max_new_tokens=4, steps=True, heads=True)
    return analyzer, result, tuple(float(v) for v in ex["box"])


def test_efficiency_table_matches_the_arithmetic(analysis):
    from d2pruner.efficiency import arch_from_config, efficiency_report

    analyzer, result, _ = analysis
    arch = arch_from_config(analyzer.model.config)
    table = summary.efficiency_table(result, arch, bytes_per_value=4)
    assert list(table) == ["vanilla", "fastv", "dart", "d2pruner"]
    text = result.prompt_tokens - result.layout.num_tokens
    for name, row in table.items():
        kept = None if name == "vanilla" else result.methods[name].num_kept
        for conv in summary.CONVENTIONS:
            report = efficiency_report(arch, text_tokens=text, visual_tokens=result.layout.num_tokens,
                                       layer=result.layer, kept=kept, bytes_per_value=4, convention=conv)
            assert row.flops[conv] == report.flops and row.kv_bytes[conv] == report.kv_bytes
    assert table["vanilla"].flops_reduction() == 1.0 and table["fastv"].flops_reduction() > 1.0


def test_summary_rows_and_the_export_record(analysis):
    from d2pruner.efficiency import arch_from_config

    analyzer, result, gt = analysis
    summ = summary.summarize(result, arch=arch_from_config(analyzer.model.config), gt_box=gt, random_weights=True)
    rows = summ.answer_rows()
    assert [r[0] for r in rows] == ["Vanilla (unpruned)", "FastV", "DART (exact n)", "D²Pruner"]
    for row, answer in zip(rows, summ.answers.values(), strict=True):
        assert row[4] == answer.vs_ground_truth.text() and (answer.box is not None or row[3] == "no box")
    record = export.analysis_record(summ, settings={"max_new_tokens": 4}, device="cpu")
    assert record["format"] == export.FORMAT and record["warning"] == export.RANDOM_WEIGHTS_WARNING
    assert len(record["tokens"]["layer_attention"]) == analyzer.num_layers
    assert [s["token"] for s in record["steps"]["d2pruner"]] and record["layer_meaning"].startswith("tokens are")
    for name in ("fastv", "dart", "d2pruner"):
        m = record["methods"][name]
        assert (m["iou_vs_gt"] is None) == (m["box_status"] != "ok")
        assert m["kept"] == result.methods[name].kept.tolist()
    small = export.summary_record(record)
    assert "tokens" not in small and "kept" not in small["methods"]["fastv"]
    json.dumps(record)  # JSON-ready


def test_a_script_gets_exactly_the_numbers_the_app_shows(analysis, tmp_path):
    """The app's answers table, JSON summary and efficiency numbers are the package's (timings aside)."""
    import app as lab_app
    from d2pruner.efficiency import arch_from_config
    from d2pruner.serving.host import AllowList, ModelHost

    analyzer, result, gt = analysis
    host = ModelHost(device="cpu", allowed=AllowList(("tiny-llava",)), loader=lambda name, **_: analyzer)
    lab = lab_app.LabApp(host, default_model="tiny-llava", upload_roots=[EXAMPLES], out_dir=tmp_path)
    ex = example("coffee")
    out = lab.analyze_api(lab_app.AnalysisInputs(
        model="tiny-llava", image=str(EXAMPLES / ex["file"]), task="Grounding", expression=ex["referring_expression"],
        gt_box=", ".join(map(str, ex["box"])), methods=["fastv", "dart", "d2pruner"], keep_ratio=0.25, layer=2,
        max_new_tokens=4))
    answers, efficiency, _files, shown = out[-4:]
    script = summary.summarize(result, arch=arch_from_config(analyzer.model.config), gt_box=gt, random_weights=True,
                               bytes_per_value=analyzer.model.dtype.itemsize)  # float32 on CPU
    assert answers == script.answer_rows()
    for column in (0, 1, 2, 3, 4, 5):  # method, tokens, FLOPs, ×, KV, × (measured times differ run to run)
        assert [r[column] for r in efficiency] == [r[column] for r in script.efficiency_rows()]
    record = export.summary_record(export.analysis_record(script, settings={}))
    for name in ("fastv", "dart", "d2pruner"):
        for key in ("answer", "box", "iou_vs_gt", "box_status", "iou_vs_vanilla", "agreement", "num_kept"):
            assert shown["methods"][name][key] == record["methods"][name][key], (name, key)


def test_the_sweep_table(analysis):
    _, result, gt = analysis
    table = scoring.sweep_table([result, result], gt, grounding=True)
    assert table.metric == scoring.IOU_METRIC and table.methods == ("fastv", "dart", "d2pruner")
    series = table.series()
    for name, values in series.items():
        expected = scoring.box_score(result.methods[name].box, gt).iou
        assert values == [expected, expected]
    agreement = scoring.sweep_table([result], None, grounding=False)
    assert agreement.metric == scoring.AGREEMENT_METRIC and all(0 <= p.value <= 1 for p in agreement.points)


# ---- steps


def test_replay_and_explain_d2pruner_steps(analysis):
    _, result, _ = analysis
    record = result.methods["d2pruner"].steps
    assert [s.token for s in record] and sorted(s.token for s in record) == result.methods["d2pruner"].kept.tolist()
    first = steps.replay(record, 0)
    assert first.kept == (record[0].token,) and first.step.phase == "pivot"
    last = steps.replay(record, 99)  # clipped
    assert last.index == len(record) - 1 and len(last.kept) == len(record)
    assert not set(last.kept) & set(last.excluded)
    text = steps.explain("d2pruner", first, where=lambda t: f"#{t}", rank=lambda t: 1)
    assert text.startswith("**Step 1 of") and "relative attention" in text and "rank 1" in text
    ranks = steps.rank_of([0.1, 0.3, 0.3, 0.2])
    assert ranks.tolist() == [4, 1, 2, 3]
    with pytest.raises(ValueError, match="no selection steps"):
        steps.replay((), 0)


@pytest.mark.parametrize(("method", "step", "words"), [
    ("fastv", SelectionStep(3, "top-n", 0.2), "rank alone"),
    ("divprune", SelectionStep(3, "greedy", 0.4), "farthest"),
    ("dart", SelectionStep(3, "duplicate-aware", -0.1, pivot=7), "image pivot #7"),
    ("dart-official", SelectionStep(3, "duplicate-aware", -0.1, text_pivot=40), "text pivot at position 40"),
    ("d2pruner", SelectionStep(3, "independent-set", 1.2, (4, 5)), "it now excludes 2: #4, #5"),
    ("d2pruner", SelectionStep(3, "fill", 1.2), "ran out of candidates"),
])
def test_every_phase_is_explained(method, step, words):
    state = steps.StepState(0, 1, (3,), (), tuple(step.excluded), (), step)
    assert words in steps.explain(method, state)


# ---- observe(heads=True), prior_for


def test_observe_per_head_and_priors_for_any_layer(analysis):
    analyzer, result, _ = analysis
    image = Image.new("RGB", (96, 64), (120, 30, 30))
    obs = analyzer.observe(image, "what is it", layer=2, heads=True)
    assert obs.attention_heads.shape[1] == obs.attention_flat.size
    assert np.allclose(obs.attention_heads.mean(0), obs.attention_flat, atol=1e-6)
    assert analyzer.observe(image, "what is it", layer=2).attention_heads is None
    with pytest.raises(ValueError, match="heads must be True or False"):
        analyzer.observe(image, "x", heads="yes")
    maps, description, notes = analyzer.prior_for(result, 2, "natural", calibrate=False)
    assert [m.shape for m in maps] == [(g.rows, g.cols) for g in result.grids]
    assert np.allclose(np.concatenate([m.ravel() for m in maps]), np.concatenate([p.ravel() for p in result.prior]))
    assert "layer 2" in description and notes == []
    assert result.layer_attention.shape == (analyzer.num_layers, result.num_candidates)
    assert np.allclose(result.layer_attention[result.layer - 1], result.attention_flat, atol=1e-6)
