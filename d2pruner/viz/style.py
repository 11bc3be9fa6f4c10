"""What every renderer shares: method names and colours, colour scales, fonts, colour-value transforms, ranges and
colour-bar ticks that stay readable for tiny values (a prior of 1e-4 never gets ticks that all read "0")."""

from __future__ import annotations

import math

import numpy as np
import plotly

from d2pruner.analysis.labels import METHOD_LABELS as _LABELS
from d2pruner.analysis.labels import VANILLA

#: display names of the methods (``d2pruner.METHODS`` keys, and ``"vanilla"``)
METHOD_LABELS: dict[str, str] = dict(_LABELS)
#: one colour per method, used for every line, box and facet of that method
METHOD_COLORS: dict[str, str] = {
    "fastv": "#B45309",
    "dart": "#1D4ED8",
    "dart-official": "#0E7490",
    "divprune": "#7C3AED",
    "mmr": "#BE185D",
    "d2pruner": "#DC2626",
    "d2pruner-di": "#047857",
    "d2pruner-nospatial": "#A16207",
    VANILLA: "#4B5563",
}
VANILLA_COLOR = "#E5E7EB"  # the vanilla box drawn in other facets (dotted, light)
GT_COLOR = "#16A34A"
SPATIAL_EDGE_COLOR = "#0284C7"
SEMANTIC_EDGE_COLOR = "#DB2777"
NODE_COLOR = "#F8FAFC"
ATTENTION_COLORSCALE = "Inferno"
RELATIVE_COLORSCALE = "Viridis"
PRUNED_SHADE = (8, 10, 24, 0.78)
OUTSIDE_SHADE = (107, 114, 128, 0.82)  # image area no token of the view covers (LLaVA-1.5's centre crop)
HEATMAP_OPACITY = 0.72
DISPLAY_MAX_SIDE = 640
FONT_FAMILY = "Inter, 'Source Sans Pro', 'DejaVu Sans', Arial, sans-serif"
TEXT = "#111827"
MUTED = "#4B5563"  # 7.6:1 on white


def method_color(name: str) -> str:
    return METHOD_COLORS.get(name, "#111827")


def color_values(values: np.ndarray, log: bool) -> tuple[np.ndarray, float]:
    """Values used for colour (log10 when asked; non-positive values clipped to a floor)."""
    values = np.asarray(values, dtype=np.float64)
    if not log:
        return np.where(np.isfinite(values), values, np.nan), 0.0
    finite = values[np.isfinite(values) & (values > 0)]
    floor = max(float(finite.min()) if finite.size else 1e-12, 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.where(np.isfinite(values), np.maximum(values, floor), np.nan)), floor


def value_range(*arrays: np.ndarray, log: bool = False) -> tuple[float, float]:
    """(min, max) over the finite colour values of all arrays (log10 when ``log``); a flat range is widened."""
    parts = [color_values(a, log)[0].ravel() for a in arrays]
    allv = np.concatenate(parts) if parts else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    if allv.size == 0:
        return 0.0, 1.0
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def _distinct(values: list[float], fmt) -> list[str]:
    for digits in range(2, 8):
        labels = [fmt(v, digits) for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def colorbar_ticks(lo: float, hi: float, *, log: bool = False, count: int = 5) -> dict:
    """Explicit colour-bar ticks (``tickvals`` / ``ticktext``) with labels that differ from each other.

    Linear: "nice" steps with as many significant digits as needed (1.2e-4, 1.4e-4 … never all "0"). Log
    (colour values are log10): integer exponents shown as 1e-4 …, or fractional ones as plain numbers when the range
    spans less than two decades."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return {}
    if log and hi - lo >= 2:
        first, last = math.floor(lo), math.ceil(hi)
        step = max(1, (last - first) // (count - 1))
        vals = [v for v in range(first, last + 1, step) if lo - 1e-9 <= v <= hi + 1e-9] or [first]
        return dict(tickvals=vals, ticktext=[f"1e{v}" for v in vals])
    raw = (hi - lo) / (count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    vals = [start + i * step for i in range(count + 1) if start + i * step <= hi + step * 1e-6]
    if len(vals) < 2:
        vals = [lo, hi]
    if log:
        return dict(tickvals=vals, ticktext=_distinct([10 ** v for v in vals], lambda v, d: f"{v:.{d}g}"))
    return dict(tickvals=vals, ticktext=_distinct(vals, lambda v, d: f"{v:.{d}g}"))


#: plotly ≥ 6 writes numpy arrays as base64 typed arrays, so float32 halves their size; older versions write decimal
#: text, where float64 values rounded to a few digits are the short ones
_TYPED_ARRAYS = int(plotly.__version__.split(".")[0]) >= 6


def compact(values: np.ndarray, digits: int = 4) -> np.ndarray:
    """Values rounded to ``digits`` significant digits, as the smallest array plotly serialises well (what a colour
    can show anyway)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mag = np.where((v != 0) & np.isfinite(v), np.floor(np.log10(np.abs(v))), 0)
        scale = 10.0 ** (digits - 1 - mag)
        out = np.round(v * scale) / scale
    out = np.where(np.isfinite(v), out, np.nan)
    return out.astype(np.float32) if _TYPED_ARRAYS else out


def fmt(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3g}"


def pixels(values: np.ndarray) -> np.ndarray:
    """Coordinates rounded to whole pixels, as the smallest integer array (markers and lines need no more)."""
    v = np.round(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-1e4))
    return v.astype(np.int16 if _TYPED_ARRAYS and np.abs(v).max(initial=0) < 32000 else np.int64)


def indices(values) -> np.ndarray:
    """Token indices as the smallest integer array."""
    v = np.asarray(values, dtype=np.int64)
    return v.astype(np.int16) if _TYPED_ARRAYS and v.size and v.max() < 32000 else v
