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
Submodules: analysis (validation, runs, results, scoring, export), families, pruning (hooks), geometry, grounding,
priors (storage, calibration, store), efficiency, viz (figures from result arrays; imported on demand).
"""

from d2pruner.analysis import (
    AnalysisResult,
    Analyzer,
    Generation,
    MethodResult,
    Observation,
    keep_count,
    load,
    to_rgb,
)
from d2pruner.compat import TESTED_RANGES, VERSION, UntestedVersionWarning, warn_if_untested
from d2pruner.efficiency import (
    EfficiencyReport,
    ModelArch,
    arch_from_config,
    efficiency_report,
    kv_cache_bytes,
    prefill_flops,
)
from d2pruner.families import ARCHITECTURES, FAMILIES, TINY_NAMES, build_tiny, family_for, get_arch
from d2pruner.graph import HybridGraph, hybrid_graph, spatial_adjacency
from d2pruner.grounding import box_iou
from d2pruner.methods import METHODS, build_method, relative_attention, select
from d2pruner.ops import GridView
from d2pruner.presets import paper_settings
from d2pruner.priors import Prior, load_prior, resize_prior, save_prior
from d2pruner.pruning import Prefix, PruneInputs, PruneState, capture, prune
from d2pruner.tokens import VisualTokens

__version__ = VERSION

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "METHODS",
    "TESTED_RANGES",
    "TINY_NAMES",
    "AnalysisResult",
    "Analyzer",
    "EfficiencyReport",
    "Generation",
    "GridView",
    "HybridGraph",
    "MethodResult",
    "ModelArch",
    "Observation",
    "Prefix",
    "Prior",
    "PruneInputs",
    "PruneState",
    "UntestedVersionWarning",
    "VisualTokens",
    "__version__",
    "arch_from_config",
    "box_iou",
    "build_method",
    "build_tiny",
    "capture",
    "efficiency_report",
    "family_for",
    "get_arch",
    "hybrid_graph",
    "keep_count",
    "kv_cache_bytes",
    "load",
    "load_prior",
    "paper_settings",
    "prefill_flops",
    "prune",
    "relative_attention",
    "resize_prior",
    "save_prior",
    "select",
    "spatial_adjacency",
    "to_rgb",
]

warn_if_untested()
