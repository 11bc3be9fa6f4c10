"""FastV (Chen et al., ECCV 2024): keep the visual tokens the last prompt token attends to most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs
from d2pruner.ops import top_n


@dataclass
class FastV(Method):
    """Keep the n tokens with the largest raw attention (no hyperparameters).

    Inputs: ``attention`` [N]. Returns the n largest, ties to the lower index.
    """

    name: ClassVar[str] = "fastv"
    requires: ClassVar[tuple[str, ...]] = ("attention",)

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        return top_n(inputs.attention, n)
