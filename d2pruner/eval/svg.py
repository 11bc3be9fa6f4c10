"""A dependency-free SVG line chart: accuracy against keep ratio per method, like the paper's Fig. 4.

matplotlib is not part of any stack here and plotly's static export needs a browser, so the figure is
written as SVG text directly (any browser, GitHub and most viewers render it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

#: matplotlib's "tab10" colours, in order
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
_MARGIN = {"left": 64, "right": 200, "top": 40, "bottom": 52}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high] (steps of 1, 2 or 5 × 10^k)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got [{low}, {high}]")
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    baseline: float | None = None,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 720,
    height: int = 420,
) -> str:
    """An SVG document: one polyline with markers per series, a dashed horizontal line for ``baseline``.

    Arguments:
        series: label → (x, y) points (sorted by x here); empty series are skipped.
        baseline: the unpruned model's value, drawn across the plot and named in the legend.
        title, x_label, y_label: text (escaped).
    Raises:
        ValueError: nothing to draw, or a non-finite value.
    """
    points = [p for pts in series.values() for p in pts]
    ys = [y for _, y in points] + ([baseline] if baseline is not None else [])
    if not points:
        raise ValueError("line_chart needs at least one point")
    if not all(math.isfinite(v) for p in points for v in p) or not all(math.isfinite(y) for y in ys):
        raise ValueError("line_chart values must be finite")
    xs = [x for x, _ in points]
    x_ticks = nice_ticks(min(xs), max(xs))
    top_value = max(ys)
    y_ticks = nice_ticks(min(0.0, min(ys)), top_value + 0.05 * abs(top_value))  # headroom above the best value
    left, top = _MARGIN["left"], _MARGIN["top"]
    plot_w = width - left - _MARGIN["right"]
    plot_h = height - top - _MARGIN["bottom"]

    def sx(x: float) -> float:
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + plot_w / 2:.1f}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for t in x_ticks:
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + plot_h}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in y_ticks:
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + plot_w}" y2="{sy(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="16" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">{escape(y_label)}</text>')
    legend: list[tuple[str, str, bool]] = []
    if baseline is not None:
        out.append(f'<line x1="{left}" y1="{sy(baseline):.1f}" x2="{left + plot_w}" y2="{sy(baseline):.1f}" '
                   'stroke="#000" stroke-dasharray="6 4"/>')
        legend.append(("unpruned", "#000", True))
    drawn = [(label, sorted(pts)) for label, pts in series.items() if pts]
    for i, (label, pts) in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}"/>' for x, y in pts]
        legend.append((label, colour, False))
    for i, (label, colour, dashed) in enumerate(legend):
        y = top + 10 + 20 * i
        x = left + plot_w + 16
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{x + 30}" y="{y + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
