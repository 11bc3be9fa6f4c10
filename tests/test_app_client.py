"""The launched app (``python app.py`` offline, so it falls back to tiny-llava) driven through gradio_client:
/analyze with an example, bad input answered with a clear error while the app keeps serving, the sweep."""

from __future__ import annotations

import json
import re
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import pytest
from app_helpers import EXAMPLES, ROOT, bomb_png, example, running_app

gradio_client = pytest.importorskip("gradio_client")

TIMEOUT = 120  # seconds per call


@pytest.fixture(scope="module")
def client():
    with running_app(name="server-client") as url:
        yield gradio_client.Client(url, verbose=False)


def call(client, api_name: str, **kwargs):
    job = client.submit(api_name=api_name, **kwargs)
    try:
        return job.result(timeout=TIMEOUT)
    except FutureTimeout:
        job.cancel()
        raise


def coffee(**overrides) -> dict:
    ex = example("coffee")
    args = dict(image=gradio_client.handle_file(str(EXAMPLES / ex["file"])), task="Grounding",
                expression=ex["referring_expression"], gt_box=", ".join(map(str, ex["box"])),
                methods=["fastv", "dart", "d2pruner"], keep_ratio=0.25, layer=2, max_new_tokens=4)
    args.update(overrides)
    return args


def test_api_lists_analyze(client):
    api = client.view_api(print_info=False, return_format="dict")
    params = [p["parameter_name"] for p in api["named_endpoints"]["/analyze"]["parameters"]]
    assert params[:5] == ["image", "task", "prompt", "expression", "gt_box"]
    assert {"keep_ratio", "layer", "alpha", "theta", "r_pivot", "max_new_tokens", "prior"} <= set(params)
    assert {"/sweep", "/bias", "/load_model"} <= set(api["named_endpoints"])


def test_analyze_through_the_api(client):
    status, att, prior, rel, graph, methods, answers, efficiency, files, summary = call(client, "/analyze", **coffee())
    assert "tiny-llava" in status and "N = 64" in status and "n = 16" in status
    for plot in (att, prior, rel, graph, methods):
        figure = json.loads(plot["plot"])
        assert figure["data"] and figure["layout"]["images"]
    assert [row[0] for row in answers["data"]] == ["Vanilla (unpruned)", "FastV", "DART", "D²Pruner"]
    assert answers["headers"][4] == "IoU vs GT" and len(efficiency["data"]) == 4
    paths = sorted((Path(f) for f in files), key=lambda p: p.suffix)
    assert [p.suffix for p in paths] == [".json", ".png"] and all(p.stat().st_size > 0 for p in paths)
    full = json.loads(paths[0].read_text())
    assert full["model"] == "tiny-llava" and len(full["methods"]["d2pruner"]["kept"]) == 16
    assert summary["settings"]["n"] == 16 and summary["ground_truth"] == [325.0, 67.0, 423.0, 324.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(keep_ratio=0), "Keep ratio 0"),
        (dict(alpha=1.5), "α"),
        (dict(expression=""), "referring expression is empty"),
        ("notes.txt", "not an image"),
        ("bomb.png", "decompression-bomb"),
    ],
)
def test_bad_input_through_the_api_then_a_good_request(client, tmp_path, overrides, message):
    if isinstance(overrides, str):
        bad = tmp_path / overrides
        if overrides == "bomb.png":
            bomb_png(bad)  # 20000×20000
        else:
            bad.write_text("plain text, not an image")
        overrides = dict(image=gradio_client.handle_file(str(bad)))
    with pytest.raises(Exception, match=message):
        call(client, "/analyze", **coffee(**overrides))
    status = call(client, "/analyze", **coffee(keep_ratio=0.5))[0]
    assert "n = 32" in status


def test_readme_snippet_runs(client, monkeypatch, capsys):
    """The gradio_client snippet of the README's "The app" section, run as written against the launched app."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The app"):]
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", section, flags=re.S)
                   if 'api_name="/analyze"' in block)
    assert 'Client("http://127.0.0.1:7860/")' in snippet
    monkeypatch.chdir(ROOT)
    exec(compile(snippet.replace("http://127.0.0.1:7860/", client.src), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tiny-llava" in out and "'d2pruner': 0.0" in out and ".json" in out and ".png" in out


def test_sweep_through_the_api(client):
    figure, table = call(client, "/sweep", **coffee(methods=["fastv", "d2pruner"]), ratios="0.5, 0.25")
    names = [trace["name"] for trace in json.loads(figure["plot"])["data"]]
    assert names == ["FastV", "D²Pruner", "Vanilla (unpruned)"] and len(table["data"]) == 4
