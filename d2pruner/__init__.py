"""D²Pruner lab: visual-token pruning inside multimodal LLMs, and tools to see why methods keep what they keep.

Public API:
    select(method, *, n, hidden, attention, grid, prior, keys, **params) -> LongTensor
    METHODS: registry of method names -> hyperparameter dataclasses
    hybrid_graph(hidden, grid, alpha, theta) -> HybridGraph (adjacency + labelled edges)
    relative_attention(attention, priors, grids), resize_prior(prior, size)
    efficiency_report / prefill_flops / kv_cache_bytes: analytic prefill cost, unpruned vs pruned
Submodules: layout (token -> image regions), grounding (prompts, box parsing, IoU), efficiency.
"""

from d2pruner.efficiency import (
    ARCHITECTURES,
    EfficiencyReport,
    ModelArch,
    arch_from_config,
    efficiency_report,
    get_arch,
    kv_cache_bytes,
    prefill_flops,
)
from d2pruner.graph import HybridGraph, hybrid_graph, spatial_adjacency
from d2pruner.methods import METHODS, build_method, relative_attention, select
from d2pruner.priors import resize_prior

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "EfficiencyReport",
    "HybridGraph",
    "ModelArch",
    "__version__",
    "arch_from_config",
    "build_method",
    "efficiency_report",
    "get_arch",
    "hybrid_graph",
    "kv_cache_bytes",
    "prefill_flops",
    "relative_attention",
    "resize_prior",
    "select",
    "spatial_adjacency",
]
