"""The base of every selection method: validated inputs and the method protocol.

Every method is a small dataclass whose fields are its hyperparameters (validated in ``__post_init__``)
and whose :meth:`Method.select` returns exactly ``min(n, N)`` sorted unique indices into the N visual
tokens. Ties always go to the lower index: rankings use a *stable* descending sort and ``argmax``
(which returns the first maximum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.ops import Grid, check_count


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
    """

    num_tokens: int
    hidden: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    grids: tuple[Grid, ...] = ()
    priors: tuple[torch.Tensor, ...] | None = None
    keys: torch.Tensor | None = None


class Method:
    """Base class of the selection methods (subclasses are dataclasses of hyperparameters).

    Subclasses set ``requires`` (the inputs they cannot do without) and implement :meth:`_select`,
    which is only called with ``1 <= n < N``.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        """Return ``min(n, N)`` sorted unique indices (int64) of the tokens to keep."""
        n = check_count(n)
        missing = [name for name in self.requires if _missing(inputs, name)]
        if missing:
            raise ValueError(f"method {self.name!r} needs {', '.join(missing)}; got None")
        device = _device_of(inputs)
        if n >= inputs.num_tokens:
            return torch.arange(inputs.num_tokens, device=device)
        kept = self._select(inputs, n)
        return torch.sort(kept).values

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        raise NotImplementedError


def _missing(inputs: SelectionInputs, name: str) -> bool:
    if name == "grid":
        return not inputs.grids
    return getattr(inputs, name) is None


def _device_of(inputs: SelectionInputs) -> torch.device:
    for tensor in (inputs.attention, inputs.hidden, inputs.keys):
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")
