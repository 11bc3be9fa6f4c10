"""python -m d2pruner.eval.sweep: one lmms-eval --config list for methods × keep ratios."""

from __future__ import annotations

import pytest
import yaml

from d2pruner.eval import TASKS_DIR
from d2pruner.eval.sweep import main, sweep_config


def test_unpruned_once_and_every_method_at_every_ratio(tmp_path):
    configs = sweep_config("llava-hf/llava-1.5-7b-hf", ["none", "fastv", "d2pruner"], [0.333, 0.111],
                           "refcoco_bbox_rec_strict_val", tmp_path, "preset=localization")
    assert [c["model_args"] for c in configs] == [
        "pretrained=llava-hf/llava-1.5-7b-hf,method=none,preset=localization",
        "pretrained=llava-hf/llava-1.5-7b-hf,method=fastv,keep_ratio=0.333,preset=localization",
        "pretrained=llava-hf/llava-1.5-7b-hf,method=fastv,keep_ratio=0.111,preset=localization",
        "pretrained=llava-hf/llava-1.5-7b-hf,method=d2pruner,keep_ratio=0.333,preset=localization",
        "pretrained=llava-hf/llava-1.5-7b-hf,method=d2pruner,keep_ratio=0.111,preset=localization",
    ]
    folders = [c["output_path"] for c in configs]
    assert len(set(folders)) == len(folders) and folders[1] == str(tmp_path / "fastv-0.333")
    assert {c["include_path"] for c in configs} == {str(TASKS_DIR)}
    assert all(c["model"] == "d2pruner" and c["log_samples"] for c in configs)


@pytest.mark.parametrize(
    ("methods", "ratios", "extra", "message"),
    [
        (["fastvv"], [0.5], "", "method must be one of"),
        (["fastv"], [1.5], "", "keep_ratio must be a number"),
        (["fastv"], [], "", "keep_ratios is empty"),
        ([], [0.5], "", "methods is empty"),
        (["fastv"], [0.5], "alpha=0.5", r"unknown model_args \['alpha'\]"),
        (["none"], [], "layer", "key=value"),
    ],
)
def test_bad_sweeps_are_refused_before_any_launch(tmp_path, methods, ratios, extra, message):
    with pytest.raises(ValueError, match=message):
        sweep_config("tiny-llava", methods, ratios, "t", tmp_path, extra)


def test_command_line_writes_the_config(tmp_path, capsys):
    out = tmp_path / "sweep.yaml"
    assert main(["--pretrained", "tiny-llava", "--methods", "none,dart", "--keep-ratios", "0.25,0.5", "--tasks", "t",
                 "--output-path", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert [c["output_path"] for c in yaml.safe_load(out.read_text())] == [
        str(tmp_path / "runs" / name) for name in ("none", "dart-0.25", "dart-0.5")]
    with pytest.raises(SystemExit):
        main(["--pretrained", "x", "--methods", "fastv", "--keep-ratios", "half", "--tasks", "t", "--output-path", "o"])
    assert "--keep-ratios must be numbers" in capsys.readouterr().err
