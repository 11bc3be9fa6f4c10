"""The base of every selection method: validated inputs, the method protocol and step-by-step records.

Every method is a small dataclass whose fields are its hyperparameters (validated in ``__post_init__``)
and whose :meth:`Method.select` returns exactly ``min(n, N)`` sorted unique indices into the N visual
tokens (``dart-official`` alone keeps the official code's count instead, see its module). Ties always go
to the lower index: rankings use a *stable* descending sort and ``argmax`` (which returns the first
maximum).

:meth:`Method.select_steps` returns the same indices together with the order in which the method chose
them, one :class:`SelectionStep` per kept token (what ``select(..., return_steps=True)`` gives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.ops import Grid, check_count

#: the phase names a :class:`SelectionStep` can carry
PHASES = ("all", "top-n", "greedy", "pivot", "duplicate-aware", "independent-set", "fill")


@dataclass(frozen=True)
class SelectionInputs:
    """The validated inputs of one selection call (all tensors on one device).

    Attributes:
        num_tokens: N, the number of candidate visual tokens.
        hidden: [N, D] visual hidden states entering layer K, or None.
        attention: [N] float32 attention of the last prompt token at layer K−1, or None.
        grids: the (h, w) grids the N tokens form, row-major, concatenated in order; () if not given.
        priors: one 2-D prior per grid (not yet resized), or None.
        keys: [N, Dk] layer-(K−1) keys of the visual tokens, or None.
        seq_keys: [L, Dk] post-RoPE layer-(K−1) keys of *every* token of the prompt (L = prompt length,
            heads concatenated), or None (``dart-official``).
        seq_normed: [L, D] output of layer K−1 (the hidden states entering layer K) of every prompt token,
            passed through the model's final norm, or None (``dart-official``).
        visual_index: [N] int64 sequence position of each candidate, strictly increasing, or None.
        text_mask: [L] bool, True at the prompt's text tokens (never at a visual token), or None.
    """

    num_tokens: int
    hidden: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    grids: tuple[Grid, ...] = ()
    priors: tuple[torch.Tensor, ...] | None = None
    keys: torch.Tensor | None = None
    seq_keys: torch.Tensor | None = None
    seq_normed: torch.Tensor | None = None
    visual_index: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class SelectionStep:
    """One kept token, in the order the method chose it.

    Attributes:
        token: index into the N candidates.
        phase: ``"all"`` (n ≥ N), ``"top-n"`` (FastV, DI only), ``"greedy"`` (DivPrune, MMR), ``"pivot"`` /
            ``"duplicate-aware"`` (DART, dart-official), ``"pivot"`` / ``"independent-set"`` / ``"fill"``
            (D²Pruner).
        score: the value that decided this pick (see each method's "Steps" docstring section), or None.
        excluded: D²Pruner only — the candidates this pick newly excluded from later independent-set picks
            (ascending); empty for every other method.
        pivot: DART / dart-official ``"duplicate-aware"`` steps — the candidate index of the visual pivot
            whose least similar tokens this pick belongs to; None otherwise.
        text_pivot: dart-official only — the *sequence position* of the text pivot that chose this token
            (then ``pivot`` is None); None otherwise.
    """

    token: int
    phase: str
    score: float | None = None
    excluded: tuple[int, ...] = ()
    pivot: int | None = None
    text_pivot: int | None = None


@dataclass(frozen=True)
class Selection:
    """A selection with its history.

    Attributes:
        kept: [k] int64 sorted unique indices — exactly what :meth:`Method.select` returns.
        steps: one :class:`SelectionStep` per kept token, in the order the method chose them.
    """

    kept: torch.Tensor
    steps: tuple[SelectionStep, ...]


class Method:
    """Base class of the selection methods (subclasses are dataclasses of hyperparameters).

    Subclasses set ``requires`` (the inputs they cannot do without) and implement :meth:`_select` and
    :meth:`_steps`, which are only called with ``1 <= n < N``.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    #: appended to the "needs …" error when a required input is missing
    requires_hint: ClassVar[str] = ""

    def select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        """Return the sorted unique indices (int64) of the tokens to keep: ``min(n, N)`` of them (``dart-official``:
        the official code's count, ``official_keep_count``)."""
        n = self._check(inputs, n)
        if n >= inputs.num_tokens:
            return torch.arange(inputs.num_tokens, device=_device_of(inputs))
        kept = self._select(inputs, n)
        return torch.sort(kept).values

    def select_steps(self, inputs: SelectionInputs, n: int) -> Selection:
        """The selection of :meth:`select` with the order in which the tokens were chosen."""
        n = self._check(inputs, n)
        device = _device_of(inputs)
        if n >= inputs.num_tokens:
            steps = tuple(SelectionStep(token=i, phase="all") for i in range(inputs.num_tokens))
            return Selection(kept=torch.arange(inputs.num_tokens, device=device), steps=steps)
        steps = tuple(self._steps(inputs, n))
        tokens = torch.tensor([step.token for step in steps], dtype=torch.long, device=device)
        return Selection(kept=torch.sort(tokens).values, steps=steps)

    def _check(self, inputs: SelectionInputs, n: int) -> int:
        n = check_count(n)
        missing = [name for name in self.requires if _missing(inputs, name)]
        if missing:
            hint = f" ({self.requires_hint})" if self.requires_hint else ""
            raise ValueError(f"method {self.name!r} needs {', '.join(missing)}; got None{hint}")
        return n

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        raise NotImplementedError

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        raise NotImplementedError


def ranked_steps(order: torch.Tensor, scores: torch.Tensor, phase: str) -> list[SelectionStep]:
    """Steps for the tokens chosen in ``order`` [k], each decided by its entry of ``scores`` [N]."""
    return recorded_steps(order, scores[order], phase)


def recorded_steps(picks: torch.Tensor, values: torch.Tensor, phase: str) -> list[SelectionStep]:
    """Steps for ``picks`` [k] in order, ``values`` [k] the score that decided each (one host transfer each)."""
    tokens, scores = picks.tolist(), values.float().tolist()
    return [SelectionStep(token=t, phase=phase, score=v) for t, v in zip(tokens, scores, strict=True)]


def _missing(inputs: SelectionInputs, name: str) -> bool:
    if name == "grid":
        return not inputs.grids
    return getattr(inputs, name) is None


def _device_of(inputs: SelectionInputs) -> torch.device:
    for tensor in (inputs.attention, inputs.hidden, inputs.keys, inputs.seq_keys, inputs.visual_index):
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")
