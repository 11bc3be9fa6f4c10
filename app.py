"""D²Pruner lab — the Gradio app: which visual tokens each pruning method keeps inside a multimodal LLM, and why.

    python app.py [--model NAME] [--device cuda|cpu] [--port N] [--host ADDR] [--share]

The app is UI only (after hysts' gradio-sam-prompter): constants → the CLI (answers ``--help`` before Gradio or torch
is imported) → the model host (``d2pruner.serving``: every request names its model; uploads checked; bounds) → one
handler per event, each taking its event's inputs as ONE typed object → the Blocks layout → the wiring → launch.
Scores, tables, exports, steps and figures come from the package (``d2pruner.analysis.summary / scoring / export /
steps``, ``d2pruner.viz``), so a script gets exactly the numbers shown here. Importing this module imports neither
torch nor transformers; they come with the first model.

Hosting (a public Space serves many visitors on one process): the model is part of each request, files are read only
from the upload cache and the bundled examples, every heavy call goes through the queue (no open ``/run`` route), and
every request is bounded (pixels, files, bytes, prompt length, new tokens); results are cached per analysis and
re-rendered without re-running the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import inspect
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

# ---------------------------------------------------------------------------------------------------- constants

APP_DIR = Path(__file__).resolve().parent
UI_DIR = APP_DIR / "ui"
DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
#: the methods offered, in display order (``d2pruner-nospatial`` is an ablation of the package only)
METHODS = ("fastv", "dart", "dart-official", "divprune", "mmr", "d2pruner", "d2pruner-di")
DEFAULT_METHODS = ("fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di")
TASKS = ("Grounding", "Question")
COLOUR_CHOICES = (("per panel", "independent"), ("shared", "shared"))
BLANK_COLOURS = {"grey": (128, 128, 128), "white": (255, 255, 255), "black": (0, 0, 0)}
PRESETS = ("custom", "paper settings for this task")
DEFAULT_SWEEP = "0.75, 0.5, 0.25, 0.1"
PHOTO_ROUTE = "lab/photo"
EXAMPLE_ROUTE = "lab/example"
MEAN_HEADS = "mean over heads"
FACETS = 1 + len(METHODS)  # vanilla + every offered method


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="D²Pruner lab: visual-token pruning inside multimodal LLMs, side by side.",
        epilog="Environment: D2PRUNER_MODEL (default model), D2PRUNER_ALLOWED_MODELS (comma-separated ids or "
               "patterns a visitor may load; default the shipped checkpoints and tiny models), D2PRUNER_MEMORY_GB "
               "(memory for models), D2PRUNER_QUEUE_SIZE, D2PRUNER_CONCURRENCY, D2PRUNER_UPLOAD_BYTES, "
               "D2PRUNER_IMAGE_PIXELS (see d2pruner/serving/limits.py).")
    parser.add_argument("--model", default=os.environ.get("D2PRUNER_MODEL", DEFAULT_MODEL),
                        help=f"hub id, local checkpoint folder or tiny-* name (default {DEFAULT_MODEL})")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: CUDA when available")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--host", default=None, help="address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # `python app.py --help` answers here, before Gradio and torch are imported
    # this app's own upload cache (its janitor deletes old files there; never another app's)
    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(tempfile.gettempdir(), "d2pruner-lab-gradio"))

try:  # Hugging Face ZeroGPU: allocate a GPU for the decorated calls. Imported before torch, as `spaces` asks.
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:  # anywhere else: a no-op

    def gpu(fn):
        return fn


import gradio as gr
import numpy as np
from gradio.components.plot import PlotData
from PIL import Image

from d2pruner import viz
from d2pruner.analysis import export, labels, scoring, steps, summary
from d2pruner.resources import EXAMPLES_DIR
from d2pruner.serving import catalog, requests, uploads
from d2pruner.serving.host import ModelHost, Served
from d2pruner.serving.limits import Limits
from d2pruner.serving.store import Janitor, LRUCache, PhotoStore

log = logging.getLogger("d2pruner.app")


# ---------------------------------------------------------------------------------------------------- typed inputs


@dataclasses.dataclass(frozen=True)
class AnalysisInputs:
    """The inputs of one analysis, as the components (or an API client) send them."""

    model: object
    image: object
    task: object = "Grounding"
    prompt: object = ""
    expression: object = ""
    gt_box: object = ""
    methods: object = DEFAULT_METHODS
    keep_ratio: object = 0.25
    layer: object = 2
    alpha: object = 0.5
    theta: object = 0.8
    r_pivot: object = 0.7
    max_new_tokens: object = 24
    prior: object = "auto"
    colour_scale: object = "independent"
    log_colour: object = False


@dataclasses.dataclass(frozen=True)
class SweepInputs(AnalysisInputs):
    ratios: object = DEFAULT_SWEEP


@dataclasses.dataclass(frozen=True)
class BiasInputs:
    model: object
    layer: object = 2
    head: object = MEAN_HEADS
    blank_colour: object = "grey"
    log_colour: object = False


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    model: object


@dataclasses.dataclass(frozen=True)
class DisplayInputs:
    shown: object
    colour_scale: object = "independent"
    log_colour: object = False


@dataclasses.dataclass(frozen=True)
class StepInputs:
    shown: object
    method: object = "d2pruner"
    step: object = 1


@dataclasses.dataclass(frozen=True)
class LayerInputs:
    shown: object
    layer: object = 1
    head: object = MEAN_HEADS
    log_colour: object = False


def typed(handler: Callable, cls: type, *, progress: bool = False) -> Callable:
    """An event function whose parameters are ``cls``'s fields (Gradio passes the event's components in that order
    and names the API parameters after them) and which calls ``handler(cls(...))`` — one typed object per event."""
    names = [f.name for f in dataclasses.fields(cls)]

    def event(*args, **kwargs):
        tracker = kwargs.pop("progress", None)
        values = dict(zip(names, args, strict=False))
        values.update(kwargs)
        inputs = cls(**values)
        return handler(inputs, tracker) if progress else handler(inputs)

    params = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty)
              for f in dataclasses.fields(cls)]
    if progress:
        params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    event.__signature__ = inspect.Signature(params)
    event.__name__ = getattr(handler, "__name__", "event")
    event.__doc__ = handler.__doc__
    return event


# ---------------------------------------------------------------------------------------------------- results


@dataclasses.dataclass
class Entry:
    """A cached analysis: the result, what served it, and its renders (built once, re-used by every redraw)."""

    key: str
    result: object
    served_name: str
    requested: str
    reason: str | None
    random_weights: bool
    device: str
    arch: object
    bytes_per_value: int
    grounding: bool
    text: str
    settings: dict
    image: uploads.LoadedImage
    photo_token: str
    seconds: float
    renders: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)

    @property
    def photo_url(self) -> str:
        return f"{PHOTO_ROUTE}/{self.photo_token}"

    @property
    def geometry(self) -> viz.TokenGeometry:
        return viz.TokenGeometry.of(self.result)

    def summary(self, gt_box) -> summary.Summary:
        key = ("summary", gt_box)
        if key not in self.renders:
            self.renders[key] = summary.summarize(
                self.result, arch=self.arch, bytes_per_value=self.bytes_per_value, gt_box=gt_box,
                grounding=self.grounding, random_weights=self.random_weights)
        return self.renders[key]


def _plot(fig) -> PlotData:
    return PlotData(type="plotly", plot=fig.to_json(validate=False))


def _cached(entry: Entry, key, build: Callable[[], object]):
    if key not in entry.renders:
        entry.renders[key] = build()
    return entry.renders[key]


def short_name(model: str) -> str:
    """A model id without its owner or folder (the part after the last "/"): what fits a panel's title."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def model_note(entry: Entry, *, short: bool = False) -> str:
    """How tables (the full id) and figure titles (``short``: :func:`short_name`) name the model that produced
    them."""
    tag = " (random weights)" if entry.random_weights else ""
    return f"{short_name(entry.served_name) if short else entry.served_name}{tag}"


# ---------------------------------------------------------------------------------------------------- rendering


def heatmap_figures(entry: Entry, *, colour: str, log_colour: bool) -> tuple[PlotData, PlotData, PlotData]:
    """Raw attention, prior and relative attention at layer K−1 (cached per colour option)."""

    def build():
        r, geo = entry.result, entry.geometry
        att = r.attention_flat.astype(np.float64)
        prior = np.concatenate([np.ravel(p) for p in r.prior]).astype(np.float64)
        rel = r.relative_flat.astype(np.float64)
        k = r.layer
        scale, zr = 1.0, (None, None, None)
        if colour == "shared":
            scale = float(np.mean(prior))
            shared = viz.value_range(att, prior, rel * scale, log=log_colour)
            zr = (shared, shared, shared)
        prior_title = "uniform" if r.prior_source == "uniform" else r.prior_source.split(",")[0]
        prior_title = prior_title.replace(entry.served_name, short_name(entry.served_name))
        sub = f"{model_note(entry, short=True)} · layer K−1 = {k - 1}"
        common = dict(image_source=entry.photo_url, log=log_colour, height=380)
        figs = (
            viz.token_heatmap(None, geo, att, title="Raw attention", subtitle=sub, value_label="attention",
                              zrange=zr[0], panel="attention", **common),
            viz.token_heatmap(None, geo, prior, title="Positional-bias prior",
                              subtitle=prior_title, value_label="prior",
                              zrange=zr[1], panel="prior", **common),
            viz.token_heatmap(None, geo, rel, title="Relative attention = attention ÷ prior",
                              subtitle=sub, value_label="relative attention",
                              colorscale=viz.RELATIVE_COLORSCALE, value_scale=scale, zrange=zr[2],
                              panel="relative", **common),
        )
        return tuple(_plot(f) for f in figs)

    return _cached(entry, ("heatmaps", colour, bool(log_colour)), build)


def graph_plot(entry: Entry) -> PlotData:
    def build():
        r = entry.result
        kept = r.methods["d2pruner"].kept if "d2pruner" in r.methods else None
        gp = r.graph_params
        fig = viz.graph_figure(None, entry.geometry, r.graph_edges, r.graph_edge_kinds,
                               title=f"Hybrid graph · α = {gp['alpha']:g}, θ = {gp['theta']:g}",
                               subtitle=f"{model_note(entry, short=True)} · red: kept by D²Pruner"
                               if kept is not None else model_note(entry, short=True),
                               highlight=kept, highlight_label="kept by D²Pruner", image_source=entry.photo_url,
                               height=440, max_edges=1500)
        return _plot(fig)

    return _cached(entry, ("graph",), build)


def panels_of(entry: Entry) -> list[viz.Panel]:
    r = entry.result
    out = [viz.Panel(labels.label(labels.VANILLA), viz.METHOD_COLORS[labels.VANILLA], None, r.vanilla_box,
                     labels.VANILLA)]
    out += [viz.Panel(labels.label(m), viz.method_color(m), res.kept, res.box, m) for m, res in r.methods.items()]
    return out


def facet_plots(entry: Entry, gt_box) -> list[PlotData]:
    def build():
        r = entry.result
        return [_plot(viz.facet_figure(None, entry.geometry, p, gt_box=gt_box, reference_box=r.vanilla_box,
                                       grounding=entry.grounding, image_source=entry.photo_url,
                                       model=model_note(entry, short=True)))
                for p in panels_of(entry)]

    return _cached(entry, ("facets", gt_box), build)


def status_markdown(entry: Entry, seconds: float, cached: bool) -> str:
    r = entry.result
    grids = ", ".join(f"{g.name} {g.rows}×{g.cols}" for g in r.grids)
    text = html.escape(entry.text[:120]) + ("…" if len(entry.text) > 120 else "")
    lines = [
        f"**{r.model}** ({r.family}, {entry.device}) · **N = {r.num_candidates}** visual tokens ({grids}) · keep "
        f"**n = {r.n}** ({r.n / r.num_candidates:.0%}) · pruned from layer **K = {r.layer}**, ranked by layer K−1 "
        f"= {r.layer - 1} attention · {'grounding' if entry.grounding else 'question'}: *{text}*",
        f"prior: {html.escape(r.prior_source)} · vision tower {r.vision_seconds * 1e3:.0f} ms · vanilla prefill "
        f"{r.vanilla_prefill_seconds * 1e3:.0f} ms · "
        + (f"from cache, shown in {seconds * 1e3:.0f} ms" if cached else f"computed in {entry.seconds:.1f} s"),
    ]
    if entry.reason:
        lines.insert(0, f"<span class='warn-text'>Requested **{html.escape(entry.requested)}**, which cannot run "
                        f"here ({html.escape(entry.reason)}): these results are from **{entry.served_name}**, a tiny "
                        "model with random weights.</span>")
    notes = list(dict.fromkeys([*entry.image.notes, *r.notes]))
    if notes:
        lines.append("<span class='small-note'>Notes: " + " · ".join(html.escape(n) for n in notes) + "</span>")
    return "\n\n".join(lines)


def record_of(entry: Entry, gt_box) -> dict:
    return _cached(entry, ("record", gt_box), lambda: export.analysis_record(
        entry.summary(gt_box), settings=entry.settings, device=entry.device, requested_model=entry.requested,
        versions={"d2pruner": _version(), "gradio": gr.__version__},
        image={"uploaded_size": list(entry.image.original_size), "sha1_16": entry.image.digest}))


def _version() -> str:
    from d2pruner.compat import VERSION

    return VERSION


def stem_of(entry: Entry) -> str:
    r = entry.result
    model = re.sub(r"[^A-Za-z0-9.]+", "-", Path(r.model).name if Path(r.model).is_absolute() else r.model)
    return f"d2pruner-{model.strip('-')}-{entry.image.digest[:8]}-keep{round(r.keep_ratio * 100)}-K{r.layer}"


def result_files(entry: Entry, gt_box, out_dir: Path) -> list[str]:
    """The JSON with every number and the PNG of every panel — built once per (analysis, ground truth)."""
    key = gt_box
    found = entry.files.get(key)
    if found and all(Path(p).is_file() for p in found):
        return found
    record = record_of(entry, gt_box)
    folder = Path(tempfile.mkdtemp(dir=out_dir))
    json_path = export.write_json(record, folder / f"{stem_of(entry)}.json")
    r, summ = entry.result, entry.summary(gt_box)
    att, prior, rel = r.attention_flat, np.concatenate([np.ravel(p) for p in r.prior]), r.relative_flat
    heat = [(f"layer {r.layer - 1} attention", att, viz.ATTENTION_COLORSCALE, None, False, "attention"),
            ("positional-bias prior", prior, viz.ATTENTION_COLORSCALE, None, False, "prior"),
            ("relative attention", rel, viz.RELATIVE_COLORSCALE, None, False, "attention / prior")]
    header = [f"model {r.model} ({r.family}) · N = {r.num_candidates} visual tokens · keep n = {r.n}, pruned from "
              f"layer K = {r.layer} by layer K−1 = {r.layer - 1} attention · prior: {r.prior_source}",
              f"{'grounding' if entry.grounding else 'question'}: {entry.text[:300]}"]
    if entry.reason:
        header.insert(0, f"requested {entry.requested}: {entry.reason}; results from {entry.served_name}")
    footer = []
    for name, a in summ.answers.items():
        e = summ.efficiency[name]
        iou = f" · IoU {a.vs_ground_truth.text()}" if entry.grounding and gt_box is not None else ""
        footer.append(f"{labels.label(name)}: {e.kept_tokens}/{e.visual_tokens} tokens · "
                      f"{summary.si(e.flops['paper'], 'FLOPs')} · KV {summary.byte_text(e.kv_bytes['paper'])}{iou} · "
                      f"answer: {(a.answer or '(empty)')[:160]}")
    kept = r.methods["d2pruner"].kept if "d2pruner" in r.methods else None
    png = viz.report_png(entry.image.image, entry.geometry, heatmaps=heat, edges=r.graph_edges,
                         kinds=r.graph_edge_kinds, panels=panels_of(entry), gt_box=gt_box,
                         reference_box=r.vanilla_box, header=header, footer=footer, highlight=kept,
                         warning=export.RANDOM_WEIGHTS_WARNING if entry.random_weights else None,
                         graph_title=f"graph α={r.graph_params['alpha']:g} θ={r.graph_params['theta']:g}")
    png_path = folder / f"{stem_of(entry)}.png"
    png.save(png_path, compress_level=1)  # fast; the report is photos and flat colours
    entry.files[key] = [str(json_path), str(png_path)]
    return entry.files[key]


def table_label(what: str, entry: Entry) -> str:
    return f"{what} · {model_note(entry)}"


# ---------------------------------------------------------------------------------------------------- html bits


def banner_html(served: Served | None, requested: str, device: str, note: str | None = None) -> str:
    """The model banner of one session (what its requests run on)."""
    if served is None:
        return f"<div class='banner warn' role='status'>{html.escape(note or 'No model.', quote=False)}</div>"
    if served.reason:
        return (f"<div class='banner warn' role='status'><b>Could not load <code>{html.escape(requested)}</code></b>: "
                f"{html.escape(served.reason)}.<br>Your requests run on <b><code>{served.name}</code></b> instead — a "
                "tiny model with <b>random weights</b>: it shows the mechanics (token grids, attention capture, "
                "priors, pruning inside the model, boxes), <b>not real behaviour</b>; its answers are gibberish.</div>")
    if served.random_weights:
        return (f"<div class='banner warn' role='status'><b><code>{served.name}</code></b> on {device}: a tiny model "
                "with random weights — mechanics, not real behaviour.</div>")
    return (f"<div class='banner ok' role='status'><b><code>{html.escape(served.name)}</code></b> on {device} "
            f"(loaded in {served.model.seconds:.0f} s).</div>")


def model_markdown(served: Served | None, host: ModelHost) -> str:
    if served is None:
        return ""
    a = served.analyzer
    params = sum(p.numel() for p in a.model.parameters())
    note = f" · {host.device_note}" if host.device_note else ""
    return (f"<span class='small-note'>requests run on <b>{html.escape(a.name)}</b> · family <b>{a.family}</b> · "
            f"{a.num_layers} decoder layers · {params / 1e6:,.1f} M parameters · {host.device} · dtype "
            f"{str(a.model.dtype).replace('torch.', '')}{note}</span>")


def error_html(message: str) -> str:
    return f"<div class='error-box' role='alert'><b>Cannot run this:</b> {html.escape(message, quote=False)}</div>"


GUIDE = """
<div class="guide"><h2>How to use the lab</h2><ol>
<li><b>Pick an example</b> (a photo with a referring expression and a hand-placed box) or upload an image.</li>
<li>Choose <b>Grounding</b> (the model draws a box around the expression) or <b>Question</b>.</li>
<li>Press <b>Analyze</b>: the unpruned model and every selected method run on the same inputs.</li>
<li><b>Hover or click a token</b> in any panel: it is highlighted everywhere, and the inspector says what each method
did with it. Then replay a method's choices <b>step by step</b>, or look at the attention <b>at every layer</b>.</li>
</ol><p>A tiny model (random weights) shows the mechanics on any machine; a real checkpoint shows real behaviour.</p>
</div>"""

METHOD_GUIDE = "\n".join(
    f"* **{info.label}** — {info.summary} *{info.paper}.*" for name, info in labels.METHOD_INFO.items()
    if name in METHODS
)

ABOUT = f"""
### How to read the panels
* **Raw attention** — attention of the last prompt token to every visual token at layer K−1 (mean over heads), as the
  model computed it: the ranking FastV uses. Tokens are dropped from layer K on.
* **Positional-bias prior** — the mean of that attention over many natural photos (calibrated once per model and layer
  from the bundled photographs, then cached): what each *position* draws whatever the image shows.
* **Relative attention** — attention ÷ prior (D²Pruner eq. 3): what the prompt attends to *beyond* the positional habit.
* **Hybrid graph** — D²Pruner joins tokens i ≠ j when α·Ŝ_sem + (1−α)·S_spat > θ: solid blue edges join grid
  neighbours that are also similar, dotted pink edges join distant tokens by similarity alone (only when α > θ).
* **Kept tokens** — one panel per method: pruned tokens shaded, its box (its colour), the vanilla box (dotted) and the
  ground truth (dashed green); the title gives the kept count and the IoU, or *no box* when the answer has none
  (never counted as 0). Grey strips: parts of the image the model never sees (LLaVA-1.5's centre crop).
* **Efficiency** — analytic prefill FLOPs and KV cache (the paper's convention; the JSON also has the exact one) and
  the measured prefill time of each pruned forward pass.

### The methods
{METHOD_GUIDE}

Multi-grid models have buttons in the panels: LLaVA-NeXT's *high-res grid* / *base grid*, InternVL's *tiles* /
*thumbnail*. Boxes and regions are in pixels of the uploaded image (LLaVA-1.5: the model sees the centre crop).
"""


# ---------------------------------------------------------------------------------------------------- handlers


class LabApp:
    """The event handlers. Per-request state lives in the typed inputs and the session's ``shown`` state (the key
    of the analysis on screen); the shared caches are bounded."""

    def __init__(self, host: ModelHost, *, default_model: str, limits: Limits | None = None,
                 upload_roots: Sequence[str | os.PathLike] | None = None, out_dir: str | os.PathLike | None = None,
                 photos: PhotoStore | None = None):
        self.host = host
        self.default_model = default_model
        self.limits = limits or Limits()
        self.upload_roots = [str(r) for r in (upload_roots or [_gradio_upload_dir(), EXAMPLES_DIR])]
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="d2pruner-lab-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.photos = photos or PhotoStore()
        self.results = LRUCache(self.limits.result_entries, self.limits.result_bytes)
        self.queue_length: Callable[[], int] = lambda: 0

    # ---- shared helpers
    def _entry(self, key) -> Entry:
        entry = self.results.get(key) if isinstance(key, str) else None
        if entry is None:
            raise requests.UserError("These results are no longer cached; press Analyze to compute them again.")
        return entry

    def compute(self, inp: AnalysisInputs, keep_ratio=None, progress=None) -> tuple[Entry, object, bool]:
        """The cached analysis of ``inp`` (at ``keep_ratio``), computed on the requested model when missing."""
        grounding = requests.check_task(inp.task)
        text = inp.expression if grounding else inp.prompt
        methods = requests.methods_value(inp.methods)
        params = requests.method_params(methods, {"alpha": inp.alpha, "theta": inp.theta, "r_pivot": inp.r_pivot})
        ratio = requests.as_float(inp.keep_ratio if keep_ratio is None else keep_ratio)
        layer, max_new = requests.as_int(inp.layer), requests.as_int(inp.max_new_tokens)
        name = self.host.check(inp.model)
        image = uploads.load_upload(inp.image, self.upload_roots, self.limits)
        gt = requests.parse_box(inp.gt_box, image.image.size, image.scale)
        key = json.dumps([name, image.digest, grounding, text, methods, ratio, layer, sorted(params.items()), max_new,
                          inp.prior], default=str)
        entry = self.results.get(key)
        if entry is not None:
            return entry, gt if grounding else None, True

        def calibrating(done: int, total: int, message: str) -> None:
            if progress is not None:
                progress((done, total), desc=f"calibrating the prior: {message}")

        with self.host.use(name, progress=(lambda m: progress(0.05, desc=m)) if progress else None) as served:
            analyzer = served.analyzer
            if progress is not None:
                progress(0.1, desc=f"{served.name}: the unpruned model and the methods …")
            start = time.perf_counter()
            result = analyzer.analyze(image.image, text, methods=methods, keep_ratio=ratio, layer=layer,
                                      grounding=grounding, max_new_tokens=max_new, prior=inp.prior, steps=True,
                                      heads=True, progress=calibrating, **params)
            from d2pruner.efficiency import arch_from_config

            entry = Entry(
                key=key, result=result, served_name=served.name, requested=name, reason=served.reason,
                random_weights=served.random_weights, device=served.model.device,
                arch=arch_from_config(analyzer.model.config),
                bytes_per_value=int(getattr(analyzer.model.dtype, "itemsize", 2) or 2), grounding=grounding,
                text=text, settings={"task": "grounding" if grounding else "question", "max_new_tokens": max_new,
                                     "prior": inp.prior, "methods": list(result.methods), **params},
                image=image, photo_token=self.photos.add(viz.photo_jpeg(image.image)),
                seconds=time.perf_counter() - start)
        self.results.put(key, entry)
        return entry, gt if grounding else None, False

    def _analysis_outputs(self, entry: Entry, gt, colour, log_colour, seconds, cached) -> dict:
        colour = requests.check_choice("colour_scale", colour, [v for _, v in COLOUR_CHOICES])
        log_colour = requests.check_bool("log_colour", log_colour)
        summ = entry.summary(gt)
        record = record_of(entry, gt)
        facets = facet_plots(entry, gt)
        return {
            "status": status_markdown(entry, seconds, cached),
            "heatmaps": heatmap_figures(entry, colour=colour, log_colour=log_colour),
            "graph": graph_plot(entry),
            "facets": facets,
            "answers": summ.answer_rows(),
            "efficiency": summ.efficiency_rows(),
            "summary": export.summary_record(record),
        }

    # ---- /analyze (the API: errors are raised)
    def analyze_api(self, inp: AnalysisInputs, progress=None) -> tuple:
        """Run the unpruned model and every selected method on one image; return every panel, the tables, the
        downloads and all numbers."""
        start = time.perf_counter()
        try:
            entry, gt, cached = self.compute(inp, progress=progress)
            out = self._analysis_outputs(entry, gt, inp.colour_scale, inp.log_colour, time.perf_counter() - start,
                                         cached)
            files = result_files(entry, gt, self.out_dir)
        except Exception as error:
            message, _ = requests.user_message(error, "analysis")
            raise gr.Error(message, title="Cannot analyse", print_exception=False) from None
        facets = out["facets"] + [None] * (FACETS - len(out["facets"]))
        return (out["status"], *out["heatmaps"], out["graph"], *facets, out["answers"], out["efficiency"], files,
                out["summary"])

    # ---- the Analyze button (the UI: errors are shown beside the controls, results stay)
    def analyze_ui(self, inp: AnalysisInputs, progress=None) -> tuple:
        start = time.perf_counter()
        try:
            entry, gt, cached = self.compute(inp, progress=progress)
            out = self._analysis_outputs(entry, gt, inp.colour_scale, inp.log_colour, time.perf_counter() - start,
                                         cached)
        except Exception as error:
            message, _ = requests.user_message(error, "analysis")
            return (error_html(message), *[gr.skip()] * (UI_ANALYSIS_OUTPUTS - 1))
        r = entry.result
        methods = [m for m in r.methods if r.methods[m].steps]
        method = "d2pruner" if "d2pruner" in methods else (methods[0] if methods else None)
        n_steps = len(r.methods[method].steps) if method else 1
        facet_updates = [gr.update(value=f, visible=True) for f in out["facets"]]
        facet_updates += [gr.update(value=None, visible=False)] * (FACETS - len(facet_updates))
        num_layers = int(r.layer_attention.shape[0]) if r.layer_attention is not None else r.layer
        heads = int(r.layer_attention_heads.shape[1]) if r.layer_attention_heads is not None else 0
        return (
            "",  # the error box
            {"key": entry.key, "gt": gt},
            gr.update(visible=False),  # the guide
            gr.update(visible=True),  # the results
            out["status"],
            *out["heatmaps"], out["graph"], *facet_updates,
            gr.update(value=out["answers"], label=table_label("Answers and boxes", entry)),
            gr.update(value=out["efficiency"], label=table_label("Efficiency · analytic prefill FLOPs and KV cache "
                                                                 "(paper convention) · measured prefill", entry)),
            out["summary"],
            gr.update(choices=[(labels.label(m), m) for m in methods], value=method),
            gr.update(maximum=max(1, n_steps), value=1),
            gr.update(maximum=max(1, num_layers - 1), value=r.layer - 1),
            gr.update(choices=[MEAN_HEADS, *[f"head {h}" for h in range(heads)]], value=MEAN_HEADS),
            f"{time.time():.6f}",  # the results stamp (page script: "results arrived")
        )

    def files_ui(self, inp: DisplayInputs) -> list[str] | object:
        """The downloads of the analysis on screen (after the panels: they are not needed to look)."""
        try:
            shown = inp.shown or {}
            entry = self._entry(shown.get("key"))
            return result_files(entry, shown.get("gt"), self.out_dir)
        except Exception as error:
            requests.user_message(error, "downloads")
            return gr.skip()

    def rerender(self, inp: DisplayInputs) -> tuple:
        """Redraw the heatmaps in another colour scale (from the cache: no model runs)."""
        try:
            entry = self._entry((inp.shown or {}).get("key"))
            colour = requests.check_choice("colour_scale", inp.colour_scale, [v for _, v in COLOUR_CHOICES])
            return heatmap_figures(entry, colour=colour, log_colour=requests.check_bool("log_colour", inp.log_colour))
        except Exception:
            return (gr.skip(),) * 3

    # ---- step by step
    def step_view(self, inp: StepInputs) -> tuple:
        """One method's selection after step s, explained."""
        try:
            entry = self._entry((inp.shown or {}).get("key"))
            r = entry.result
            if inp.method not in r.methods or not r.methods[inp.method].steps:
                return "Select a method.", gr.skip()
            record = r.methods[inp.method].steps
            step = requests.as_int(inp.step)
            if not isinstance(step, int):
                raise requests.UserError(f"step must be a whole number, got {step!r}")
            state = steps.replay(record, step - 1)
            key = ("step", inp.method, state.index)

            def build():
                geo = entry.geometry
                gi, rows, cols = geo.positions()
                ranks = steps.rank_of(r.relative_flat)

                def where(t: int) -> str:
                    return f"#{t} ({geo.grids[gi[t]].name}, row {rows[t]}, col {cols[t]})"

                text = steps.explain(inp.method, state, where=where, rank=lambda t: int(ranks[t]))
                fig = viz.step_figure(None, geo, kept=state.kept, current=int(state.step.token),
                                      excluded=state.excluded, newly_excluded=state.newly_excluded,
                                      pivots=state.pivots, color=viz.method_color(inp.method),
                                      title=f"{labels.label(inp.method)} · step {state.index + 1} of {state.total}",
                                      subtitle=f"{model_note(entry, short=True)} · {len(state.kept)} kept, "
                                               f"{len(state.excluded)} excluded so far",
                                      image_source=entry.photo_url)
                return text, _plot(fig)

            return _cached(entry, key, build)
        except Exception as error:
            message, _ = requests.user_message(error, "step view")
            return message, gr.skip()

    # ---- every layer
    def layer_view(self, inp: LayerInputs, calibrate: bool = False, progress=None) -> tuple:
        """Raw attention, prior and relative attention at any layer of the analysis on screen (no model run; a prior
        is looked up, and calibrated only on request)."""
        try:
            entry = self._entry((inp.shown or {}).get("key"))
            r = entry.result
            layer = requests.as_int(inp.layer)
            L = int(r.layer_attention.shape[0])
            if not isinstance(layer, int) or not 0 <= layer < L:
                raise requests.UserError(f"layer must be a whole number in [0, {L - 1}], got {inp.layer!r}")
            head = inp.head if inp.head not in (None, "") else MEAN_HEADS
            log_colour = requests.check_bool("log_colour", inp.log_colour)
            return self._layer_panels(entry, layer, head, log_colour, calibrate, progress)
        except Exception as error:
            message, _ = requests.user_message(error, "layer view")
            return message, gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def _layer_panels(self, entry: Entry, layer: int, head: str, log_colour: bool, calibrate: bool, progress):
        r = entry.result
        if head == MEAN_HEADS:
            att = r.layer_attention[layer].astype(np.float64)
        else:
            match = re.fullmatch(r"head (\d+)", str(head))
            per_head = r.layer_attention_heads
            if match is None or per_head is None or int(match.group(1)) >= per_head.shape[1]:
                raise requests.UserError(f"head must be {MEAN_HEADS!r} or 'head h'; got {head!r}")
            att = r.layer_attention_heads[layer, int(match.group(1))].astype(np.float64)
        kind = {"auto": "natural", "natural": "natural", "content-free": "content-free"}.get(entry.settings["prior"])
        note, prior_maps = "", None
        if kind is None:
            note = "uniform prior (no debiasing): relative attention = raw attention at every layer."
            prior_maps = [np.ones((g.rows, g.cols), np.float32) for g in r.grids]
        elif layer + 1 >= int(r.layer_attention.shape[0]):
            note = (f"No prior for the last layer: a prior of layer K describes the attention at K−1 = {layer}, and "
                    "pruning from a layer past the last one is meaningless.")
        else:
            found = self._layer_prior(entry, layer + 1, kind, calibrate, progress)
            if found is None:
                note = (f"No {kind} prior for layer K = {layer + 1} is stored yet — press *Calibrate this layer's "
                        "prior* (one early-exit pass per calibration photo).")
            else:
                prior_maps, description, notes = found
                note = f"prior: {description}" + (f" · {'; '.join(notes)}" if notes else "")
        geo = entry.geometry
        sub = f"{model_note(entry, short=True)} · layer {layer} · {head}"
        common = dict(image_source=entry.photo_url, log=log_colour, height=360)
        fig_att = viz.token_heatmap(None, geo, att, title=f"Attention at layer {layer}", subtitle=sub,
                                    value_label="attention", panel="layer-attention", **common)
        if prior_maps is None:
            can_calibrate = kind is not None and layer + 1 < int(r.layer_attention.shape[0])
            return note, _plot(fig_att), None, None, gr.update(visible=can_calibrate)
        prior = np.concatenate([np.ravel(p) for p in prior_maps]).astype(np.float64)
        rel = att / (prior + 1e-7)
        fig_prior = viz.token_heatmap(None, geo, prior, title=f"Prior of layer K = {layer + 1}",
                                      subtitle=f"attention at layer {layer} that position alone draws",
                                      value_label="prior", panel="layer-prior", **common)
        fig_rel = viz.token_heatmap(None, geo, rel, title=f"Relative attention at layer {layer}",
                                    subtitle="attention ÷ prior" + ("" if head == MEAN_HEADS else
                                                                    f" ({head} ÷ the mean-over-heads prior)"),
                                    value_label="relative attention", colorscale=viz.RELATIVE_COLORSCALE,
                                    panel="layer-relative", **common)
        return note, _plot(fig_att), _plot(fig_prior), _plot(fig_rel), gr.update(visible=False)

    def _layer_prior(self, entry: Entry, layer_k: int, kind: str, calibrate: bool, progress):
        def report(done, total, message):
            if progress is not None:
                progress((done, total), desc=f"calibrating the prior of layer {layer_k}: {message}")

        if calibrate:
            with self.host.use(entry.served_name) as served:
                return served.analyzer.prior_for(entry.result, layer_k, kind, calibrate=True, progress=report)
        if entry.served_name not in self.host.loaded():
            return None
        with self.host.use(entry.served_name) as served:  # loaded: no load happens
            return served.analyzer.prior_for(entry.result, layer_k, kind, calibrate=False)

    def calibrate_layer(self, inp: LayerInputs, progress=None) -> tuple:
        return self.layer_view(inp, calibrate=True, progress=progress)

    # ---- the sweep
    def sweep(self, inp: SweepInputs, progress=None) -> tuple:
        """Every selected method at several keep ratios: IoU against the ground truth (grounding with a box) or answer
        agreement with the unpruned model, against keep ratio. "No box" is a gap (counted), never 0."""
        ratios = scoring.parse_ratios(inp.ratios, limit=self.limits.sweep_ratios)
        results, gt, model, grounding = [], None, None, True
        for i, ratio in enumerate(ratios):
            if progress is not None:
                progress((i, len(ratios)), desc=f"keep {ratio:.0%} …", unit="ratios")
            entry, gt, _ = self.compute(inp, keep_ratio=ratio, progress=None)
            results.append(entry.result)
            model, grounding = model_note(entry), entry.grounding
        table = scoring.sweep_table(results, gt, grounding=grounding)
        series = {labels.label(m): v for m, v in table.series().items()}
        colors = {labels.label(m): viz.method_color(m) for m in table.methods}
        if table.vanilla is not None:
            series[labels.label(labels.VANILLA)] = [table.vanilla] * len(ratios)
            colors[labels.label(labels.VANILLA)] = viz.METHOD_COLORS[labels.VANILLA]
        fig = viz.sweep_figure(ratios, series, metric_label=table.metric, colors=colors,
                               title=f"Keep-ratio sweep · {model}")
        rows = [[labels.label(p.method), f"{p.keep_ratio:g}", f"{p.num_kept} / {p.num_candidates}",
                 "no box" if p.value is None else f"{p.value:.3f}", p.answer[:80] + ("…" if len(p.answer) > 80 else "")]
                for p in table.points]
        means = table.means()
        mean_text = " · ".join(f"{labels.label(m)} {s.text()}" for m, s in means.items())
        return _plot(fig), rows, f"Mean {table.metric} over the ratios: {mean_text}"

    def sweep_api(self, inp: SweepInputs, progress=None) -> tuple:
        try:
            return self.sweep(inp, progress)
        except Exception as error:
            message, _ = requests.user_message(error, "sweep")
            raise gr.Error(message, title="Cannot run the sweep", print_exception=False) from None

    def sweep_ui(self, inp: SweepInputs, progress=None) -> tuple:
        try:
            return ("", *self.sweep(inp, progress))
        except Exception as error:
            message, _ = requests.user_message(error, "sweep")
            return error_html(message), gr.skip(), gr.skip(), gr.skip()

    # ---- the bias explorer
    def bias(self, inp: BiasInputs, progress=None) -> tuple:
        """The model's positional bias at layer K: natural and content-free priors, their marginals, and the
        attention on a blank image (mean over heads or one head)."""
        colour = requests.check_choice("blank_colour", inp.blank_colour, list(BLANK_COLOURS))
        log_c = requests.check_bool("log_colour", inp.log_colour)
        head = inp.head if inp.head not in (None, "") else MEAN_HEADS
        k = requests.as_int(inp.layer)

        def report(kind):
            return (lambda done, total, msg: progress((done, total), desc=f"{kind} prior: {msg}")) if progress else None

        with self.host.use(inp.model) as served:
            analyzer = served.analyzer
            natural = analyzer.get_prior(k, "natural", progress=report("natural"))
            content_free = analyzer.get_prior(k, "content-free", progress=report("content-free"))
            blank = Image.new("RGB", (448, 448), BLANK_COLOURS[colour])
            prompt = natural.prompt or "Describe the image."
            observed = analyzer.observe(blank, prompt, layer=k, heads=head != MEAN_HEADS)
        if head == MEAN_HEADS:
            flat = observed.attention_flat
        else:
            match = re.fullmatch(r"head (\d+)", str(head))
            if match is None or int(match.group(1)) >= observed.attention_heads.shape[0]:
                raise requests.UserError(f"head must be {MEAN_HEADS!r} or 'head h' with h < "
                                         f"{observed.attention_heads.shape[0]}; got {head!r}")
            flat = observed.attention_heads[int(match.group(1))]
        splits = np.cumsum([g.size for g in observed.grids])[:-1]
        obs = {g.name: part.reshape(g.rows, g.cols) for g, part in zip(observed.grids, np.split(flat, splits),
                                                                        strict=True)}
        nat = {role: m.detach().cpu().numpy() for role, m in natural.maps.items()}
        cf = {role: m.detach().cpu().numpy() for role, m in content_free.maps.items()}
        name = f"{served.name}{' (random weights)' if served.random_weights else ''}"
        figs = [
            viz.maps_figure(nat, title=f"Natural prior · layer K = {k} (layer {k - 1} attention)",
                            subtitle=f"{name} · mean over {natural.num_images} photos, over heads",
                            value_label="mean attention", log=log_c, normalise=True),
            viz.maps_figure(cf, title=f"Content-free prior · layer K = {k}",
                            subtitle=f"{name} · {content_free.num_images} blank / noise images",
                            value_label="mean attention", log=log_c, normalise=True),
            viz.maps_figure(obs, title=f"Attention on a blank {colour} image · layer {k - 1}",
                            subtitle=f"{name} · {head}", value_label="attention", log=log_c, normalise=True),
        ]
        main = _main_role(nat)
        marg = viz.marginals_figure(
            {"natural prior": nat[main], "content-free prior": cf.get(main, next(iter(cf.values()))),
             "blank image": obs[_main_role(obs)]},
            colors={"natural prior": "#DC2626", "content-free prior": "#2563EB", "blank image": "#4B5563"},
            dashes={"blank image": "dot"}, title=f"Row and column marginals ({main}) · 1 = uniform · {name}")
        status = _bias_markdown(served, k, natural, content_free, nat[main], prompt, head)
        return status, *(_plot(f) for f in figs), _plot(marg)

    def bias_api(self, inp: BiasInputs, progress=None) -> tuple:
        try:
            return self.bias(inp, progress)
        except Exception as error:
            message, _ = requests.user_message(error, "bias explorer")
            raise gr.Error(message, title="Cannot show the bias", print_exception=False) from None

    def bias_ui(self, inp: BiasInputs, progress=None) -> tuple:
        try:
            return self.bias(inp, progress)
        except Exception as error:
            message, _ = requests.user_message(error, "bias explorer")
            return (error_html(message), *[gr.skip()] * 4)

    # ---- the model of this session
    def load_model(self, inp: ModelInputs, progress=None) -> tuple:
        """Prepare the model this session's requests name (loaded within the memory budget; nothing changes for
        anyone else); returns this session's banner and the layer bounds."""
        try:
            name = self.host.check(inp.model)
            if progress is not None:
                progress(0.1, desc=f"loading {name} …")
            served = self.host.prepare(name, progress=(lambda m: progress(0.3, desc=m)) if progress else None)
        except Exception as error:
            message, _ = requests.user_message(error, "loading the model")
            return banner_html(None, str(inp.model), self.host.device, message), gr.skip(), gr.skip(), gr.skip()
        layers = served.analyzer.num_layers
        return (banner_html(served, name, self.host.device), gr.update(maximum=layers - 1),
                gr.update(maximum=layers - 1), model_markdown(served, self.host))

    # ---- small UI helpers (no model)
    def pick_corner(self, pending, evt: gr.SelectData):
        """Two clicks on the input image set the ground-truth box (first corner, then the opposite one)."""
        x, y = (float(v) for v in evt.index[:2])
        if not pending:
            return gr.skip(), [x, y], f"First corner at ({x:.0f}, {y:.0f}); click the opposite corner."
        x0, y0 = pending
        box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return gr.skip(), None, "The two corners must differ; click two opposite corners."
        return ", ".join(f"{v:.0f}" for v in box), None, "Ground-truth box set (dashed green on the image)."

    def busy(self, *args, **kwargs):
        """The validator of every heavy event: refuse with a clear message when the queue is full."""
        count = max(1, len(args) + len(kwargs))
        waiting = self.queue_length()
        if waiting >= self.limits.queue_size:
            message = (f"Busy: {waiting} requests are waiting (you would be number {waiting + 1}; the queue holds "
                       f"{self.limits.queue_size}). Please try again in a minute.")
            return [gr.validate(False, message)] + [gr.validate(True, "")] * (count - 1)
        return [gr.validate(True, "")] * count


def _main_role(maps: dict) -> str:
    detail = [r for r in maps if r not in ("base", "thumbnail")]
    return detail[0] if detail else next(iter(maps))


def _bias_markdown(served: Served, layer, natural, content_free, main_map: np.ndarray, prompt: str, head: str) -> str:
    rows = main_map.mean(axis=1)
    third = max(1, len(rows) // 3)
    ratio = rows[-third:].sum() / max(rows[:third].sum(), 1e-12)
    lean = "bottom-heavy" if ratio > 1.1 else "top-heavy" if ratio < 1 / 1.1 else "balanced top–bottom"
    return "\n\n".join([
        f"**{html.escape(served.name)}** · prior of layer K = {layer} (attention of the last prompt token at layer "
        f"K−1 = {layer - 1}) · prompt used: *{html.escape(prompt)}* · blank image: {head}",
        f"natural: {html.escape(natural.describe())}",
        f"content-free: {html.escape(content_free.describe())}",
        f"Bottom third / top third of the rows: **{ratio:.2f}×** the attention mass ({lean}).",
    ])


def _gradio_upload_dir() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def load_examples() -> list[dict]:
    with (EXAMPLES_DIR / "examples.json").open() as f:
        items = json.load(f)
    return [e for e in items if (EXAMPLES_DIR / e["file"]).is_file()]


def example_name(e: dict) -> str:
    return Path(e["file"]).stem.replace("_", " ")


def example_card(index: int, e: dict) -> str:
    """An example's thumbnail and name (the thumbnail is served by the app, see :func:`launch_kwargs`)."""
    name = html.escape(example_name(e))
    return (f"<span class='example-card'><img src='{EXAMPLE_ROUTE}/{index}' alt='' width='64' height='48'>"
            f"<span>{name}</span></span>")


def example_thumbnails(examples: Sequence[dict], size: int = 128) -> list[bytes]:
    out = []
    for e in examples:
        with Image.open(EXAMPLES_DIR / e["file"]) as img:
            thumb = img.convert("RGB")
            thumb.thumbnail((size, size))
            out.append(viz.photo_jpeg(thumb, size, quality=80))
    return out


def d2_controls(selected) -> tuple:
    """α, θ and r_pivot are D²Pruner's: disabled, with the reason, when it is not selected."""
    on = isinstance(selected, list) and "d2pruner" in selected
    why = "" if on else " — only D²Pruner uses it: select D²Pruner to change it"
    return (gr.update(interactive=on, info="semantic weight of the graph" + why),
            gr.update(interactive=on, info="edge threshold" + why),
            gr.update(interactive=on, info="share of pivots" + why))


def apply_preset(choice, task, model) -> tuple:
    """The paper's K, α, θ, r_pivot when "paper settings for this task" is chosen (else nothing changes)."""
    values = paper_values(task, model) if choice == PRESETS[1] else None
    if values is None:
        return (gr.skip(),) * 4
    return (gr.update(value=values["layer"]), gr.update(value=values["alpha"]), gr.update(value=values["theta"]),
            gr.update(value=values["r_pivot"]))


def example_filler(examples: Sequence[dict]) -> Callable:
    """A gallery click → the example's image, task, prompt, expression and box (and a cleared corner)."""

    def fill_example(index):
        if not isinstance(index, int) or not 0 <= index < len(examples):
            return (gr.skip(),) * 7
        e = examples[index]
        return (str(EXAMPLES_DIR / e["file"]), "Grounding", e["prompt"], e["referring_expression"],
                ", ".join(str(v) for v in e["box"]), None, "")

    return fill_example


def paper_values(task, model) -> dict | None:
    """K, α, θ, r_pivot of the paper for the task and the model's family (None for an unknown task)."""
    from d2pruner.presets import paper_settings

    if task not in TASKS or not isinstance(model, str):
        return None
    return paper_settings("localization" if task == "Grounding" else "understanding", catalog.family_of(model).name)


# ---------------------------------------------------------------------------------------------------- layout


#: outputs of the Analyze button: error box, shown, guide, results, status, 4 plots + the facets, 3 tables,
#: step method and slider, layer slider and heads, the results stamp
UI_ANALYSIS_OUTPUTS = 5 + 4 + FACETS + 3 + 4 + 1


def build_demo(lab: LabApp, *, model_choices: Sequence[catalog.ModelChoice] | None = None) -> gr.Blocks:
    """The Gradio Blocks of the app, wired to ``lab``'s handlers: the layout (header, inputs, results, the bias
    explorer, about; each builder adds its components to one namespace), then the wiring."""
    choices = list(model_choices if model_choices is not None else catalog.model_choices())
    model_list = [(c.label, c.id) for c in choices]
    if lab.default_model not in [c.id for c in choices]:
        model_list.insert(0, (lab.default_model, lab.default_model))
    served, layers = _default_model(lab)
    examples = load_examples()
    ui = SimpleNamespace()
    with gr.Blocks(title="D²Pruner lab", delete_cache=(lab.limits.cleanup_seconds, lab.limits.file_age_seconds)
                   ) as demo:
        _header(ui, lab, served, model_list)
        with gr.Tabs():
            with gr.Tab("Analysis", id="analysis"), gr.Row(elem_classes="analysis-row"):
                _inputs_column(ui, layers)
                _results_column(ui, examples)
            with gr.Tab("Bias explorer", id="bias"):
                _bias_tab(ui, layers, served)
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT, elem_id="about")
        api_analyze = gr.Button("api analyze", visible=False)
        api_sweep = gr.Button("api sweep", visible=False)
        api_bias = gr.Button("api bias", visible=False)
        vars(ui).update(api_analyze=api_analyze, api_sweep=api_sweep, api_bias=api_bias)

        _wire_events(ui, lab)
        _wire_light(ui, lab, examples)
    # the validator (LabApp.busy) refuses beyond queue_size with a message; Gradio's own bound is a backstop
    demo.queue(default_concurrency_limit=1, max_size=2 * lab.limits.queue_size + 32, api_open=False)
    lab.queue_length = lambda: _queue_length(demo)
    return demo


def _default_model(lab: LabApp) -> tuple[Served | None, int]:
    """The start-up model and its depth (None and 32 when it cannot be served: the banner says so)."""
    try:
        served = lab.host.prepare(lab.default_model)
        return served, served.analyzer.num_layers
    except Exception as error:
        log.error("the default model cannot be served: %s", error)
        return None, 32


def _header(ui: SimpleNamespace, lab: LabApp, served: Served | None, model_list: list) -> None:
    """The title, the model dropdown (this session's requests only) and the model banner."""
    with gr.Row(equal_height=True, elem_classes="top-row"):
        gr.HTML("<header class='lab-header'><h1>D²Pruner lab</h1><p>Which visual tokens does each pruning method "
                "keep inside a multimodal LLM — and why? Raw attention is biased by position; D²Pruner divides it "
                "by a calibrated prior and keeps diverse tokens on a hybrid spatial–semantic graph.</p></header>",
                elem_classes="header-cell")
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(model_list, value=lab.default_model, label="Model (for your requests only)",
                                elem_id="model-dropdown")
            model_md = gr.Markdown(model_markdown(served, lab.host) if served else "", elem_id="model-info")
    banner = gr.HTML(banner_html(served, lab.default_model, lab.host.device), elem_id="model-banner")
    vars(ui).update(model=model, model_md=model_md, banner=banner)


def _inputs_column(ui: SimpleNamespace, layers: int) -> None:
    """The image, the task, its text, Analyze, the ground truth, the methods, the settings and the display."""
    from d2pruner.analysis import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, PRIOR_CHOICES

    method_choices = [(labels.label(m), m) for m in METHODS]
    with gr.Column(scale=1, min_width=320, elem_classes="inputs-col"):
        image = gr.Image(type="filepath", label="Image · click two corners to set the ground-truth box",
                         sources=["upload", "clipboard"], height=220, elem_id="input-image")
        corner_hint = gr.Markdown("", elem_id="corner-hint", elem_classes="small-note")
        task = gr.Radio(list(TASKS), value="Grounding", label="Task", elem_id="task")
        prompt = gr.Textbox("", label="Question", lines=2, visible=False, max_length=MAX_PROMPT_CHARS,
                            placeholder="e.g. What is on the table?", elem_id="prompt")
        expression = gr.Textbox("", label="Referring expression", lines=1, max_length=MAX_PROMPT_CHARS,
                                placeholder="e.g. the spoon on the saucer", elem_id="expression")
        analyze_btn = gr.Button("Analyze", variant="primary", elem_id="analyze-btn")
        error_box = gr.HTML("", elem_id="analyze-error")
        gt_box = gr.Textbox("", label="Ground-truth box (optional)", elem_id="gt-box",
                            placeholder="e.g. 325, 67, 423, 324",
                            info="x1, y1, x2, y2 in pixels of the image — typed, or two clicks on it")
        methods = gr.CheckboxGroup(method_choices, value=list(DEFAULT_METHODS), label="Methods",
                                   elem_id="methods",
                                   info="“DI only” = D²Pruner's debiased importance without the graph; "
                                        "“DART (official)” keeps 4 + 8⌊n/8⌋ tokens. See About.")
        with gr.Accordion("Pruning settings", open=True, elem_id="settings"):
            preset = gr.Radio(list(PRESETS), value="custom", label="Settings", elem_id="preset",
                              info="the paper's K, α, θ, r_pivot for this task and model family")
            keep_ratio = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Keep ratio",
                                   info="fraction of the N visual tokens kept", elem_id="keep-ratio")
            layer = gr.Slider(1, max(2, layers - 1), value=min(2, layers - 1), step=1, label="Layer K",
                              info="pruned from decoder layer K, ranked by layer K−1 attention",
                              elem_id="layer-k")
            prior = gr.Dropdown(list(PRIOR_CHOICES), value="auto", label="Prior for relative attention",
                                elem_id="prior")
            with gr.Row():
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="α", min_width=120,
                                  info="semantic weight of the graph", elem_id="alpha")
                theta = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="θ", min_width=120,
                                  info="edge threshold", elem_id="theta")
            with gr.Row():
                r_pivot = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="r_pivot", min_width=120,
                                    info="share of pivots", elem_id="r-pivot")
                max_new_tokens = gr.Slider(1, min(256, MAX_NEW_TOKENS), value=24, step=1,
                                           label="Max new tokens", min_width=120, info="greedy decoding",
                                           elem_id="max-new-tokens")
        with gr.Accordion("Display", open=False, elem_id="display"), gr.Row(equal_height=True):
            colour_scale = gr.Radio(list(COLOUR_CHOICES), value="independent", label="Heatmap colours",
                                    scale=3, info="shared: one range for the three heatmaps",
                                    elem_id="colour-scale")
            log_colour = gr.Checkbox(False, label="log colour", scale=1, elem_id="log-colour")
        corner = gr.State(None)
        shown = gr.State(None)
    vars(ui).update(image=image, corner_hint=corner_hint, task=task, prompt=prompt, expression=expression,
                    analyze_btn=analyze_btn, error_box=error_box, gt_box=gt_box, methods=methods, preset=preset,
                    keep_ratio=keep_ratio, layer=layer, prior=prior, alpha=alpha, theta=theta, r_pivot=r_pivot,
                    max_new_tokens=max_new_tokens, colour_scale=colour_scale, log_colour=log_colour, corner=corner,
                    shown=shown)


def _results_column(ui: SimpleNamespace, examples: Sequence[dict]) -> None:
    """The examples, the first-run guide, the stale marker, then the results (hidden until the first run)."""
    with gr.Column(scale=3, elem_classes="results-col"):
        gallery = gr.Dataset(
            components=[gr.HTML(visible=False)], label="Examples: a photo, a referring expression and a "
            "hand-placed box each", type="index", layout="gallery",
            samples=[[example_card(i, e)] for i, e in enumerate(examples)], samples_per_page=12,
            elem_id="examples")
        guide = gr.HTML(GUIDE, elem_id="guide")
        gr.HTML("<div class='stale-box' role='status'>The inputs changed since these results were "
                        "computed — press <b>Analyze</b> to update them.</div>", elem_id="stale-marker")
        stamp = gr.Textbox("", visible="hidden", elem_id="results-stamp", label="results stamp")
        with gr.Column(visible=False, elem_id="results") as results:
            status = gr.Markdown("", elem_id="status-md")
            gr.HTML("<div id='token-inspector' class='inspector' aria-live='polite'>Hover or click a "
                    "token in any panel to follow it everywhere.</div>", elem_id="inspector-box")
            with gr.Row(equal_height=True, elem_classes="heatmaps linked"):
                plot_att = gr.Plot(label="Raw attention", show_label=False, elem_id="plot-attention",
                                   min_width=240)
                plot_prior = gr.Plot(label="Positional-bias prior", show_label=False,
                                     elem_id="plot-prior", min_width=240)
                plot_rel = gr.Plot(label="Relative attention", show_label=False, elem_id="plot-relative",
                                   min_width=240)
            with gr.Row(elem_classes="facets linked"):
                plot_graph = gr.Plot(label="Hybrid graph", show_label=False, elem_id="plot-graph")
                facets = [gr.Plot(label=f"Kept tokens {i}", show_label=False, visible=False,
                                  elem_id=f"plot-facet-{i}") for i in range(FACETS)]
            answers = gr.Dataframe(headers=list(summary.ANSWER_HEADERS), label="Answers and boxes",
                                   interactive=False, wrap=True, elem_id="answers")
            efficiency = gr.Dataframe(headers=list(summary.EFFICIENCY_HEADERS), elem_id="efficiency",
                                      interactive=False, wrap=True, label="Efficiency")
            with gr.Row():
                files = gr.File(label="Download: JSON with every number + PNG of the panels",
                                file_count="multiple", interactive=False, elem_id="downloads", scale=1)
                with gr.Column(scale=1), gr.Accordion("All numbers (JSON summary)", open=False):
                    summary_json = gr.JSON(label="summary", elem_id="summary")
            with gr.Accordion("Selection step by step", open=True, elem_id="steps"):
                with gr.Row(equal_height=True):
                    step_method = gr.Dropdown([], label="Method", scale=1, elem_id="step-method")
                    step = gr.Slider(1, 2, value=1, step=1, label="Step", scale=3, elem_id="step-slider",
                                     info="replays the method's picks in the order it made them")
                step_text = gr.Markdown("", elem_id="step-text")
                with gr.Row(elem_classes="linked"):
                    plot_step = gr.Plot(label="Selection step", show_label=False, elem_id="plot-step")
            with gr.Accordion("Attention at every layer", open=False, elem_id="layers"):
                with gr.Row(equal_height=True):
                    layer_view = gr.Slider(0, 2, value=1, step=1, label="Layer", scale=3,
                                           elem_id="layer-slider",
                                           info="the last prompt token's attention at this layer, from "
                                                "the same unpruned forward (no re-run)")
                    head = gr.Dropdown([MEAN_HEADS], value=MEAN_HEADS, label="Heads", scale=1,
                                       elem_id="layer-head")
                with gr.Row(equal_height=True):
                    layer_note = gr.Markdown("", elem_id="layer-note")
                    calibrate_btn = gr.Button("Calibrate this layer's prior", visible=False, scale=0,
                                              elem_id="calibrate-btn")
                with gr.Row(equal_height=True, elem_classes="heatmaps linked"):
                    plot_layer_att = gr.Plot(label="Attention at layer", show_label=False,
                                             elem_id="plot-layer-attention", min_width=240)
                    plot_layer_prior = gr.Plot(label="Prior at layer", show_label=False,
                                               elem_id="plot-layer-prior", min_width=240)
                    plot_layer_rel = gr.Plot(label="Relative attention at layer", show_label=False,
                                             elem_id="plot-layer-relative", min_width=240)
            with gr.Accordion("Keep-ratio sweep", open=False, elem_id="sweep"):
                with gr.Row(equal_height=True):
                    ratios = gr.Textbox(DEFAULT_SWEEP, label="Keep ratios", scale=4, elem_id="ratios",
                                        info="every selected method at each ratio, same inputs as "
                                             "above; IoU with the ground truth, else agreement with "
                                             "vanilla")
                    sweep_btn = gr.Button("Run sweep", scale=1, elem_id="sweep-btn")
                sweep_error = gr.HTML("", elem_id="sweep-error")
                plot_sweep = gr.Plot(label="Sweep", show_label=False, elem_id="plot-sweep")
                sweep_means = gr.Markdown("", elem_id="sweep-means")
                sweep_table = gr.Dataframe(headers=["method", "keep ratio", "kept", "metric", "answer"],
                                           label="Sweep numbers", interactive=False, wrap=True,
                                           max_height=320, elem_id="sweep-table")
    vars(ui).update(gallery=gallery, guide=guide, stamp=stamp, status=status, plot_att=plot_att, plot_prior=plot_prior,
                    plot_rel=plot_rel, plot_graph=plot_graph, facets=facets, answers=answers, efficiency=efficiency,
                    files=files, summary_json=summary_json, step_method=step_method, step=step, step_text=step_text,
                    plot_step=plot_step, layer_view=layer_view, head=head, layer_note=layer_note,
                    calibrate_btn=calibrate_btn, plot_layer_att=plot_layer_att, plot_layer_prior=plot_layer_prior,
                    plot_layer_rel=plot_layer_rel, ratios=ratios, sweep_btn=sweep_btn, sweep_error=sweep_error,
                    plot_sweep=plot_sweep, sweep_means=sweep_means, sweep_table=sweep_table, results=results)


def _bias_tab(ui: SimpleNamespace, layers: int, served: Served | None) -> None:
    """The Bias explorer: natural and content-free priors, marginals, a blank image (mean or one head)."""
    with gr.Row(equal_height=True):
        bias_layer = gr.Slider(1, max(2, layers - 1), value=min(2, layers - 1), step=1, label="Layer K",
                               scale=2, elem_id="bias-layer",
                               info="the prior of layer K is attention at layer K−1")
        bias_head = gr.Dropdown([MEAN_HEADS, *[f"head {h}" for h in range(_num_heads(served))]],
                                value=MEAN_HEADS, label="Heads (blank image)", scale=1,
                                elem_id="bias-head")
        blank_colour = gr.Radio(list(BLANK_COLOURS), value="grey", label="Blank image colour", scale=2,
                                elem_id="blank-colour")
        bias_log = gr.Checkbox(False, label="log colour", scale=1, elem_id="bias-log")
        bias_btn = gr.Button("Show the positional bias", variant="primary", scale=2, elem_id="bias-btn")
    gr.Markdown("<span class='small-note'>Uses the model above. The first use per model and layer "
                "calibrates the priors (progress bar), then they are cached. Priors are means over heads;"
                " the blank-image attention can be shown per head.</span>")
    bias_status = gr.Markdown(elem_id="bias-status")
    with gr.Row(equal_height=True):
        plot_nat = gr.Plot(label="Natural prior", show_label=False, elem_id="plot-natural")
        plot_cf = gr.Plot(label="Content-free prior", show_label=False, elem_id="plot-content-free")
    with gr.Row(equal_height=True):
        plot_blank = gr.Plot(label="Attention on a blank image", show_label=False, elem_id="plot-blank")
        plot_marg = gr.Plot(label="Marginals", show_label=False, elem_id="plot-marginals")
    vars(ui).update(bias_layer=bias_layer, bias_head=bias_head, blank_colour=blank_colour, bias_log=bias_log,
                    bias_btn=bias_btn, bias_status=bias_status, plot_nat=plot_nat, plot_cf=plot_cf,
                    plot_blank=plot_blank, plot_marg=plot_marg)


def _wire_events(ui: SimpleNamespace, lab: LabApp) -> None:
    """The model events (API and page: the queue's model lane, each validated by ``lab.busy``), the display events
    (cached results redrawn in their own lane) and the page script's hooks."""
    analysis_inputs = [ui.model, ui.image, ui.task, ui.prompt, ui.expression, ui.gt_box, ui.methods, ui.keep_ratio,
                       ui.layer, ui.alpha, ui.theta, ui.r_pivot, ui.max_new_tokens, ui.prior, ui.colour_scale,
                       ui.log_colour]
    heavy = dict(concurrency_id="gpu", concurrency_limit=lab.limits.concurrency, validator=lab.busy)
    render = dict(concurrency_id="render", concurrency_limit=lab.limits.render_concurrency)
    plots = [ui.plot_att, ui.plot_prior, ui.plot_rel, ui.plot_graph, *ui.facets]
    # the API (gradio_client, raw HTTP through the queue): errors are raised
    bias_inputs = [ui.model, ui.bias_layer, ui.bias_head, ui.blank_colour, ui.bias_log]
    bias_outputs = [ui.bias_status, ui.plot_nat, ui.plot_cf, ui.plot_blank, ui.plot_marg]
    ui.api_analyze.click(gpu(typed(lab.analyze_api, AnalysisInputs, progress=True)), analysis_inputs,
                         [ui.status, *plots, ui.answers, ui.efficiency, ui.files, ui.summary_json],
                         api_name="analyze", preprocess=False, **heavy)
    ui.api_sweep.click(gpu(typed(lab.sweep_api, SweepInputs, progress=True)), [*analysis_inputs, ui.ratios],
                       [ui.plot_sweep, ui.sweep_table, ui.sweep_means], api_name="sweep", preprocess=False, **heavy)
    ui.api_bias.click(gpu(typed(lab.bias_api, BiasInputs, progress=True)), bias_inputs, bias_outputs,
                      api_name="bias", preprocess=False, **heavy)
    # the page: errors go beside the controls and the results on screen stay
    ui_outputs = [ui.error_box, ui.shown, ui.guide, ui.results, ui.status, *plots, ui.answers, ui.efficiency,
                  ui.summary_json, ui.step_method, ui.step, ui.layer_view, ui.head, ui.stamp]
    if len(ui_outputs) != UI_ANALYSIS_OUTPUTS:  # a programming error, caught by every UI test
        raise RuntimeError(f"the Analyze button has {len(ui_outputs)} outputs, not {UI_ANALYSIS_OUTPUTS}")
    ui.analyze_btn.click(
        gpu(typed(lab.analyze_ui, AnalysisInputs, progress=True)), analysis_inputs, ui_outputs,
        api_visibility="private", preprocess=False, scroll_to_output=False,
        show_progress_on=[ui.status, ui.error_box],
        js="(...args) => { window.d2lab && window.d2lab.started(); return args; }", **heavy,
    ).then(typed(lab.files_ui, DisplayInputs), [ui.shown], [ui.files], api_visibility="private", **render)
    for control in (ui.colour_scale, ui.log_colour):
        control.change(typed(lab.rerender, DisplayInputs), [ui.shown, ui.colour_scale, ui.log_colour],
                       [ui.plot_att, ui.plot_prior, ui.plot_rel], api_visibility="private", show_progress="hidden",
                       **render)
    step_inputs = [ui.shown, ui.step_method, ui.step]
    for control in (ui.step_method, ui.step):
        control.change(typed(lab.step_view, StepInputs), step_inputs, [ui.step_text, ui.plot_step],
                       api_visibility="private", show_progress="hidden", **render)
    layer_inputs = [ui.shown, ui.layer_view, ui.head, ui.log_colour]
    layer_outputs = [ui.layer_note, ui.plot_layer_att, ui.plot_layer_prior, ui.plot_layer_rel, ui.calibrate_btn]
    for control in (ui.layer_view, ui.head):
        control.change(typed(lab.layer_view, LayerInputs), layer_inputs, layer_outputs,
                       api_visibility="private", show_progress="hidden", **render)
    ui.calibrate_btn.click(gpu(typed(lab.calibrate_layer, LayerInputs, progress=True)), layer_inputs,
                           layer_outputs, api_visibility="private", **heavy)
    ui.sweep_btn.click(gpu(typed(lab.sweep_ui, SweepInputs, progress=True)), [*analysis_inputs, ui.ratios],
                       [ui.sweep_error, ui.plot_sweep, ui.sweep_table, ui.sweep_means], api_visibility="private",
                       preprocess=False, **heavy)
    ui.bias_btn.click(gpu(typed(lab.bias_ui, BiasInputs, progress=True)), bias_inputs, bias_outputs,
                      api_visibility="private", preprocess=False, **heavy)
    ui.model.change(gpu(typed(lab.load_model, ModelInputs, progress=True)), [ui.model],
                    [ui.banner, ui.layer, ui.bias_layer, ui.model_md], api_name="load_model", preprocess=False,
                    **heavy)
    ui.stamp.change(None, None, None, js="() => window.d2lab && window.d2lab.resultsArrived()")
    for control in (ui.model, ui.image, ui.task, ui.prompt, ui.expression, ui.gt_box, ui.methods, ui.keep_ratio,
                    ui.layer, ui.alpha, ui.theta, ui.r_pivot, ui.max_new_tokens, ui.prior):
        control.change(None, None, None, js="() => window.d2lab && window.d2lab.inputsChanged()")
    ui.gt_box.change(None, [ui.gt_box], None, js="(box) => window.d2lab && window.d2lab.drawGroundTruth(box)")


def _wire_light(ui: SimpleNamespace, lab: LabApp, examples: Sequence[dict]) -> None:
    """Light UI events (no model, no file): answered at once, outside the queue."""
    light = dict(queue=False, api_visibility="private", show_progress="hidden")
    ui.task.change(lambda t: (gr.update(visible=t != "Grounding"), gr.update(visible=t == "Grounding")), [ui.task],
                   [ui.prompt, ui.expression], **light)
    ui.methods.change(d2_controls, [ui.methods], [ui.alpha, ui.theta, ui.r_pivot], **light)
    for control in (ui.preset, ui.task, ui.model):
        control.change(apply_preset, [ui.preset, ui.task, ui.model], [ui.layer, ui.alpha, ui.theta, ui.r_pivot],
                       **light)
    for control in (ui.layer, ui.alpha, ui.theta, ui.r_pivot):
        control.input(lambda: "custom", None, [ui.preset], **light)
    fill_example = example_filler(examples)
    ui.gallery.click(fill_example, [ui.gallery],
                     [ui.image, ui.task, ui.prompt, ui.expression, ui.gt_box, ui.corner, ui.corner_hint], **light)
    ui.image.select(lab.pick_corner, [ui.corner], [ui.gt_box, ui.corner, ui.corner_hint], **light)
    ui.image.upload(lambda: ("", None, ""), None, [ui.gt_box, ui.corner, ui.corner_hint], **light)


def _num_heads(served: Served | None) -> int:
    if served is None:
        return 0
    config = served.analyzer.model.config.get_text_config()
    return int(getattr(config, "num_attention_heads", 0) or 0)


def _queue_length(demo: gr.Blocks) -> int:
    """Events waiting in Gradio's queue (``Blocks._queue``: a private attribute of Gradio 6.31; a test pins it)."""
    queue = getattr(demo, "_queue", None)
    try:
        return len(queue) if queue is not None else 0
    except TypeError:
        return 0


# ---------------------------------------------------------------------------------------------------- launch


def lab_theme() -> gr.themes.Base:
    """Gradio's Soft theme with every text at a contrast of at least 4.5:1 (its indigo-500 labels on indigo-100 and
    white on indigo-500 buttons fall just short)."""
    return gr.themes.Soft().set(
        block_label_text_color="*primary_700", block_title_text_color="*primary_700",
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        button_primary_background_fill_hover_dark="*primary_600",
        checkbox_label_background_fill_selected="*primary_600",
        checkbox_label_background_fill_selected_dark="*primary_700",
    )


def launch_kwargs(lab: LabApp) -> dict:
    """What ``demo.launch`` needs beyond the address: the page's script and style, the upload bounds (an ASGI
    middleware), the photo route, and the file limits."""
    from starlette.middleware import Middleware
    from starlette.responses import Response
    from starlette.routing import Route

    from d2pruner.serving.asgi import RequestLimits

    async def photo(request):
        jpeg = lab.photos.get(request.path_params["token"])
        if jpeg is None:
            return Response(status_code=404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    thumbnails = example_thumbnails(load_examples())

    async def example(request):
        index = request.path_params["index"]
        if not index.isdigit() or int(index) >= len(thumbnails):
            return Response(status_code=404)
        return Response(thumbnails[int(index)], media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    limits = lab.limits
    return dict(
        theme=lab_theme(), css_paths=[UI_DIR / "lab.css"],
        head=f"<script>{(UI_DIR / 'lab.js').read_text()}</script>",
        max_file_size=limits.upload_bytes, footer_links=["api", "gradio"], ssr_mode=False, run_history=False,
        state_session_capacity=limits.sessions,
        app_kwargs={"middleware": [Middleware(RequestLimits, upload_bytes=limits.upload_bytes,
                                              files_per_upload=limits.files_per_upload,
                                              request_bytes=limits.request_bytes)],
                    "routes": [Route(f"/{PHOTO_ROUTE}/{{token}}", photo),
                               Route(f"/{EXAMPLE_ROUTE}/{{index}}", example)]},
    )


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from d2pruner.serving.host import AllowList

    limits = Limits.from_env()
    host = ModelHost(device=args.device, allowed=AllowList.from_env(extra=[args.model]))
    served = host.prepare(args.model, progress=log.info, pin=True)
    if served.reason:
        log.warning("could not load %s (%s); serving %s", args.model, served.reason, served.name)
    lab = LabApp(host, default_model=args.model, limits=limits)
    # Gradio deletes only part of its cache (delete_cache= tracks some files): the janitor keeps both bounded
    Janitor([lab.out_dir, _gradio_upload_dir()], limits.file_age_seconds, limits.cleanup_seconds).start()
    demo = build_demo(lab)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(lab))


if __name__ == "__main__":
    main(ARGS)
