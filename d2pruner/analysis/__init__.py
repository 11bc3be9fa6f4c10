"""The analysis layer: validate a request once, run the shared unpruned pass and all methods in one batched
generation, and return results; scoring, summaries and exports the app shows are here too, so a script gets exactly
the numbers the UI shows."""

from __future__ import annotations

from d2pruner.analysis.analyzer import Analyzer, load
from d2pruner.analysis.inputs import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, keep_count, to_rgb
from d2pruner.analysis.results import AnalysisResult, Generation, MethodResult, Observation
from d2pruner.analysis.settings import AnalysisSettings

__all__ = [
    "MAX_NEW_TOKENS",
    "MAX_PROMPT_CHARS",
    "AnalysisResult",
    "AnalysisSettings",
    "Analyzer",
    "Generation",
    "MethodResult",
    "Observation",
    "keep_count",
    "load",
    "to_rgb",
]
