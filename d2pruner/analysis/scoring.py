"""Scores of an analysis: box IoU (with "no box" kept apart from IoU 0), answer agreement, means that leave missing
values out, and the keep-ratio sweep. Torch-free: numbers in, numbers out — the app shows exactly these.

"No box" is not IoU 0: a method whose answer holds no parsable box has nothing to score, so its IoU is ``None`` with
the status ``"no box"``, and it is left out of means and sweep lines (counted instead).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from d2pruner.analysis.labels import VANILLA
from d2pruner.grounding import box_iou

OK = "ok"
NO_BOX = "no box"
NO_REFERENCE = "no reference"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxScore:
    """IoU of a box with a reference box.

    Attributes:
        iou: in [0, 1], or None when there is nothing to compare.
        status: ``"ok"``; ``"no box"`` (the answer has no parsable box); ``"no reference"`` (no ground truth, or
            the vanilla answer has no box).
    """

    iou: float | None
    status: str

    def text(self, digits: int = 2) -> str:
        """``"0.42"``, ``"no box"`` or ``"–"`` (no reference)."""
        if self.status == OK:
            return f"{self.iou:.{digits}f}"
        return NO_BOX if self.status == NO_BOX else "–"


def box_score(box: Sequence[float] | None, reference: Sequence[float] | None) -> BoxScore:
    """IoU of ``box`` with ``reference``; "no reference" wins over "no box"."""
    if reference is None:
        return BoxScore(None, NO_REFERENCE)
    if box is None:
        return BoxScore(None, NO_BOX)
    return BoxScore(float(box_iou(box, reference)), OK)


def word_f1(answer: str, reference: str) -> float:
    """Answer agreement: SQuAD-style word-level F1 of two texts (case- and punctuation-insensitive); 1 when both
    are empty."""
    a = re.findall(r"\w+", answer.lower())
    b = re.findall(r"\w+", reference.lower())
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    common = sum(min(a.count(w), b.count(w)) for w in set(a))
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class AnswerScore:
    """One row of the answers table: an answer, its box and how it compares.

    Attributes:
        name: ``"vanilla"`` or a method name.
        answer: the generated text; ``box`` its box in original-image pixels (None: none parsed / not grounding).
        num_kept: visual tokens kept (N for vanilla).
        vs_ground_truth / vs_vanilla: box IoUs (:class:`BoxScore`); vanilla's ``vs_vanilla`` is "no reference".
        agreement: word-F1 with the vanilla answer (None for vanilla itself).
    """

    name: str
    answer: str
    box: Box | None
    num_kept: int
    vs_ground_truth: BoxScore
    vs_vanilla: BoxScore
    agreement: float | None


def score_answers(result, gt_box: Sequence[float] | None = None) -> dict[str, AnswerScore]:
    """Vanilla first, then every method of an :class:`~d2pruner.analysis.results.AnalysisResult`, in request order."""
    vanilla_box = None if result.vanilla_box is None else tuple(float(v) for v in result.vanilla_box)
    gt = None if gt_box is None else tuple(float(v) for v in gt_box)
    out = {VANILLA: AnswerScore(VANILLA, result.vanilla_answer, vanilla_box, int(result.num_candidates),
                                box_score(vanilla_box, gt), BoxScore(None, NO_REFERENCE), None)}
    for name, method in result.methods.items():
        box = None if method.box is None else tuple(float(v) for v in method.box)
        out[name] = AnswerScore(name, method.answer, box, int(method.num_kept), box_score(box, gt),
                                box_score(box, vanilla_box), word_f1(method.answer, result.vanilla_answer))
    return out


@dataclass(frozen=True)
class MeanScore:
    """A mean that leaves missing values out: ``mean`` of the ``count`` present values (None when none is),
    ``missing`` how many were left out."""

    mean: float | None
    count: int
    missing: int

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return f"– (no value of {self.missing})"
        note = f" ({self.missing} without a box left out)" if self.missing else ""
        return f"{self.mean:.{digits}f}{note}"


def mean_score(values: Iterable[float | None]) -> MeanScore:
    present, missing = [], 0
    for v in values:
        if v is None or not math.isfinite(v):
            missing += 1
        else:
            present.append(float(v))
    return MeanScore(sum(present) / len(present) if present else None, len(present), missing)


# ---- the keep-ratio sweep


IOU_METRIC = "IoU with the ground-truth box"
AGREEMENT_METRIC = "answer agreement with vanilla (word F1)"


@dataclass(frozen=True)
class SweepPoint:
    method: str
    keep_ratio: float
    num_kept: int
    num_candidates: int
    value: float | None  # None: no box (IoU metric)
    answer: str


@dataclass(frozen=True)
class SweepTable:
    """Every method at every keep ratio.

    Attributes:
        ratios: the keep ratios, largest first.
        metric: :data:`IOU_METRIC` (grounding with a ground truth) or :data:`AGREEMENT_METRIC`.
        points: one per (ratio, method), ratio-major.
        vanilla: the unpruned model's IoU with the ground truth (IoU metric; None otherwise or without a box).
    """

    ratios: tuple[float, ...]
    metric: str
    points: tuple[SweepPoint, ...]
    vanilla: float | None = None
    methods: tuple[str, ...] = field(default=())

    def series(self) -> dict[str, list[float | None]]:
        """Method → one value per ratio (None where there is no box)."""
        out: dict[str, list[float | None]] = {m: [] for m in self.methods}
        for p in self.points:
            out[p.method].append(p.value)
        return out

    def means(self) -> dict[str, MeanScore]:
        return {m: mean_score(values) for m, values in self.series().items()}


def sweep_table(results: Sequence, gt_box: Sequence[float] | None = None, *, grounding: bool = True) -> SweepTable:
    """The sweep of analyses of one request at several keep ratios (``results`` in ratio order, largest first).

    IoU with the ground truth when grounding with a ground truth, else word-F1 agreement with the vanilla answer
    (which every method has)."""
    if not results:
        raise ValueError("a sweep needs at least one analysis")
    use_iou = grounding and gt_box is not None
    points, vanilla = [], None
    for r in results:
        if use_iou:
            vanilla = box_score(r.vanilla_box, gt_box).iou
        for name, m in r.methods.items():
            value = box_score(m.box, gt_box).iou if use_iou else word_f1(m.answer, r.vanilla_answer)
            points.append(SweepPoint(name, float(r.keep_ratio), int(m.num_kept), int(r.num_candidates), value,
                                     m.answer))
    methods = tuple(results[0].methods)
    return SweepTable(tuple(float(r.keep_ratio) for r in results), IOU_METRIC if use_iou else AGREEMENT_METRIC,
                      tuple(points), vanilla, methods)


def parse_ratios(text: str | Sequence[float], *, limit: int = 8) -> list[float]:
    """``"0.75, 0.5, 25%"`` (fractions or percentages) or numbers → unique ratios in (0, 1], largest first.

    Raises:
        ValueError: naming the bad entry.
    """
    if isinstance(text, str):
        parts: list = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    elif isinstance(text, Sequence):
        parts = list(text)
    else:
        raise ValueError(f"ratios must be text such as '0.75, 0.5, 0.25' or a list of numbers; got "
                         f"{type(text).__name__}")
    if not parts:
        raise ValueError("ratios is empty: list at least one keep ratio, e.g. '0.75, 0.5, 0.25, 0.1'")
    ratios = []
    for t in parts:
        try:
            v = float(t.rstrip("%")) / 100 if isinstance(t, str) and t.endswith("%") else float(t)
        except (TypeError, ValueError):
            raise ValueError(f"ratios: {t!r} is not a number; keep ratios are numbers in (0, 1]") from None
        if isinstance(t, bool) or not math.isfinite(v) or not 0.0 < v <= 1.0:
            raise ValueError(f"ratios: every keep ratio must be in (0, 1]; got {t!r}")
        ratios.append(v)
    ratios = sorted(set(ratios), reverse=True)
    if len(ratios) > limit:
        raise ValueError(f"ratios: at most {limit} keep ratios per sweep, got {len(ratios)}")
    return ratios

