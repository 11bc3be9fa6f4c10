"""The analysis layer: validate a request once, run the shared unpruned pass and all methods in one batched
generation, and return results; scoring, summaries and exports the app shows are here too, so a script gets exactly
the numbers the UI shows.

Modules: :mod:`~d2pruner.analysis.analyzer` (``load``, ``Analyzer``), :mod:`~d2pruner.analysis.settings` and
:mod:`~d2pruner.analysis.inputs` (validation, limits), :mod:`~d2pruner.analysis.run`, :mod:`~d2pruner.analysis.results`,
and — torch-free, for scripts and the app alike — :mod:`~d2pruner.analysis.scoring` (IoU, agreement, sweep metrics),
:mod:`~d2pruner.analysis.summary` (the efficiency table and everything the app's tables show) and
:mod:`~d2pruner.analysis.export` (the JSON format). The names below are imported on first use, so importing one of
the torch-free modules does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Analyzer": "d2pruner.analysis.analyzer",
    "load": "d2pruner.analysis.analyzer",
    "MAX_NEW_TOKENS": "d2pruner.analysis.inputs",
    "MAX_PROMPT_CHARS": "d2pruner.analysis.inputs",
    "keep_count": "d2pruner.analysis.inputs",
    "to_rgb": "d2pruner.analysis.inputs",
    "AnalysisResult": "d2pruner.analysis.results",
    "Generation": "d2pruner.analysis.results",
    "MethodResult": "d2pruner.analysis.results",
    "Observation": "d2pruner.analysis.results",
    "AnalysisSettings": "d2pruner.analysis.settings",
    "PRIOR_CHOICES": "d2pruner.analysis.settings",
}

__all__ = [  # noqa: RUF022 - grouped by module, like _EXPORTS
    "Analyzer", "load", "MAX_NEW_TOKENS", "MAX_PROMPT_CHARS", "keep_count", "to_rgb", "AnalysisResult", "Generation",
    "MethodResult", "Observation", "AnalysisSettings", "PRIOR_CHOICES",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
