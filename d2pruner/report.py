"""``python -m d2pruner.report <lmms-eval output folders…> [--out DIR] [--metric NAME] [--scale S]``.

Reads every ``*_results.json`` lmms-eval wrote under the given folders and writes ``DIR/report.md`` — one table
per (model, task): rows = the unpruned baseline and each method (and setting), columns = keep ratios (then keep
counts), cells = the metric (default ``refcoco_ACC@0.5``, × 100) with the number of answers without a box —
and one SVG per table, the metric against the keep ratio per method (the baseline dashed), like the paper's
Table 3 and Fig. 4. Reads JSON only: lmms-eval need not be installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from d2pruner.eval.markdown import render_report
from d2pruner.eval.results import Table, read_runs, result_files, tables
from d2pruner.eval.svg import line_chart

DEFAULT_METRIC = "refcoco_ACC@0.5"


def figure(table: Table, metric: str, scale: float) -> str | None:
    """The table's SVG (metric × scale against keep ratio in %), or None when no keep-ratio run has the metric."""
    series: dict[str, list[tuple[float, float]]] = {}
    baseline = None
    for (row, (kind, value)), run in table.cells.items():
        metric_value = run.metrics.get(metric)
        if metric_value is None:
            continue
        if kind == "unpruned" and baseline is None:
            baseline = metric_value * scale
        elif kind == "ratio":
            series.setdefault(row, []).append((value * 100, metric_value * scale))
    if not series:
        return None
    ordered = {row: series[row] for row in table.rows if row in series}
    return line_chart(ordered, baseline=baseline, title=f"{table.task} — {table.model}", x_label="keep ratio (%)",
                      y_label=f"{metric} × {scale:g}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "table"


def write_report(folders: Sequence[str | Path], out: str | Path, metric: str = DEFAULT_METRIC,
                 scale: float = 100.0) -> list[Path]:
    """Write ``report.md`` and the figures into ``out``; return the written paths.

    Raises:
        ValueError: no results file found, or none holds ``metric``.
    """
    files = result_files(folders)
    if not files:
        raise ValueError(f"no *_results.json under {', '.join(map(str, folders))}")
    runs = [run for path in files for run in read_runs(path)]
    found = [t for t in tables(runs) if any(metric in run.metrics for run in t.cells.values())]
    if not found:
        available = sorted({m for run in runs for m in run.metrics})
        raise ValueError(f"metric {metric!r} is in no results file; available: {', '.join(available)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots: list[str | None] = []
    for table in found:
        svg = figure(table, metric, scale)
        if svg is None:
            plots.append(None)
            continue
        path = out / f"{_slug(table.task)}__{_slug(table.model)}.svg"
        path.write_text(svg, encoding="utf-8")
        written.append(path)
        plots.append(path.name)
    report = out / "report.md"
    report.write_text(render_report(found, metric, scale, plots), encoding="utf-8")
    return [report, *written]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m d2pruner.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("folders", nargs="+", help="lmms-eval --output_path folders (searched recursively)")
    parser.add_argument("--out", default="report", help="where report.md and the figures go (default: ./report)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"the metric to tabulate (default {DEFAULT_METRIC})")
    parser.add_argument("--scale", type=float, default=100.0, help="multiply values by this (default 100: percent)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.folders, args.out, args.metric, args.scale)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
