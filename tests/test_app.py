"""The app's handlers and layout against a fake analyzer (tests/fake_analyzer.py: real layouts, no model): every
panel, "no box" shown as such, the crop shaded, the model named everywhere, errors beside the controls with the
results kept, the package's messages passed through, per-request models, the queue wiring, the cached re-render time
and the response size. Model behaviour is tested in the package's own tests; the app on a real tiny model in
test_app_client.py and test_browser.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_helpers import EXAMPLES, ROOT, example
from fake_analyzer import FakeAnalyzer, OnlineProbe, fake_loader
from PIL import Image

import app as lab_app
from d2pruner.serving.host import AllowList, ModelHost
from d2pruner.serving.limits import Limits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")
LLAVA = "llava-hf/llava-1.5-7b-hf"
NEXT = "llava-hf/llava-v1.6-vicuna-7b-hf"
ALL = list(lab_app.METHODS)


def make_lab(tmp_path, *, allowed=("*",), budget=1e12, loader=fake_loader, limits=None) -> lab_app.LabApp:
    host = ModelHost(device="cpu", allowed=AllowList(tuple(allowed)), budget_bytes=budget, loader=loader,
                     probe=OnlineProbe())
    return lab_app.LabApp(host, default_model=LLAVA, upload_roots=[EXAMPLES, tmp_path], out_dir=tmp_path / "out",
                          limits=limits)


@pytest.fixture
def lab(tmp_path) -> lab_app.LabApp:
    return make_lab(tmp_path)


def inputs(**overrides) -> lab_app.AnalysisInputs:
    ex = example("coffee")
    args = dict(model=LLAVA, image=str(EXAMPLES / ex["file"]), task="Grounding", prompt=ex["prompt"],
                expression=ex["referring_expression"], gt_box=", ".join(map(str, ex["box"])), methods=ALL,
                keep_ratio=0.25, layer=2, alpha=0.5, theta=0.8, r_pivot=0.7, max_new_tokens=4, prior="auto")
    args.update(overrides)
    return lab_app.AnalysisInputs(**args)


def figure(plot) -> dict:
    data = plot.plot if hasattr(plot, "plot") else plot["plot"]
    return json.loads(data)


def arr(value) -> np.ndarray:
    """A figure array from its JSON: a list, or plotly ≥ 6's base64 typed array."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return data.reshape([int(v) for v in str(shape).split(",")]) if shape else data
    return np.asarray(value, dtype=np.float64)


def api_outputs(out) -> dict:
    status, att, prior, rel, graph, *rest = out
    facets, (answers, efficiency, files, summary) = rest[: lab_app.FACETS], rest[lab_app.FACETS:]
    return dict(status=status, heatmaps=(att, prior, rel), graph=graph, facets=[f for f in facets if f is not None],
                answers=answers, efficiency=efficiency, files=files, summary=summary)


# ---- import hygiene and the CLI


def test_importing_the_app_imports_neither_torch_nor_transformers():
    code = "import sys; sys.argv = ['app.py']; import app; print(sorted(m for m in ('torch', 'transformers') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_answers_without_gradio_or_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "app.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--model" in out.stdout and "D2PRUNER_ALLOWED_MODELS" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "gradio", "transformers", "numpy")}


# ---- every panel, real layouts


@pytest.mark.parametrize(("model", "tokens"), [(LLAVA, 576), (NEXT, 2880)])
def test_every_panel_names_its_model_and_loads_the_photo_once(lab, model, tokens):
    out = api_outputs(lab.analyze_api(inputs(model=model)))
    assert f"**{model}**" in out["status"] and f"N = {tokens}" in out["status"]
    assert "K = 2" in out["status"] and "layer K−1 = 1" in out["status"]
    figs = [figure(p) for p in (*out["heatmaps"], out["graph"], *out["facets"])]
    assert len(out["facets"]) == 1 + len(ALL)
    for fig in figs:
        (photo,) = fig["layout"]["images"]
        assert photo["source"].startswith(lab_app.PHOTO_ROUTE + "/")  # served once, never embedded
        short = model.split("/")[-1]  # figure titles name the model without its owner (it fits a panel)
        assert short in fig["layout"]["title"]["text"]
    assert len({f["layout"]["images"][0]["source"] for f in figs}) == 1
    token = out["heatmaps"][0]
    assert lab.photos.get(figure(token)["layout"]["images"][0]["source"].split("/")[-1])[:3] == b"\xff\xd8\xff"
    rows = {row[0]: row for row in out["answers"]}
    assert rows["DART (official)"][1] == f"{min(tokens, 4 + 8 * (round(0.25 * tokens) // 8))} / {tokens}"
    json_path, png_path = out["files"]
    record = json.loads(Path(json_path).read_text())
    assert Path(png_path).stat().st_size > 10_000 and record["model"] == model
    assert Path(json_path).name.startswith("d2pruner-llava-")
    assert len(record["tokens"]["layer_attention"]) == 32 and record["steps"]["d2pruner"]
    assert str(lab.out_dir) not in Path(json_path).read_text() and "/tmp" not in json.dumps(out["summary"])


def test_no_box_is_shown_as_such_never_as_zero(lab):
    out = api_outputs(lab.analyze_api(inputs()))
    rows = {row[0]: row for row in out["answers"]}
    assert rows["DART (exact n)"][3] == "no box" and rows["DART (exact n)"][4] == "no box"
    assert rows["FastV"][4] not in ("no box", "–") and float(rows["FastV"][4]) >= 0
    assert out["summary"]["methods"]["dart"]["iou_vs_gt"] is None
    assert out["summary"]["methods"]["dart"]["box_status"] == "no box"
    titles = {figure(f)["layout"]["meta"]["label"]: figure(f)["layout"]["title"]["text"] for f in out["facets"]}
    assert "no box" in titles["DART (exact n)"] and "IoU 0.00" not in titles["DART (exact n)"]
    assert "IoU" in titles["FastV"]
    sweep = lab_app.SweepInputs(**{**vars(inputs(methods=["fastv", "dart"])), "ratios": "0.5, 0.25"})
    fig, rows, means = lab.sweep(sweep)
    traces = figure(fig)["data"]
    assert [t["name"] for t in traces] == ["FastV", "Vanilla (unpruned)"]  # DART never has a box: no flat 0 line
    assert "no box at any ratio: DART (exact n)" in figure(fig)["layout"]["title"]["text"]
    assert {row[3] for row in rows if row[0] == "DART (exact n)"} == {"no box"}
    assert "DART (exact n) – (no value of 2)" in means


def test_area_outside_the_centre_crop_is_shaded(lab):
    out = api_outputs(lab.analyze_api(inputs()))  # coffee.jpg is 600×400: the crop is x ∈ [100, 500]
    for fig in (figure(out["heatmaps"][0]), figure(out["facets"][1])):
        outside = sorted((s["x0"], s["x1"]) for s in fig["layout"]["shapes"] if s.get("name") == "outside")
        assert outside == [(0.0, 100.0), (500.0, 600.0)]


@pytest.mark.parametrize("size", [(1, 1), (8, 200), (600, 12), (20, 600), (1500, 40)])
@pytest.mark.parametrize("model", ["fake", "tiny-llava", "tiny-qwen2.5-vl"])
def test_small_and_extreme_aspect_images_are_analysed(tmp_path, model, size):
    """Images a few pixels wide or 1:40 (they broke the report PNG's colour bar): every panel, table and download,
    on the real tiny models (their processors resize them) and on the fake LLaVA-1.5 layout."""
    from d2pruner.serving.host import default_loader

    lab = make_lab(tmp_path, loader=fake_loader if model == "fake" else default_loader)
    path = tmp_path / f"{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (180, 40, 40)).save(path)
    out = api_outputs(lab.analyze_api(inputs(model=LLAVA if model == "fake" else model, image=str(path), gt_box="",
                                             methods=["fastv", "d2pruner"], max_new_tokens=2)))
    assert "N = " in out["status"] and len(out["facets"]) == 3
    json_path, png_path = out["files"]
    assert Image.open(png_path).width > 300 and json.loads(Path(json_path).read_text())["image"]["uploaded_size"] == [
        *size]


def test_random_model_warning_in_every_export(tmp_path):
    lab = make_lab(tmp_path)
    out = api_outputs(lab.analyze_api(inputs(model="tiny-llava")))
    record = json.loads(Path(out["files"][0]).read_text())
    assert record["random_weights"] is True and "RANDOM WEIGHTS" in record["warning"]
    assert "random weights" in figure(out["heatmaps"][0])["layout"]["title"]["text"]
    with Image.open(out["files"][1]) as png:
        top = np.asarray(png.convert("RGB"))[:80]
    assert (np.abs(top.astype(int) - (185, 28, 28)).sum(axis=-1) < 30).sum() > 50  # the red warning


# ---- the UI path: errors beside the controls, results kept


def test_an_error_is_shown_beside_the_controls_and_the_results_stay(lab):
    first = lab.analyze_ui(inputs())
    assert first[0] == "" and first[1]["key"]
    bad = lab.analyze_ui(inputs(keep_ratio=0.0))
    assert "keep_ratio must be in (0, 1]" in bad[0] and "role='alert'" in bad[0]
    assert len(bad) == lab_app.UI_ANALYSIS_OUTPUTS
    assert all(value == gr.skip() for value in bad[1:])  # nothing on screen changes


def test_unexpected_errors_are_logged_and_shown_as_internal(tmp_path, caplog):
    class Broken(FakeAnalyzer):
        def analyze(self, *args, **kwargs):
            raise RuntimeError("boom in the model at /secret/path")

    lab = make_lab(tmp_path, loader=lambda name, **kw: Broken(name))
    out = lab.analyze_ui(inputs())
    assert "internal error (logged)" in out[0] and "/secret" not in out[0] and "boom" not in out[0]
    assert "boom in the model" in caplog.text and "Traceback" in caplog.text
    with pytest.raises(gr.Error, match=r"internal error \(logged\)"):
        lab.analyze_api(inputs())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(methods=[["fastv"]]), "methods must be names"),
        (dict(methods=["fastv", "nope"]), r"unknown method\(s\) \['nope'\]"),
        (dict(expression="\ud800 x"), "unpaired surrogate"),
        (dict(expression=5), "referring expression must be a string"),
        (dict(expression="x" * 2001), "at most 2000 are accepted"),
        (dict(max_new_tokens=3000), r"max_new_tokens must be an integer \[1, 512\]"),
        (dict(layer="2"), r"layer \(K; this model has 32 decoder layers\) must be an integer"),
        (dict(layer=2.5), "must be an integer"),
        (dict(keep_ratio="0.5"), "keep_ratio must be a number"),
        (dict(alpha=1.5), "alpha"),
        (dict(task="Caption"), "task must be one of"),
        (dict(gt_box="1, 2, 3"), "gt_box must be four numbers"),
        (dict(gt_box="5000, 5000, 6000, 6000"), "outside"),
        (dict(image=None), "No image"),
        (dict(image=[1, 2]), "image must be an uploaded image file; got list"),
        (dict(model="nobody/nothing"), "does not load 'nobody/nothing'"),
        (dict(model=["a"]), "model must be a model id"),
        (dict(prior="magic"), "prior must be one of"),
    ],
)
def test_bad_values_get_the_message_that_names_them(tmp_path, overrides, message):
    lab = make_lab(tmp_path, allowed=(LLAVA, "tiny-*"))
    with pytest.raises(gr.Error, match=message):
        lab.analyze_api(inputs(**overrides))


def test_a_method_name_is_not_split_into_letters(lab):
    out = api_outputs(lab.analyze_api(inputs(methods="fastv")))
    assert [row[0] for row in out["answers"]] == ["Vanilla (unpruned)", "FastV"]


# ---- per-request models


def test_each_request_runs_on_the_model_it_names(lab):
    a = api_outputs(lab.analyze_api(inputs(model=LLAVA)))
    b = api_outputs(lab.analyze_api(inputs(model=NEXT)))
    assert f"**{LLAVA}**" in a["status"] and f"**{NEXT}**" in b["status"]
    assert "N = 576" in a["status"] and "N = 2880" in b["status"]
    assert sorted(lab.host.loaded()) == sorted([LLAVA, NEXT])
    again = api_outputs(lab.analyze_api(inputs(model=LLAVA)))  # from the cache: still LLaVA-1.5's
    assert "from cache" in again["status"] and f"**{LLAVA}**" in again["status"]


def test_a_refused_model_changes_nothing(tmp_path):
    lab = make_lab(tmp_path, allowed=(LLAVA,))
    lab.analyze_api(inputs())
    banner, *rest = lab.load_model(lab_app.ModelInputs("nobody/nothing"))
    assert "does not load" in banner and all(v == gr.skip() for v in rest)
    assert lab.host.loaded() == [LLAVA]


def test_load_model_answers_for_this_session_only(lab):
    banner, layer, bias_layer, info = lab.load_model(lab_app.ModelInputs(NEXT))
    assert NEXT in banner and layer["maximum"] == bias_layer["maximum"] == 31 and NEXT in info
    assert lab.default_model == LLAVA  # nothing process-wide changed


# ---- the views that replay a cached result


def test_step_slider_replays_the_selection(lab):
    ui = lab.analyze_ui(inputs())
    shown = ui[1]
    text, plot = lab.step_view(lab_app.StepInputs(shown, "d2pruner", 1))
    assert "Step 1 of" in text and "pivot" in text and "relative attention" in text
    n = len(lab.results.get(shown["key"]).result.methods["d2pruner"].steps)
    text, plot = lab.step_view(lab_app.StepInputs(shown, "d2pruner", n))
    assert f"Step {n} of {n}" in text and "independent-set" in text
    z = np.concatenate([arr(t["z"]).ravel() for t in figure(plot)["data"] if t["type"] == "heatmap"])
    assert (z == 3).sum() == 1 and ((z == 1) | (z == 4)).sum() == n - 1  # the pick, and what came before
    text, _ = lab.step_view(lab_app.StepInputs(shown, "fastv", 3))
    assert "top-n" in text and "attention" in text
    assert lab.step_view(lab_app.StepInputs({"key": "gone"}, "fastv", 1))[0].startswith("These results are no longer")


def test_layer_slider_shows_every_layer_without_running_the_model(lab):
    shown = lab.analyze_ui(inputs())[1]
    calls = lab.host.loaded() and lab.results.get(shown["key"]).result
    analyzer = next(iter(lab.host._models.values())).analyzer
    before = analyzer.calls
    note, att, prior, rel, calibrate = lab.layer_view(lab_app.LayerInputs(shown, 1))
    assert "prior:" in note and figure(att)["layout"]["title"]["text"].startswith("Attention at layer 1")
    assert prior is not None and rel is not None and calibrate["visible"] is False
    note, att, prior, rel, calibrate = lab.layer_view(lab_app.LayerInputs(shown, 10, "head 3"))
    assert "No natural prior for layer K = 11" in note and prior is None and calibrate["visible"] is True
    note, *_ = lab.calibrate_layer(lab_app.LayerInputs(shown, 10))
    assert "prior:" in note and "layer 11" in note
    note, *_ = lab.layer_view(lab_app.LayerInputs(shown, 31))
    assert "No prior for the last layer" in note
    z = arr(figure(att)["data"][0]["z"]).ravel()
    r = lab.results.get(shown["key"]).result
    assert np.allclose(z, r.layer_attention_heads[10, 3], rtol=2e-3)
    assert analyzer.calls == before and calls


COLOUR_OPTIONS = [("shared", False), ("shared", True), ("independent", True), ("independent", False)]


def _no_building(monkeypatch) -> None:
    """From here on, building any figure, report or file fails the test (a cached redraw builds nothing)."""

    def built(*args, **kwargs):
        raise AssertionError("a cached redraw built a figure or a file again")

    for name in ("token_heatmap", "graph_figure", "facet_figure", "step_figure", "report_png"):
        monkeypatch.setattr(lab_app.viz, name, built)
    monkeypatch.setattr(lab_app.export, "write_json", built)


def test_colour_toggles_redraw_from_the_cache(lab, monkeypatch):
    """Each colour option is drawn once per result; toggling back re-sends the same figures (the timing is in
    bench/app_render.py)."""
    shown = lab.analyze_ui(inputs(model=NEXT))[1]
    first = {option: lab.rerender(lab_app.DisplayInputs(shown, *option)) for option in COLOUR_OPTIONS}
    _no_building(monkeypatch)
    for option in COLOUR_OPTIONS:
        again = lab.rerender(lab_app.DisplayInputs(shown, *option))
        assert all(a is b for a, b in zip(again, first[option], strict=True))
    ranges = {(figure(f)["layout"]["coloraxis"]["cmin"], figure(f)["layout"]["coloraxis"]["cmax"])
              for f in first[("shared", True)]}
    assert len(ranges) == 1


@pytest.mark.parametrize("model", [LLAVA, NEXT])
def test_a_cached_analysis_builds_nothing_again_and_the_response_is_under_300_kb(lab, model, monkeypatch):
    """The second identical request re-sends what the first built (figures, tables, files); one response, all seven
    methods, stays under 300 KB because the photo is a served file, not embedded in every panel."""
    first = lab.analyze_api(inputs(model=model))
    _no_building(monkeypatch)
    out = lab.analyze_api(inputs(model=model))
    assert "from cache" in out[0] and out[-2] == first[-2]  # the same download files
    size = len(json.dumps([o.plot if hasattr(o, "plot") else o for o in out], default=str).encode())
    print(f"{model}: response {size / 1024:.0f} KB")
    assert size < 300 * 1024
    assert all("data:image" not in o.plot for o in out if hasattr(o, "plot"))


# ---- light UI events, the registry, the wiring


def test_d2pruner_controls_are_disabled_with_a_reason_without_it():
    for update in lab_app.d2_controls(["fastv", "dart"]):
        assert update["interactive"] is False and "only D²Pruner uses it" in update["info"]
    assert all(u["interactive"] for u in lab_app.d2_controls(["d2pruner"]))


def test_paper_settings_for_the_task():
    layer, alpha, theta, r_pivot = lab_app.apply_preset(lab_app.PRESETS[1], "Grounding", LLAVA)
    assert (layer["value"], alpha["value"], theta["value"], r_pivot["value"]) == (5, 0.5, 0.8, 0.7)
    layer, alpha, *_ = lab_app.apply_preset(lab_app.PRESETS[1], "Question", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert (layer["value"], alpha["value"]) == (2, 1.0)
    assert lab_app.apply_preset("custom", "Grounding", LLAVA) == (gr.skip(),) * 4


def test_the_model_list_comes_from_the_family_registry(monkeypatch, lab):
    from d2pruner import families
    from d2pruner.families.base import Checkpoint
    from d2pruner.families.llava import Llava
    from d2pruner.serving import catalog

    class NewFamily(Llava):
        name, label, tiny_name = "newfam", "NewFamily", "tiny-newfam"
        checkpoints = (Checkpoint("org/newfam-3b", Llava.checkpoints[0].arch, 3.2),)

    monkeypatch.setattr(families, "FAMILIES", {**families.FAMILIES, "newfam": NewFamily()})
    ids = [c.id for c in catalog.model_choices()]
    assert {"llava-hf/llava-1.5-7b-hf", "tiny-llava", "OpenGVLab/InternVL3-1B-hf", "org/newfam-3b",
            "tiny-newfam"} <= set(ids)
    demo = lab_app.build_demo(lab)
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-dropdown")
    labels = dict((v, k) for k, v in dropdown.choices)
    assert labels["org/newfam-3b"] == "NewFamily · org/newfam-3b (3.2 B)"
    assert labels["tiny-newfam"] == "NewFamily · tiny-newfam (random weights)"


def test_heavy_work_goes_only_through_the_queue(lab):
    demo = lab_app.build_demo(lab)
    assert demo.api_open is False and demo._queue.max_size >= 64 and lab.limits.queue_size >= 64
    heavy = {"analyze_api", "analyze_ui", "sweep_api", "sweep_ui", "bias_api", "bias_ui", "load_model",
             "calibrate_layer"}
    render = {"rerender", "step_view", "layer_view", "files_ui"}
    seen = set()
    for fn in demo.fns.values():
        name = getattr(fn.fn, "__name__", None)
        if name in heavy:
            assert fn.queue and fn.concurrency_id == "gpu" and fn.validator is not None, name
        elif name in render:
            assert fn.queue and fn.concurrency_id == "render", name
        elif fn.fn is not None:  # the light UI events: no model, no file, no upload
            assert name in {"<lambda>", "d2_controls", "apply_preset", "fill_example", "pick_corner"}, name
        seen.add(name)
    assert heavy | render <= seen
    apis = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert apis == {"analyze", "sweep", "bias", "load_model"}


def test_a_full_queue_gets_a_busy_message(lab):
    lab.queue_length = lambda: 0
    assert all(v["is_valid"] for v in lab.busy(1, 2, 3))
    lab.queue_length = lambda: lab.limits.queue_size
    first, *rest = lab.busy(1, 2, 3)
    assert not first["is_valid"] and "Busy" in first["message"] and "try again in a minute" in first["message"]
    assert f"number {lab.limits.queue_size + 1}" in first["message"] and len(rest) == 2


def test_queue_length_reads_gradios_queue(lab):
    """``_queue_length`` reads a private attribute of Gradio (pinned < 6.32): this test catches a rename."""
    demo = lab_app.build_demo(lab)
    assert lab.queue_length() == 0 and hasattr(demo._queue, "event_queue_per_concurrency_id")


def test_only_uploaded_or_bundled_files_are_read(lab, tmp_path_factory):
    private = tmp_path_factory.mktemp("private") / "secret.png"
    Image.new("RGB", (64, 64), "red").save(private)
    for payload in (str(private), {"path": str(private)}, {"path": str(EXAMPLES / ".." / ".." / "..")},
                    {"path": "/proc/self/environ"}, {"path": "README.md"}):
        with pytest.raises(gr.Error, match="must be a file uploaded to this app"):
            lab.analyze_api(inputs(image=payload))


def test_limits_are_environment_settings():
    limits = Limits.from_env({"D2PRUNER_QUEUE_SIZE": "256", "D2PRUNER_IMAGE_PIXELS": "1e6"})
    assert limits.queue_size == 256 and limits.image_pixels == 1_000_000
    with pytest.raises(ValueError, match="D2PRUNER_CONCURRENCY must be a number"):
        Limits.from_env({"D2PRUNER_CONCURRENCY": "many"})


def test_examples_fill_every_input():
    examples = lab_app.load_examples()
    fill = lab_app.example_filler(examples)
    path, task, prompt, expression, box, corner, hint = fill(1)
    assert Path(path).name == examples[1]["file"] and task == "Grounding" and expression and box.count(",") == 3
    assert prompt == examples[1]["prompt"] and corner is None and hint == ""
    assert fill(99) == (gr.skip(),) * 7
    assert "<img src='lab/example/1'" in lab_app.example_card(1, examples[1])
