"""The app's handlers on tiny models (tiny-llava and tiny-internvl): every panel, answers and boxes per method, IoU
against known boxes, the sweep, the bias explorer, model loading with its offline fallback, and every kind of bad
input (a clear message, and the next request works)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import weakref
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_helpers import EXAMPLES, ROOT, bomb_jpeg, bomb_png, example
from PIL import Image

import app as lab_app
from d2pruner import viz
from d2pruner.resources import BUNDLED_PRIORS_DIR

ALL = list(lab_app.METHODS)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")  # gr.Warning outside a request


class Labs:
    """One LabApp per tiny model, built on first use. Priors are read from (and any new calibration written to) a
    temporary copy of the bundled priors/ folder, so the tests never write into the repository."""

    def __init__(self, root: Path):
        self.root = root
        self._labs: dict[str, lab_app.LabApp] = {}
        shutil.copytree(BUNDLED_PRIORS_DIR, root / "priors", ignore=shutil.ignore_patterns("*.md"))

    def get(self, name: str) -> lab_app.LabApp:
        if name not in self._labs:
            host = lab_app.ModelHost(device="cpu")
            status = host.load(name)
            assert status.loaded == name and status.reason is None
            host.analyzer.prior_dirs = [self.root / "priors"]
            self._labs[name] = lab_app.LabApp(host, out_root=self.root / f"out-{name}")
        return self._labs[name]


@pytest.fixture(scope="module")
def labs(tmp_path_factory) -> Labs:
    return Labs(tmp_path_factory.mktemp("app"))


def inputs(**overrides) -> dict:
    ex = example("coffee")
    args = dict(
        image=str(EXAMPLES / ex["file"]), task="Grounding", prompt=ex["prompt"], expression=ex["referring_expression"],
        gt_box=", ".join(map(str, ex["box"])), methods=ALL, keep_ratio=0.25, layer=2, alpha=0.5, theta=0.8,
        r_pivot=0.7, max_new_tokens=4, prior="auto",
    )
    args.update(overrides)
    return args


def quick(**overrides) -> dict:
    """A fast request (two methods, two new tokens, no prior calibration)."""
    return inputs(**{"methods": ["fastv", "d2pruner"], "max_new_tokens": 2, "prior": "uniform", **overrides})


def last_entry(lab) -> lab_app.Entry:
    return next(reversed(lab.cache.values()))


def heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


def hovered_values(fig) -> np.ndarray:
    """Token index → value, read back from the heatmaps' hover data."""
    custom = np.concatenate([np.asarray(t.customdata).reshape(-1, 4) for t in heatmaps(fig)])
    order = np.argsort(custom[:, 0])
    return custom[order, 0].astype(int), custom[order, 3]


# ---- every panel, two families


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-internvl"])
def test_every_panel_is_produced_with_the_right_shapes(labs, name):
    lab = labs.get(name)
    view = lab.run_analysis(**inputs())
    r = last_entry(lab).result
    num, n = r.num_candidates, r.n
    assert n == max(1, round(0.25 * num)) and r.prior_source.startswith("natural prior of " + name)
    shapes = sorted((g.rows, g.cols) for g in r.grids)
    prior_flat = np.concatenate([p.ravel() for p in r.prior])
    for fig, values in ((view.attention, r.attention_flat), (view.prior, prior_flat),
                        (view.relative, r.relative_flat)):
        assert sorted(np.asarray(t.z).shape for t in heatmaps(fig)) == shapes
        tokens, hovered = hovered_values(fig)
        assert tokens.tolist() == list(range(num))
        assert np.allclose(hovered, values, rtol=1e-6)
        assert len(fig.layout.images) == 1
        if len(r.grids) > 1:
            assert len(fig.layout.updatemenus[0].buttons) == 2  # tiles / thumbnail
    nodes = [t for t in view.graph.data if t.mode == "markers"]
    node_ids = np.concatenate([np.asarray(t.customdata)[:, 0] for t in nodes]).astype(int)
    assert sorted(node_ids.tolist()) == list(range(num))
    kept_nodes = np.concatenate([np.asarray(t.customdata)[:, 0] for t in nodes if t.name == "kept by D²Pruner"])
    assert sorted(kept_nodes.astype(int).tolist()) == r.methods["d2pruner"].kept.tolist()
    edge_traces = [t for t in view.graph.data if t.mode == "lines"]
    drawn = sum(sum(v is None for v in t.x) for t in edge_traces)
    crossing = sum(1 for i, j in r.graph_edges if any(g.offset <= i < g.offset + g.size and not
                   g.offset <= j < g.offset + g.size for g in r.grids if g.name in ("base", "thumbnail")))
    assert drawn + crossing >= len(r.graph_edges) > 0
    titles = [a.text for a in view.methods.layout.annotations]
    assert len(titles) == 1 + len(ALL) and f"{num:,} / {num:,} tokens" in titles[0]
    for title, method in zip(titles[1:], ALL, strict=True):
        assert viz.METHOD_LABELS[method] in title and f"{n:,} / {num:,} tokens" in title and "IoU" in title
    # answers and boxes, one row per method after the vanilla row
    assert [row[0] for row in view.answers] == ["Vanilla (unpruned)"] + [viz.METHOD_LABELS[m] for m in ALL]
    for row, method in zip(view.answers[1:], ALL, strict=True):
        assert row[1] == f"{n} / {num}" and row[2] == (r.methods[method].answer or "(empty)")
    # efficiency: fewer FLOPs and a smaller KV cache for every pruned method
    assert len(view.efficiency) == 1 + len(ALL)
    assert all(float(row[3].rstrip("×")) > 1 and float(row[5].rstrip("×")) > 1 for row in view.efficiency[1:])
    # downloads: the full JSON and the PNG
    json_path, png_path = view.files
    full = json.loads(Path(json_path).read_text())
    assert full["settings"]["n"] == n and len(full["tokens"]["attention"]) == num
    assert {m: len(d["kept"]) for m, d in full["methods"].items()} == dict.fromkeys(ALL, n)
    assert full["ground_truth"] == [325.0, 67.0, 423.0, 324.0]
    with Image.open(png_path) as png:
        assert png.format == "PNG" and png.width > 1000 and png.height > 700
    assert all("kept" not in d for d in view.summary["methods"].values()) and "tokens" not in view.summary
    assert view.summary["methods"]["fastv"]["num_kept"] == n
    assert f"N = {num}" in view.status and f"n = {n}" in view.status


def test_iou_against_known_boxes(labs):
    """Known boxes through the real rendering path: the table, the facet titles and the JSON agree."""
    lab = labs.get("tiny-llava")
    lab.run_analysis(**inputs())
    entry = last_entry(lab)
    r = entry.result
    boxes = {"fastv": (0.0, 0.0, 100.0, 100.0), "d2pruner": (50.0, 50.0, 150.0, 100.0)}
    methods = {m: dataclasses.replace(res, box=boxes.get(m)) for m, res in r.methods.items()}
    fake = dataclasses.replace(entry, result=dataclasses.replace(r, methods=methods, vanilla_box=(50, 50, 150, 150)))
    request = lab.make_request(**inputs(gt_box="50, 50, 150, 150"))
    view = lab_app.render_analysis(fake, request, colour="independent", log_colour=False, out_dir=lab._out_dir())
    table = {row[0]: row for row in view.answers}
    assert table["Vanilla (unpruned)"][4] == "1.00"
    assert table["FastV"][4] == f"{2500 / 17500:.2f}" and table["FastV"][5] == f"{2500 / 17500:.2f}"
    assert table["D²Pruner"][4] == "0.50" and table["D²Pruner"][3] == "50, 50, 150, 100"
    assert table["DART"][4] == "0.00" and table["DART"][3] == "–"
    titles = {a.text.split("<br>")[0]: a.text for a in view.methods.layout.annotations}
    assert "IoU 0.14" in titles["<b>FastV</b>"] and "IoU 0.50" in titles["<b>D²Pruner</b>"]
    full = json.loads(Path(view.files[0]).read_text())
    assert full["methods"]["fastv"]["iou_vs_gt"] == pytest.approx(1 / 7)
    assert full["methods"]["d2pruner"]["iou_vs_vanilla"] == pytest.approx(0.5)
    assert full["vanilla"]["iou_vs_gt"] == pytest.approx(1.0)
    box_shapes = [s for s in view.methods.layout.shapes if s.line.color == viz.METHOD_COLORS["fastv"]]
    assert [(s.x0, s.y0, s.x1, s.y1) for s in box_shapes] == [(0.0, 0.0, 100.0, 100.0)]


def test_shared_colour_scale_and_log(labs):
    lab = labs.get("tiny-llava")
    view = lab.run_analysis(**inputs(), colour_scale="shared", log_colour=True)
    ranges = {(f.layout.coloraxis.cmin, f.layout.coloraxis.cmax) for f in (view.attention, view.prior, view.relative)}
    assert len(ranges) == 1
    assert view.attention.layout.coloraxis.colorbar.ticktext[0].startswith("1e")
    assert "from cache" in view.status  # the same analysis, only redrawn


def test_examples_and_results_are_cached_lazily(labs, tmp_path):
    lab = labs.get("tiny-llava")
    fresh = lab_app.LabApp(lab.host, out_root=tmp_path)
    demo = lab_app.build_demo(fresh)
    assert isinstance(demo, gr.Blocks) and not fresh.cache  # nothing computed at start-up
    assert "analyze" in [fn.api_name for fn in demo.fns.values()]
    start = time.perf_counter()
    first = fresh.run_analysis(**quick(keep_ratio=0.3))
    assert "computed in" in first.status and len(fresh.cache) == 1
    second = fresh.run_analysis(**quick(keep_ratio=0.3))
    assert "from cache" in second.status and len(fresh.cache) == 1
    assert second.answers == first.answers
    fresh.run_analysis(**quick(keep_ratio=0.31))
    assert len(fresh.cache) == 2
    assert time.perf_counter() - start < 60


def test_sweep_iou_with_ground_truth_and_agreement_without(labs):
    lab = labs.get("tiny-llava")
    fig, rows = lab.sweep(**quick(), ratios="0.5, 25%, 0.5")
    assert [t.name for t in fig.data] == ["FastV", "D²Pruner", "Vanilla (unpruned)"]
    assert list(fig.data[0].x) == [50, 25] and "IoU" in fig.layout.yaxis.title.text
    assert len(rows) == 4 and {row[1] for row in rows} == {"0.5", "0.25"}
    cached = len(lab.cache)
    fig, rows = lab.sweep(**quick(task="Question"), ratios="0.5")
    assert len(lab.cache) == cached + 1
    assert [t.name for t in fig.data] == ["FastV", "D²Pruner"] and "agreement" in fig.layout.yaxis.title.text
    assert all(0.0 <= float(row[3]) <= 1.0 for row in rows)
    with pytest.raises(gr.Error, match="keep ratios must be numbers"):
        lab.sweep(**quick(), ratios="0.5, half")
    with pytest.raises(gr.Error, match=r"in \(0, 1\]"):
        lab.sweep(**quick(), ratios="0.5, 0")


def test_bias_explorer(labs):
    lab = labs.get("tiny-llava")
    status, nat, cf, blank, marginals = lab.explore_bias(2, "white", False)
    assert "natural prior of tiny-llava" in status and "content-free prior of tiny-llava" in status
    assert "Bottom third / top third" in status
    prior = lab.analyzer.get_prior(2, "natural")
    z = np.asarray(heatmaps(nat)[0].z)
    image_map = prior.maps["image"].numpy()
    assert z.shape == image_map.shape and np.allclose(z, image_map / image_map.mean(), rtol=1e-5)
    assert len(heatmaps(cf)) == 1 and len(heatmaps(blank)) == 1
    observed = lab.analyzer.observe(Image.new("RGB", (448, 448), "white"), prior.prompt, layer=2)
    assert np.allclose(np.asarray(heatmaps(blank)[0].customdata)[..., 2], observed.attention[0])
    assert [t.name for t in marginals.data][::2] == ["natural prior", "content-free prior", "blank image"]
    with pytest.raises(gr.Error, match="Layer K"):
        lab.explore_bias(7, "white", False)


# ---- model loading and Space wiring


def test_spaces_gpu_wraps_the_handlers_when_importable(monkeypatch, tmp_path):
    """With the `spaces` package importable every GPU handler goes through spaces.GPU; without it, `gpu` is a no-op."""
    import importlib.util
    import sys
    import types

    assert lab_app.gpu(len) is len  # no `spaces` here: a no-op
    wrapped = []

    def GPU(duration=None):  # the name of the real decorator
        def decorate(fn):
            wrapped.append(getattr(fn, "__name__", fn))
            return fn
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    spec = importlib.util.spec_from_file_location("app_with_spaces", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "app_with_spaces", module)
    spec.loader.exec_module(module)
    host = module.ModelHost(device="cpu")
    host.load("tiny-llava")
    module.build_demo(module.LabApp(host, out_root=tmp_path))
    assert {"analyze", "rerender", "sweep", "explore_bias", "switch_model"} <= set(wrapped)


def test_switch_model_keeps_one_model_in_memory(tmp_path):
    host = lab_app.ModelHost(device="cpu")
    host.load("tiny-llava")
    lab = lab_app.LabApp(host, out_root=tmp_path)
    old = weakref.ref(host.analyzer.model)
    banner, slider, info = lab.switch_model("tiny-qwen2.5-vl")
    assert host.analyzer.family == "qwen2_5_vl" and "tiny-qwen2.5-vl" in banner and "random weights" in banner
    assert slider["maximum"] == host.analyzer.num_layers - 1 and "qwen2_5_vl" in info
    assert old() is None  # the previous model was released


def test_unavailable_model_falls_back_fast_with_a_banner(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    host = lab_app.ModelHost(device="cpu")
    start = time.perf_counter()
    status = host.load("llava-hf/llava-1.5-7b-hf")
    assert time.perf_counter() - start < 15
    assert status.loaded == "tiny-llava" and "not in the local" in status.reason
    html = status.banner_html()
    assert "Could not load" in html and "llava-1.5-7b-hf" in html and "random weights" in html
    assert host.load("Qwen/Qwen2.5-VL-7B-Instruct").loaded == "tiny-qwen2.5-vl"
    assert host.load("OpenGVLab/InternVL3-1B-hf").loaded == "tiny-internvl"


def test_a_failing_load_falls_back_and_says_why(tmp_path):
    import d2pruner

    def loader(name, device=None):
        if name.startswith("tiny-"):
            return d2pruner.load(name, device=device)
        raise RuntimeError("CUDA out of memory. Tried to allocate 14.00 GiB")

    host = lab_app.ModelHost(device="cpu", loader=loader)
    status = host.load(str(tmp_path))  # a local folder: no Hub check, the loader itself fails
    assert status.loaded == "tiny-llava" and status.reason == "not enough memory to load it"
    assert host.analyzer.family == "llava"


def test_device_falls_back_to_cpu_when_cuda_is_missing():
    import torch

    host = lab_app.ModelHost(device="cuda")
    if torch.cuda.is_available():
        assert host.device == "cuda" and host.device_note is None
    else:
        assert host.device == "cpu" and "not available" in host.device_note


# ---- bad input: a clear message, and the next request works


def test_raw_image_payloads_are_accepted(tmp_path):
    """The events run with preprocess=False: the handler gets Gradio's raw file payload."""
    path = _jpeg(tmp_path / "x.jpg")
    assert lab_app.load_image({"path": str(path), "meta": {"_type": "gradio.FileData"}}).image.size == (96, 64)
    with pytest.raises(lab_app.InputError, match="No image"):
        lab_app.load_image({"path": None})


def _jpeg(path: Path, size=(96, 64), **save) -> Path:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2, : size[0] // 3] = (250, 20, 20)
    Image.fromarray(arr).save(path, format="JPEG", **save)
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.txt").write_text("hello, not an image")
    (d / "random.png").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "empty.jpg").write_bytes(b"")
    data = _jpeg(d / "full.jpg", (200, 150)).read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return {"text": d / "notes.txt", "random": d / "random.png", "empty": d / "empty.jpg",
            "truncated": d / "truncated.jpg", "bomb_png": bomb_png(d / "bomb.png")}


@pytest.mark.parametrize(
    ("case", "overrides", "message"),
    [
        ("no image", dict(image=None), "No image"),
        ("text file", "text", "not an image"),
        ("random bytes", "random", "not an image"),
        ("0-byte file", "empty", r"empty \(0 bytes\)"),
        ("truncated JPEG", "truncated", "damaged or truncated"),
        ("20000x20000 PNG", "bomb_png", "decompression-bomb"),
        ("empty prompt", dict(task="Question", prompt="   \n"), "prompt is empty"),
        ("empty expression", dict(expression=""), "referring expression is empty"),
        ("keep ratio 0", dict(keep_ratio=0), "Keep ratio 0 would remove every visual token"),
        ("keep ratio < 0", dict(keep_ratio=-0.5), r"Keep ratio must be in \[0, 1\]"),
        ("keep ratio > 1", dict(keep_ratio=1.5), r"Keep ratio must be in \[0, 1\]"),
        ("alpha > 1", dict(alpha=1.5), r"α \(weight of semantic similarity"),
        ("theta < 0", dict(theta=-0.1), r"θ \(edge threshold"),
        ("r_pivot nan", dict(r_pivot=float("nan")), "r_pivot"),
        ("layer out of range", dict(layer=9), r"Layer K .* must be in \[1, 3\]"),
        ("no methods", dict(methods=[]), "at least one pruning method"),
        ("max new tokens 0", dict(max_new_tokens=0), "Max new tokens"),
        ("box with 3 numbers", dict(gt_box="1, 2, 3"), "four numbers"),
        ("reversed box", dict(gt_box="100, 100, 50, 50"), "x2 > x1"),
        ("box outside", dict(gt_box="5000, 5000, 6000, 6000"), "outside"),
    ],
)
def test_bad_input_gives_a_clear_message_and_the_app_keeps_serving(labs, bad_files, case, overrides, message):
    lab = labs.get("tiny-llava")
    if isinstance(overrides, str):
        overrides = dict(image=str(bad_files[overrides]))
    with pytest.raises(gr.Error, match=message):
        lab.run_analysis(**quick(**overrides))
    ratio = 0.2 + 0.01 * (hash(case) % 30)  # a fresh analysis (not from the cache)
    view = lab.run_analysis(**quick(keep_ratio=ratio))
    assert "computed in" in view.status or "from cache" in view.status
    assert len(view.files) == 2


def _note(view, text: str) -> bool:
    return text in view.status


def test_huge_jpeg_is_decoded_at_reduced_resolution(labs, tmp_path):
    lab = labs.get("tiny-llava")
    path = bomb_jpeg(tmp_path / "huge.jpg")
    view = lab.run_analysis(**quick(image=str(path), gt_box="8000, 8000, 12000, 12000"))
    r = last_entry(lab).result
    assert r.image_size == (2500, 2500) and _note(view, "decompression-bomb limit")
    assert lab.make_request(**quick(image=str(path), gt_box="8000, 8000, 12000, 12000")).gt_box == (
        1000.0, 1000.0, 1500.0, 1500.0)


def test_animated_gif_uses_the_first_frame(labs, tmp_path):
    lab = labs.get("tiny-llava")
    frames = [Image.new("RGB", (96, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0)
    loaded = lab_app.load_image(path)
    assert loaded.image.getpixel((10, 10))[0] > 200 and loaded.image.getpixel((10, 10))[1] < 50
    view = lab.run_analysis(**quick(image=str(path), gt_box=""))
    assert _note(view, "animated image with 3 frames: the first frame is analysed")


def test_exif_rotated_photo_is_turned_upright(labs, tmp_path):
    lab = labs.get("tiny-llava")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _jpeg(tmp_path / "rotated.jpg", (120, 80), exif=exif.tobytes())
    loaded = lab_app.load_image(path)
    assert loaded.image.size == (80, 120) and loaded.original_size == (80, 120) and loaded.scale == 1.0
    assert loaded.image.getpixel((70, 5))[0] > 200  # the red top-left block is now at the top right
    view = lab.run_analysis(**quick(image=str(path), gt_box="0, 0, 80, 60"))
    assert last_entry(lab).result.image_size == (80, 120) and _note(view, "EXIF orientation")


def test_very_long_prompt_is_truncated_with_a_note(labs):
    lab = labs.get("tiny-llava")
    long = ("what is on the table " * 500)[:10_000]
    with pytest.warns(UserWarning, match="10,000 characters"):
        view = lab.run_analysis(**quick(task="Question", prompt=long, gt_box=""))
    r = last_entry(lab).result
    assert len(r.prompt) <= lab_app.MAX_PROMPT_CHARS and r.prompt.startswith("what is on the table")
    assert _note(view, "only the first")


def test_keep_ratio_one_keeps_every_token(labs):
    lab = labs.get("tiny-llava")
    view = lab.run_analysis(**quick(keep_ratio=1))
    r = last_entry(lab).result
    assert r.n == r.num_candidates and all(m.num_kept == r.num_candidates for m in r.methods.values())
    assert all(m.answer == r.vanilla_answer for m in r.methods.values())
    assert _note(view, "keep ratio 1 keeps every visual token")


# ---- pure helpers


def test_parse_box_and_ratios_and_agreement():
    assert lab_app.parse_box(" [10, 20.5, 30, 40] ", (100, 100)) == (10.0, 20.5, 30.0, 40.0)
    assert lab_app.parse_box("10 20 300 40", (100, 100)) == (10.0, 20.0, 100.0, 40.0)  # clipped
    assert lab_app.parse_box("10, 20, 30, 40", (100, 100), scale=0.5) == (5.0, 10.0, 15.0, 20.0)
    assert lab_app.parse_box("", (100, 100)) is None
    with pytest.raises(lab_app.InputError):
        lab_app.parse_box("10, 20, 30, 40 px", (100, 100))
    assert lab_app.parse_ratios("0.1, 75%, 0.5 0.5") == [0.75, 0.5, 0.1]
    with pytest.raises(lab_app.InputError, match="At most"):
        lab_app.parse_ratios(", ".join(str(i / 10) for i in range(1, 11)))
    assert lab_app.word_f1("a red cup", "the red cup") == pytest.approx(2 / 3)
    assert lab_app.word_f1("Red cup!", "red CUP") == 1.0 and lab_app.word_f1("", "x") == 0.0
    text, notes = lab_app.clean_prompt("  hi\x00 there \x07 ")
    assert text == "hi there" and notes == []
