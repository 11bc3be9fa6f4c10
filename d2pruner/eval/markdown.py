"""Markdown for :class:`~d2pruner.eval.results.Table`: methods × keep ratios, like the paper's Table 3."""

from __future__ import annotations

from collections.abc import Sequence

from d2pruner.eval.results import Table

NO_BOX_METRIC = "no_box_count"


def column_header(column: tuple) -> str:
    """``("unpruned", None)`` → ``unpruned``; ``("ratio", 0.111)`` → ``keep 11.1 %``; ``("keep", 64)`` → ``keep 64``."""
    kind, value = column
    if kind == "unpruned":
        return "unpruned"
    if kind == "ratio":
        return f"keep {value * 100:.3g} %"
    return f"keep {value}"


def cell(table: Table, row: str, column: tuple, metric: str, scale: float) -> str:
    """``41.2`` (the metric × scale), ``41.2 (3)`` when 3 answers held no box, ``—`` when not run."""
    run = table.cells.get((row, column))
    if run is None:
        return "—"
    value = run.metrics.get(metric)
    text = "n/a" if value is None else f"{value * scale:.1f}"
    missing = run.metrics.get(NO_BOX_METRIC)
    return text if missing is None else f"{text} ({int(missing)})"


def render_table(table: Table, metric: str, scale: float = 100.0, plot: str | None = None) -> str:
    """One table's section: a heading, the shared settings, the table, the legend, the plot link and notes."""
    samples = sorted({run.samples for run in table.cells.values() if run.samples is not None})
    lines = [f"## {table.task} — {table.model}", ""]
    shared = ", ".join(f"{k}={v}" for k, v in sorted(table.common.items()))
    detail = [f"metric `{metric}` × {scale:g}"]
    if samples:
        detail.append(f"{'/'.join(map(str, samples))} documents")
    if shared:
        detail.append(f"all runs: {shared}")
    lines += ["; ".join(detail) + ".", ""]
    headers = ["method", *(column_header(c) for c in table.columns)]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|")
    for row in table.rows:
        cells = [cell(table, row, column, metric, scale) for column in table.columns]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    lines += ["", "(k): k answers held no box — scored as misses (IoU 0)."]
    if plot:
        lines += ["", f"![{metric} against keep ratio]({plot})"]
    lines += [f"- note: {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def render_report(tables: Sequence[Table], metric: str, scale: float = 100.0,
                  plots: Sequence[str | None] | None = None) -> str:
    """The whole report: a title and one section per table (``plots[i]``: the i-th table's figure file)."""
    plots = list(plots) if plots is not None else [None] * len(tables)
    sections = [render_table(t, metric, scale, p) for t, p in zip(tables, plots, strict=True)]
    return "\n".join(["# Evaluation report", "", *sections])
