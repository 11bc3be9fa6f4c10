"""FastV (Chen et al., ECCV 2024): keep the visual tokens the last prompt token attends to most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs, SelectionStep, ranked_steps
from d2pruner.ops import top_n


@dataclass
class FastV(Method):
    """Keep the n tokens with the largest raw attention (no hyperparameters).

    Inputs: ``attention`` [N]. Returns the n largest, ties to the lower index.

    Steps: ``"top-n"`` — the kept tokens by descending attention (ties: lower index first);
    ``score`` = the token's attention.
    """

    name: ClassVar[str] = "fastv"
    requires: ClassVar[tuple[str, ...]] = ("attention",)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        return top_n(inputs.attention, n)

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        return ranked_steps(top_n(inputs.attention, n), inputs.attention, "top-n")
