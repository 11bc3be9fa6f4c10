"""Names and one-paragraph explanations of the methods, for people (tables, figures, the app's method guide).

Torch-free: the keys are ``d2pruner.METHODS`` names (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass

VANILLA = "vanilla"


@dataclass(frozen=True)
class MethodInfo:
    """How a method is shown.

    Attributes:
        label: its name in tables, legends and facet titles.
        summary: one paragraph: what it keeps, and why.
        paper: where it comes from (authors, title, venue, link).
    """

    label: str
    summary: str
    paper: str


METHOD_INFO: dict[str, MethodInfo] = {
    "fastv": MethodInfo(
        "FastV",
        "Keeps the n visual tokens the last prompt token attends to most at layer K−1 (mean over heads). Simple "
        "and fast, but attention is biased by position (e.g. towards the bottom rows in LLaVA-1.5) and the kept "
        "tokens cluster: neighbours of one bright spot say the same thing.",
        "Chen et al., “An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large "
        "Vision-Language Models”, ECCV 2024 — arxiv.org/abs/2403.06764",
    ),
    "dart": MethodInfo(
        "DART (exact n)",
        "Duplication-aware: picks 8 pivot tokens (largest L1 norm of the layer-(K−1) keys), then each pivot keeps "
        "the remaining tokens least similar to it, so duplicates of a pivot are dropped. This is our reading, "
        "keeping exactly n tokens with 8 image pivots; “DART (official)” reproduces the released code.",
        "Wen et al., “Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More”, "
        "EMNLP 2025 — arxiv.org/abs/2502.11494",
    ),
    "dart-official": MethodInfo(
        "DART (official)",
        "The selection of the official DART code: 4 image and 4 text pivots (post-RoPE key norms), cosine of the "
        "final-normed hidden states, pivots in the code's set order. It keeps 4 + 8·⌊n/8⌋ tokens, not exactly n — "
        "the tables show its real count.",
        "Wen et al., EMNLP 2025; code github.com/ZichenWen1/DART",
    ),
    "divprune": MethodInfo(
        "DivPrune",
        "Diversity only: a max–min greedy selection on cosine distances of the hidden states — each pick is the "
        "token farthest from everything kept so far. Ignores attention, so it covers the whole image evenly.",
        "Alvar et al., “DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models”, CVPR 2025 — "
        "arxiv.org/abs/2503.02175",
    ),
    "mmr": MethodInfo(
        "MMR",
        "IDPruner's rule, maximal marginal relevance: each pick maximises λ·importance − (1−λ)·(similarity to what "
        "is kept), λ = 0.5. IDPruner learns its importance; here it is D²Pruner's relative attention.",
        "IDPruner, arXiv 2602.13315; MMR after Carbonell & Goldstein, SIGIR 1998",
    ),
    "d2pruner": MethodInfo(
        "D²Pruner",
        "Debiased importance and structural diversity: attention is divided by a calibrated positional prior "
        "(relative attention, eq. 3); the r_pivot share of n goes to the tokens with the largest relative attention "
        "(pivots), which exclude their neighbours on a hybrid graph (similar AND adjacent when α = 0.5); a greedy "
        "independent set on that graph fills the rest, so kept tokens are important and not redundant.",
        "“Debiased Importance and Structural Diversity for MLLM Token Pruning” (D²Pruner), AAAI 2026",
    ),
    "d2pruner-di": MethodInfo(
        "DI only (ablation)",
        "An ablation of D²Pruner: the n tokens with the largest relative attention (debiased importance), without "
        "the graph — FastV on debiased attention. Comparing it with D²Pruner shows what the diversity step adds.",
        "D²Pruner, AAAI 2026 (ablation)",
    ),
    "d2pruner-nospatial": MethodInfo(
        "SD w/o spatial (ablation)",
        "An ablation of D²Pruner with α = 1: the graph joins tokens by semantic similarity alone.",
        "D²Pruner, AAAI 2026 (ablation)",
    ),
}

#: display names, ``"vanilla"`` included
METHOD_LABELS: dict[str, str] = {VANILLA: "Vanilla (unpruned)", **{m: i.label for m, i in METHOD_INFO.items()}}


def label(name: str) -> str:
    """The display name of a method (or ``"vanilla"``); unknown names are shown as they are."""
    return METHOD_LABELS.get(name, name)
