"""The settings of one analysis, validated once at the public boundary (``Analyzer.analyze``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from d2pruner.analysis.inputs import MAX_NEW_TOKENS, check_int, check_methods, keep_count, route_params
from d2pruner.methods import METHODS

#: what ``prior=`` accepts as a name
PRIOR_NAMES = ("auto", "natural", "content-free", "uniform")
#: the prior kinds offered to people (label, value), in the order a UI lists them
PRIOR_CHOICES = (
    ("calibrated natural prior (auto)", "auto"),
    ("content-free prior (blank and noise images)", "content-free"),
    ("uniform (no debiasing)", "uniform"),
)

#: how LLaVA-NeXT's / OneVision's newline tokens count in the budget (see :class:`AnalysisSettings`)
NEWLINE_BUDGETS = ("excluded", "counted")


@dataclass(frozen=True)
class AnalysisSettings:
    """Validated settings.

    Attributes:
        methods: method names, in request order.
        keep_ratio: in (0, 1]; n = max(1, round(r · N)).
        layer: K, in [1, num_layers).
        grounding: grounding mode (the family's grounding prompt; boxes parsed).
        max_new_tokens: in [1, MAX_NEW_TOKENS].
        prior: a name from :data:`PRIOR_NAMES`, or a given prior (``Prior`` or tensors; checked where used).
        params: method → its hyperparameters.
        graph: α and θ of the displayed hybrid graph (D²Pruner's unless it is not requested: its defaults).
        steps: record each method's selection step by step.
        heads: keep every layer's attention row per head.
        method_batch: at most this many methods per batched generation (None: as many as memory allows).
        newline_budget: ``"excluded"`` (n counts the N grid tokens; LLaVA-NeXT's / OneVision's newline tokens are
            kept on top, our default) or ``"counted"`` (the peers' convention: the budget is a share of every
            visual token, newlines included, and the always-kept newlines are taken out of it).
    """

    methods: tuple[str, ...]
    keep_ratio: float
    layer: int
    grounding: bool
    max_new_tokens: int
    prior: object
    params: dict
    graph: dict
    steps: bool = False
    heads: bool = False
    method_batch: int | None = None
    newline_budget: str = "excluded"

    def budget(self, num_candidates: int, num_protected: int) -> int:
        """n, the candidates kept: ``max(1, round(r · N))``, or with ``newline_budget="counted"``
        ``max(1, round(r · (N + P)) − P)`` (P protected newline tokens, always kept)."""
        if self.newline_budget == "counted" and num_protected:
            return max(1, keep_count(self.keep_ratio, num_candidates + num_protected) - num_protected)
        return keep_count(self.keep_ratio, num_candidates)

    @classmethod
    def create(
        cls,
        *,
        num_layers: int,
        methods,
        keep_ratio,
        layer,
        grounding,
        max_new_tokens,
        prior,
        steps: bool = False,
        heads: bool = False,
        method_batch: int | None = None,
        newline_budget: str = "excluded",
        **method_params,
    ) -> AnalysisSettings:
        """Check every setting; each problem is a ``ValueError`` naming the parameter."""
        methods = check_methods(methods)
        keep_count(keep_ratio, 1)
        layer = check_int(f"layer (K; this model has {num_layers} decoder layers)", layer, 1, num_layers - 1)
        if not isinstance(grounding, bool):
            raise ValueError(f"grounding must be True or False, got {grounding!r}")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        if isinstance(prior, str) and prior not in PRIOR_NAMES:
            raise ValueError(f"prior must be one of {PRIOR_NAMES}, a Prior or tensors; got {prior!r}")
        for name, flag in (("steps", steps), ("heads", heads)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if method_batch is not None:
            method_batch = check_int("method_batch (methods per batched generation)", method_batch, 1)
        if newline_budget not in NEWLINE_BUDGETS:
            raise ValueError(f"newline_budget must be one of {NEWLINE_BUDGETS}, got {newline_budget!r}")
        params = route_params(methods, method_params)
        defaults = {f.name: f.default for f in dataclasses.fields(METHODS["d2pruner"])}
        chosen = params.get("d2pruner", {})  # validated by route_params
        graph = {name: float(chosen.get(name, defaults[name])) for name in ("alpha", "theta")}
        return cls(methods, float(keep_ratio), layer, grounding, max_new_tokens, prior, params, graph, steps, heads,
                   method_batch, newline_budget)
