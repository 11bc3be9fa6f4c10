"""What the app's server spends per request once an analysis is cached, and what one response weighs.

The app caches each analysis with its renders (figures, tables, the download files), so a repeated Analyze, a
colour-scale toggle, a step of the step slider or a layer of the layer slider re-sends what was built once. This
measures the server time of each of those handlers (``LabApp`` called directly, no HTTP) and the size of one
``/analyze`` response (the JSON of its outputs), on the real token layouts of LLaVA-1.5 (576 visual tokens) and
LLaVA-NeXT (2,880) with every method offered. The analyses come from the test suite's fake analyzer
(``tests/fake_analyzer.py``: real layouts, results made up at once), so what is timed is the app itself, not a model.

    python bench/app_render.py   # -> bench/results/app-render-cpu.md (+ .json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_analyzer import OnlineProbe, fake_loader
from machine import cpu_name

import app as lab_app
from d2pruner.resources import EXAMPLES_DIR
from d2pruner.serving.host import AllowList, ModelHost

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"LLaVA-1.5 layout (576 tokens)": "llava-hf/llava-1.5-7b-hf",
          "LLaVA-NeXT layout (2,880 tokens)": "llava-hf/llava-v1.6-vicuna-7b-hf"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/app_render.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed repetitions per handler (default: 20)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown output (default: bench/results/app-render-cpu.md)")
    return parser.parse_args(argv)


def make_lab(folder: Path) -> lab_app.LabApp:
    host = ModelHost(device="cpu", allowed=AllowList(("*",)), budget_bytes=1e12, loader=fake_loader,
                     probe=OnlineProbe())
    return lab_app.LabApp(host, default_model=MODELS[next(iter(MODELS))], upload_roots=[EXAMPLES_DIR, folder],
                          out_dir=folder / "out")


def analysis_inputs(model: str) -> lab_app.AnalysisInputs:
    examples = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    coffee = next(e for e in examples if e["file"].startswith("coffee"))
    return lab_app.AnalysisInputs(
        model=model, image=str(EXAMPLES_DIR / coffee["file"]), task="Grounding", prompt=coffee["prompt"],
        expression=coffee["referring_expression"], gt_box=", ".join(map(str, coffee["box"])),
        methods=list(lab_app.METHODS), keep_ratio=0.25, layer=2, max_new_tokens=4, prior="auto")


def response_bytes(outputs) -> int:
    """The JSON the API sends for these outputs (figures as their plotly JSON)."""
    return len(json.dumps([o.plot if hasattr(o, "plot") else o for o in outputs], default=str).encode())


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(lab: lab_app.LabApp, model: str, runs: int) -> dict:
    inp = analysis_inputs(model)
    start = time.perf_counter()
    first = lab.analyze_api(inp)
    first_ms = (time.perf_counter() - start) * 1e3
    shown = lab.analyze_ui(inp)[1]
    displays = [lab_app.DisplayInputs(shown, colour, log) for colour in ("independent", "shared")
                for log in (False, True)]
    for display in displays:  # each colour option drawn once
        lab.rerender(display)
    steps = [lab_app.StepInputs(shown, "d2pruner", s) for s in (1, 5, 10)]
    layers = [lab_app.LayerInputs(shown, k) for k in (0, 1, 3)]
    for event in steps:
        lab.step_view(event)
    for event in layers:
        lab.layer_view(event)
    return {
        "first analyze (compute + build), ms": first_ms,
        "cached analyze, ms": median_ms(lambda: lab.analyze_api(inp), runs),
        "colour toggle, ms": median_ms(lambda: [lab.rerender(d) for d in displays], runs) / len(displays),
        "step slider, ms": median_ms(lambda: [lab.step_view(e) for e in steps], runs) / len(steps),
        "layer slider (drawn each time), ms":
            median_ms(lambda: [lab.layer_view(e) for e in layers], runs) / len(layers),
        "analyze response, KB": response_bytes(first) / 1024,
    }


def render(rows: dict[str, dict], runs: int) -> str:
    columns = list(next(iter(rows.values())))
    lines = [
        "# The app's server time per request, cached results (CPU)",
        "",
        f"{date.today().isoformat()} · {cpu_name()} · median of {runs} runs · every method offered · "
        "`python bench/app_render.py`",
        "",
        "| layout | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [f"| {name} | " + " | ".join(f"{v:.3g}" for v in values.values()) + " |" for name, values in rows.items()]
    lines += ["", "*First analyze* includes the fake analysis (instant) and building every figure, the tables and "
              "the download files once; every later column re-sends what was built (server time of the handler, "
              "no HTTP), except the layer slider, which draws the three maps of a layer from the stored attention "
              "rows each time. The response is the JSON of one `/analyze` answer: the photo is a served file, sent "
              "once."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        lab = make_lab(Path(folder))
        rows = {name: measure(lab, model, args.runs) for name, model in MODELS.items()}
    text = render(rows, args.runs)
    print(text)
    out = args.out or RESULTS / "app-render-cpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
