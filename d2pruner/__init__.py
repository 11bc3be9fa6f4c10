"""D²Pruner lab: visual-token pruning inside multimodal LLMs, and tools to see why methods keep what they keep.

Public API:
    load(name, device=None, dtype=None) -> Analyzer; Analyzer.analyze(image, prompt, ...) -> AnalysisResult;
        Analyzer.generate(images, prompts, method=..., ...) -> [Generation] (evaluation)
    prune(model, tokens, layer=K, select=fn | keep=idx): context manager pruning inside a transformers model
    select(method, *, n, hidden, attention, grid, prior, keys, **params) -> LongTensor
    METHODS: registry of method names -> hyperparameter dataclasses; paper_settings(task, family)
    FAMILIES: registry of model families (d2pruner/families/, one file each); build_tiny(name)
    hybrid_graph(hidden, grid, alpha, theta) -> HybridGraph (adjacency + labelled edges)
    relative_attention(attention, priors, grids), resize_prior(prior, size)
    efficiency_report / prefill_flops / kv_cache_bytes: analytic prefill cost, unpruned vs pruned
Submodules: analysis (validation, runs, results, scoring, summary, export), families, pruning (hooks), geometry,
grounding, priors (storage, calibration, store), efficiency, viz (figures from result arrays), serving (what a hosted
app needs: the model host, upload checking, limits).

The names above are imported on first use (PEP 562), so ``import d2pruner.viz`` or ``import d2pruner.serving`` does
not import torch: a UI process (``app.py``) starts, and answers ``--help``, before any model code is loaded.
"""

from __future__ import annotations

import importlib

from d2pruner.compat import TESTED_RANGES as TESTED_RANGES
from d2pruner.compat import VERSION, warn_if_untested
from d2pruner.compat import UntestedVersionWarning as UntestedVersionWarning

__version__ = VERSION

#: public name -> the module that defines it (imported on first access)
_EXPORTS = {
    "AnalysisResult": "d2pruner.analysis",
    "Analyzer": "d2pruner.analysis",
    "Generation": "d2pruner.analysis",
    "MethodResult": "d2pruner.analysis",
    "Observation": "d2pruner.analysis",
    "keep_count": "d2pruner.analysis",
    "load": "d2pruner.analysis",
    "to_rgb": "d2pruner.analysis",
    "EfficiencyReport": "d2pruner.efficiency",
    "ModelArch": "d2pruner.efficiency",
    "arch_from_config": "d2pruner.efficiency",
    "efficiency_report": "d2pruner.efficiency",
    "kv_cache_bytes": "d2pruner.efficiency",
    "prefill_flops": "d2pruner.efficiency",
    "ARCHITECTURES": "d2pruner.families",
    "FAMILIES": "d2pruner.families",
    "TINY_NAMES": "d2pruner.families",
    "build_tiny": "d2pruner.families",
    "family_for": "d2pruner.families",
    "get_arch": "d2pruner.families",
    "HybridGraph": "d2pruner.graph",
    "hybrid_graph": "d2pruner.graph",
    "spatial_adjacency": "d2pruner.graph",
    "box_iou": "d2pruner.grounding",
    "METHODS": "d2pruner.methods",
    "build_method": "d2pruner.methods",
    "relative_attention": "d2pruner.methods",
    "select": "d2pruner.methods",
    "GridView": "d2pruner.ops",
    "paper_settings": "d2pruner.presets",
    "Prior": "d2pruner.priors",
    "load_prior": "d2pruner.priors",
    "resize_prior": "d2pruner.priors",
    "save_prior": "d2pruner.priors",
    "Prefix": "d2pruner.pruning",
    "PruneInputs": "d2pruner.pruning",
    "PruneState": "d2pruner.pruning",
    "capture": "d2pruner.pruning",
    "prune": "d2pruner.pruning",
    "VisualTokens": "d2pruner.tokens",
}

__all__ = sorted([*_EXPORTS, "TESTED_RANGES", "UntestedVersionWarning", "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a submodule (d2pruner.viz, d2pruner.analysis, …) reached as an attribute
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups (and monkeypatching) see a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


warn_if_untested()
