"""A method's selection replayed step by step, and each step explained in a sentence — from the
:class:`~d2pruner.methods.SelectionStep` records of ``analyze(steps=True)``. Torch-free (the app's step slider and a
script share it).

D²Pruner: the pivots first (largest relative attention; each excludes its graph neighbours), then the greedy
independent-set picks (each excludes its neighbours), then any fill. DivPrune and MMR: their greedy order. DART and
DART (official): the pivots, then each pivot's least-similar picks. FastV and DI only: descending score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from d2pruner.analysis.labels import label

#: what a step's ``score`` is, per (method, phase); the fallback is per phase
SCORE_NAMES = {
    ("fastv", "top-n"): "attention",
    ("d2pruner-di", "top-n"): "relative attention",
    ("divprune", "greedy"): "cosine distance to the nearest kept token",
    ("mmr", "greedy"): "MMR score λ·importance − (1−λ)·max similarity",
    ("dart", "pivot"): "L1 norm of its layer-(K−1) key",
    ("dart-official", "pivot"): "L1 norm of its post-RoPE key",
    ("d2pruner", "pivot"): "relative attention",
    ("d2pruner", "independent-set"): "relative attention",
    ("d2pruner", "fill"): "relative attention",
}
PHASE_NAMES = {
    "all": "keep all", "top-n": "top-n", "greedy": "greedy pick", "pivot": "pivot",
    "duplicate-aware": "duplicate-aware pick", "independent-set": "independent-set pick", "fill": "fill",
}


@dataclass(frozen=True)
class StepState:
    """The selection after step ``index`` (0-based) of ``total``.

    Attributes:
        kept: tokens kept so far, in pick order (the current one last).
        excluded: tokens excluded so far (D²Pruner: neighbours of pivots and picks), ascending.
        newly_excluded: what the current step excluded.
        pivots: the pivots among ``kept``.
        step: the current :class:`~d2pruner.methods.SelectionStep`.
    """

    index: int
    total: int
    kept: tuple[int, ...]
    excluded: tuple[int, ...]
    newly_excluded: tuple[int, ...]
    pivots: tuple[int, ...]
    step: object


def replay(steps: Sequence, index: int) -> StepState:
    """The state after ``steps[index]`` (clipped to the range)."""
    if not steps:
        raise ValueError("no selection steps were recorded (analyze(..., steps=True))")
    index = max(0, min(int(index), len(steps) - 1))
    kept, excluded, pivots = [], set(), []
    for s in steps[: index + 1]:
        kept.append(int(s.token))
        excluded.update(int(i) for i in s.excluded)
        if s.phase == "pivot":
            pivots.append(int(s.token))
    current = steps[index]
    return StepState(index, len(steps), tuple(kept), tuple(sorted(excluded - set(kept))),
                     tuple(int(i) for i in current.excluded), tuple(pivots), current)


def explain(method: str, state: StepState, *, where: Callable[[int], str] = lambda t: f"#{t}",
            rank: Callable[[int], int | None] | None = None) -> str:
    """One sentence (markdown) about the current step: what was picked, why, and what it excluded.

    Arguments:
        where: token index → a description of its position (e.g. "#37 (image grid, row 4, col 5)").
        rank: token index → its rank by relative attention (1 = largest), or None.
    """
    s = state.step
    name = label(method)
    what = PHASE_NAMES.get(s.phase, s.phase)
    score_name = SCORE_NAMES.get((method, s.phase), "score")
    head = f"**Step {state.index + 1} of {state.total}** · {name} · {what}: token {where(int(s.token))}"
    parts = [head]
    if s.score is not None:
        if s.phase == "duplicate-aware":
            parts.append(f"cosine similarity to its pivot {-s.score:.3f} (the least similar are kept)")
        else:
            parts.append(f"{score_name} {s.score:.4g}")
    if rank is not None and (r := rank(int(s.token))) is not None:
        parts.append(f"rank {r} by relative attention")
    text = " · ".join(parts) + "."
    if s.phase == "pivot" and method.startswith("d2pruner"):
        text += (" Pivots are the tokens with the largest relative attention (attention ÷ positional prior)"
                 + (f"; this one excludes {len(s.excluded)} graph neighbour(s): "
                    f"{', '.join(f'#{i}' for i in s.excluded[:12])}{'…' if len(s.excluded) > 12 else ''} — similar "
                    "and adjacent, so keeping them would repeat it." if s.excluded else "; it has no new neighbours "
                    "to exclude."))
    elif s.phase == "independent-set":
        text += (" The independent set walks the remaining tokens by relative attention and keeps one only if no "
                 "kept token is its graph neighbour"
                 + (f"; it now excludes {len(s.excluded)}: {', '.join(f'#{i}' for i in s.excluded[:12])}"
                    f"{'…' if len(s.excluded) > 12 else ''}." if s.excluded else "."))
    elif s.phase == "fill":
        text += " The independent set ran out of candidates, so the rest is filled by relative attention."
    elif s.phase == "duplicate-aware":
        pivot = f"image pivot #{s.pivot}" if s.pivot is not None else f"text pivot at position {s.text_pivot}"
        text += f" Chosen by the {pivot}: each pivot keeps the tokens least similar to it (duplicates are dropped)."
    elif s.phase == "pivot":
        text += " Pivots are the tokens whose keys have the largest L1 norm."
    elif s.phase == "greedy" and method == "divprune":
        text += " Each pick is the token farthest (cosine distance) from everything kept so far."
    elif s.phase == "greedy":
        text += " Each pick balances importance against similarity to what is already kept."
    elif s.phase == "top-n":
        text += " Kept because of its rank alone; neighbours and duplicates are not considered."
    return text


def rank_of(values: Sequence[float]) -> np.ndarray:
    """[N] rank of each value, 1 = largest (ties: lower index first, as the methods break them)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks
