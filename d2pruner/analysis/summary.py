"""Everything the app's tables show about one analysis, computed once: answers and their scores, the efficiency
table (analytic prefill FLOPs and KV cache in both conventions, measured prefill and selection time), and the
tables as text rows. A script that calls :func:`summarize` prints exactly the numbers the app shows.

Torch-free at import; :func:`efficiency_table` imports the efficiency arithmetic (hence the families and torch)
when it is called, i.e. once a result exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from d2pruner.analysis.labels import VANILLA, label
from d2pruner.analysis.scoring import AnswerScore, score_answers

CONVENTIONS = {
    "paper": "FastV / D²Pruner Table 4: 4nd² + 2n²d + 2ndm per layer, KV at the pruned length everywhere",
    "exact": "2 FLOPs per MAC, GQA, gated FFN; KV full length below K",
}

ANSWER_HEADERS = ("method", "kept", "answer", "box (x1, y1, x2, y2)", "IoU · GT", "IoU · vanilla", "agreement")
EFFICIENCY_HEADERS = ("method", "visual tokens", "prefill FLOPs", "FLOPs ×", "KV cache", "KV ×", "prefill",
                      "speed-up", "selection")


@dataclass(frozen=True)
class EfficiencyRow:
    """One method's cost (``"vanilla"``: unpruned). FLOPs and KV bytes per convention (``"paper"``, ``"exact"``)."""

    name: str
    visual_tokens: int
    kept_tokens: int
    text_tokens: int
    bytes_per_value: int
    flops: dict[str, float]
    flops_unpruned: dict[str, float]
    kv_bytes: dict[str, float]
    kv_bytes_unpruned: dict[str, float]
    prefill_seconds: float
    select_seconds: float

    def flops_reduction(self, convention: str = "paper") -> float:
        return self.flops_unpruned[convention] / self.flops[convention]

    def kv_reduction(self, convention: str = "paper") -> float:
        return self.kv_bytes_unpruned[convention] / self.kv_bytes[convention]

    def record(self) -> dict:
        """Flat JSON-ready numbers (``flops_paper``, ``kv_bytes_exact``, …)."""
        out = {"visual_tokens": self.visual_tokens, "kept_tokens": self.kept_tokens, "text_tokens": self.text_tokens,
               "bytes_per_value": self.bytes_per_value}
        for conv in CONVENTIONS:
            out.update({f"flops_{conv}": self.flops[conv], f"flops_unpruned_{conv}": self.flops_unpruned[conv],
                        f"kv_bytes_{conv}": self.kv_bytes[conv],
                        f"kv_bytes_unpruned_{conv}": self.kv_bytes_unpruned[conv]})
        out.update(prefill_seconds=self.prefill_seconds, select_seconds=self.select_seconds)
        return out


def efficiency_table(result, arch, *, bytes_per_value: int = 2) -> dict[str, EfficiencyRow]:
    """Vanilla and every method: kept visual tokens (LLaVA-NeXT's newline tokens count as kept), analytic prefill
    FLOPs / KV cache (:func:`d2pruner.efficiency.efficiency_report`) and the measured times.

    Arguments:
        result: an :class:`~d2pruner.analysis.results.AnalysisResult`.
        arch: the language model's :class:`~d2pruner.architecture.ModelArch` (``d2pruner.arch_from_config``).
        bytes_per_value: of the KV cache (2 for 16-bit weights).
    """
    from d2pruner.efficiency import efficiency_report

    visual = int(result.layout.num_tokens)
    protected = visual - int(result.num_candidates)
    text = max(0, int(result.prompt_tokens) - visual)
    rows = [(VANILLA, None, result.vanilla_prefill_seconds, 0.0)]
    rows += [(m, r.num_kept + protected, r.prefill_seconds, r.select_seconds) for m, r in result.methods.items()]
    out = {}
    for name, kept, prefill, select in rows:
        reports = {conv: efficiency_report(arch, text_tokens=text, visual_tokens=visual, layer=result.layer,
                                           kept=kept, bytes_per_value=bytes_per_value, convention=conv)
                   for conv in CONVENTIONS}
        out[name] = EfficiencyRow(
            name, visual, visual if kept is None else int(kept), text, int(bytes_per_value),
            {c: float(r.flops) for c, r in reports.items()}, {c: float(r.flops_unpruned) for c, r in reports.items()},
            {c: float(r.kv_bytes) for c, r in reports.items()},
            {c: float(r.kv_bytes_unpruned) for c, r in reports.items()},
            float(prefill), float(select),
        )
    return out


@dataclass(frozen=True)
class Summary:
    """One analysis, scored and costed.

    Attributes:
        result: the :class:`~d2pruner.analysis.results.AnalysisResult`.
        grounding: grounding mode (boxes are parsed and scored).
        gt_box: the ground truth in original-image pixels, or None.
        answers: :func:`~d2pruner.analysis.scoring.score_answers` (vanilla first).
        efficiency: :func:`efficiency_table` (vanilla first).
        random_weights: the model has random weights (a tiny model): its answers mean nothing.
    """

    result: object
    grounding: bool
    gt_box: tuple[float, float, float, float] | None
    answers: dict[str, AnswerScore]
    efficiency: dict[str, EfficiencyRow]
    random_weights: bool = False
    notes: tuple[str, ...] = field(default=())

    def answer_rows(self) -> list[list[str]]:
        """The answers table as text (headers: :data:`ANSWER_HEADERS`). "no box" is never shown as an IoU."""
        n_all = int(self.result.num_candidates)
        rows = []
        for name, a in self.answers.items():
            vanilla = name == VANILLA
            rows.append([
                label(name), f"{a.num_kept} / {n_all}", a.answer or "(empty)",
                ("no box" if a.box is None else ", ".join(f"{v:.0f}" for v in a.box)) if self.grounding else "–",
                a.vs_ground_truth.text() if self.grounding else "–",
                "–" if vanilla or not self.grounding else a.vs_vanilla.text(),
                "–" if vanilla else f"{a.agreement:.2f}" + (" (same)" if a.agreement == 1.0 else ""),
            ])
        return rows

    def efficiency_rows(self) -> list[list[str]]:
        """The efficiency table as text (headers: :data:`EFFICIENCY_HEADERS`), paper convention."""
        van = self.efficiency[VANILLA]
        rows = []
        for name, e in self.efficiency.items():
            rows.append([
                label(name), f"{e.kept_tokens} / {e.visual_tokens}", si(e.flops["paper"], "FLOPs"),
                f"{e.flops_reduction():.2f}×", byte_text(e.kv_bytes["paper"]), f"{e.kv_reduction():.2f}×",
                f"{e.prefill_seconds * 1e3:.1f} ms",
                f"{van.prefill_seconds / e.prefill_seconds:.2f}×" if e.prefill_seconds > 0 else "–",
                "–" if name == VANILLA else f"{e.select_seconds * 1e3:.1f} ms",
            ])
        return rows

    def iou_means(self) -> dict[str, object]:
        """Mean IoU with the ground truth over the methods (vanilla excluded), "no box" left out and counted."""
        from d2pruner.analysis.scoring import mean_score

        return {"methods": mean_score(a.vs_ground_truth.iou for n, a in self.answers.items() if n != VANILLA)}


def summarize(result, *, arch, bytes_per_value: int = 2, gt_box: Sequence[float] | None = None,
              grounding: bool = True, random_weights: bool = False) -> Summary:
    """Score and cost one analysis (see :class:`Summary`)."""
    gt = None if gt_box is None else tuple(float(v) for v in gt_box)
    return Summary(result, bool(grounding), gt, score_answers(result, gt if grounding else None),
                   efficiency_table(result, arch, bytes_per_value=bytes_per_value), bool(random_weights),
                   tuple(result.notes))


def si(value: float, unit: str) -> str:
    """``1.23e12`` → ``"1.23 TFLOPs"``."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def byte_text(value: float) -> str:
    """``1.5e9`` → ``"1.5 GB"`` (decimal units)."""
    for factor, prefix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.0f} B"
