"""The models a hosted app offers, read from the family registry (``d2pruner.FAMILIES``): every family's supported
checkpoints and its tiny random model, so a new family file appears in the app without an edit there."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelChoice:
    """One offered model.

    Attributes:
        id: hub id or tiny-model name (what a request names).
        family / family_label: the family's registry name and display name.
        billion_params: the shipped parameter count (None for a tiny model).
        tiny: a tiny random model (mechanics only).
    """

    id: str
    family: str
    family_label: str
    billion_params: float | None
    tiny: bool

    @property
    def label(self) -> str:
        """For a dropdown: ``"LLaVA-1.5 · llava-hf/llava-1.5-7b-hf (7.1 B)"`` / ``"… tiny-llava (random weights)"``."""
        size = "random weights" if self.tiny else f"{self.billion_params:g} B"
        return f"{self.family_label} · {self.id} ({size})"


def model_choices() -> list[ModelChoice]:
    """Every family's checkpoints, then its tiny model, in registry order (imports the families)."""
    from d2pruner.families import FAMILIES

    out = []
    for family in FAMILIES.values():
        out += [ModelChoice(c.hub_id, family.name, family.label, c.billion_params, False) for c in family.checkpoints]
        out.append(ModelChoice(family.tiny_name, family.name, family.label, None, True))
    return out


def family_of(name: str):
    """The family a model id most likely belongs to (``d2pruner.families.guess_family``)."""
    from d2pruner.families import guess_family

    return guess_family(name)


def is_tiny(name: str) -> bool:
    from d2pruner.families import TINY_NAMES

    return name in TINY_NAMES
