"""The D²Pruner paper's settings (Implementation Details), as presets for the analysis, the app and evaluation.

K = 2 for every scenario except LLaVA-1.5 localization, where K = 5; α = 1 for understanding tasks and 0.5 for
localization; r_pivot = 0.7 and θ = 0.8 everywhere.
"""

from __future__ import annotations

from d2pruner.families import family_named

TASKS = ("understanding", "localization")


def paper_settings(task: str, family: str) -> dict[str, float | int]:
    """The paper's ``{"alpha", "theta", "r_pivot", "layer"}`` for a task and a model family.

    Arguments:
        task: ``"understanding"`` (question answering, captioning, …) or ``"localization"`` (grounding).
        family: a family name (``"llava"``, ``"llava_next"``, ``"qwen2_5_vl"``, ``"internvl"``, …).
    Raises:
        ValueError: an unknown task or family (the message lists the choices).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if not isinstance(family, str) or not family:
        raise ValueError(f"family must be a family name such as 'llava'; got {family!r}")
    localization = task == "localization"
    return {
        "alpha": 0.5 if localization else 1.0,
        "theta": 0.8,
        "r_pivot": 0.7,
        "layer": family_named(family).paper_localization_layer if localization else 2,
    }
