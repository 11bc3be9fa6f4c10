"""The analysis API: load a model once, then analyze (image, prompt) with several methods, or generate answers for
many prompts with one method (evaluation).

``load(name)`` → :class:`Analyzer`; ``analyzer.analyze(image, prompt, methods=..., keep_ratio=..., layer=...)`` →
:class:`~d2pruner.analysis.results.AnalysisResult`; ``analyzer.generate(images, prompts, method=..., ...)`` →
:class:`~d2pruner.analysis.results.Generation` per prompt; ``analyzer.observe(image, prompt, layer=K)`` →
:class:`~d2pruner.analysis.results.Observation` (attention only, early exit); ``analyzer.get_prior(K)`` → the
model's positional-bias prior (calibrated on first use).

What one analysis computes, and what is shared:

1. preprocessing and the **vision tower + projector once** (``family.encode_image``); every later forward gets
   the features through the model's own ``mm_encoder_outputs=`` argument instead of ``pixel_values``;
2. **one unpruned run** (``generate`` inside :func:`~d2pruner.pruning.prune` in observe mode): the unpruned answer,
   and the layer-(K−1) attention row, the visual hidden states entering layer K and the layer-(K−1) keys that
   every method selects from, and what layers < K computed (recorded);
3. **selection once per method** from those shared captures (``d2pruner.select``);
4. **one batched generation for all methods** (one row per method, :mod:`d2pruner.analysis.run`), replaying the
   unpruned run's layers < K into every row (identical results, tested), split into chunks only when memory
   requires. ``generation_seconds`` is that batch's wall time; each method's ``prefill_seconds`` is one standalone
   pruned prefill (every method keeps n tokens, so it is the same work for all: measured once) plus the shared time
   before layer K; ``select_seconds`` the selection.

Coordinates: every region and box is in pixels of the image as passed in (after mode conversion). Images larger
than the family's maximum are downscaled before preprocessing and tiny ones (shorter side < 28 px) are upscaled;
regions and boxes are mapped back to the original pixels, and a note says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from d2pruner import memory
from d2pruner.analysis import run
from d2pruner.analysis.inputs import check_int, check_methods, keep_count, route_params
from d2pruner.analysis.prepared import Prepared, prepare
from d2pruner.analysis.results import AnalysisResult, Generation, MethodResult, Observation
from d2pruner.analysis.settings import AnalysisSettings
from d2pruner.families import FAMILIES, TINY_NAMES, Family, build_tiny, family_for, family_for_model_type
from d2pruner.graph import hybrid_graph
from d2pruner.methods import METHODS, method_parameters, relative_attention, select
from d2pruner.presets import paper_settings
from d2pruner.priors import Prior, check_map, fit_prior, resize_prior
from d2pruner.priors.store import PriorStore
from d2pruner.pruning import capture

#: ``progress(done, total, message)``
Progress = Callable[[int, int, str], None]
#: what ``analyze(prior=...)`` accepts
PriorArg = str | Prior | torch.Tensor | Sequence[torch.Tensor] | None
#: the paper presets' tasks
PRESET_TASKS = ("understanding", "localization")


def load(
    name: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    attn_implementation="sdpa",
) -> Analyzer:
    """Load a model and its preprocessing once; return an :class:`Analyzer`.

    Arguments:
        name: ``tiny-llava`` / ``tiny-llava-next`` / ``tiny-qwen2.5-vl`` / ``tiny-internvl`` … (offline, random
            weights), or a hub id / local folder of a transformers-native checkpoint of a supported family. Never
            uses remote code.
        device: default CUDA when available, else CPU.
        dtype: default float32 on CPU and the checkpoint's dtype (``"auto"``) otherwise.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError("model name must be a non-empty string")
    if os.path.isdir(name):  # a local checkpoint: one stable id (its prior files' name), however it was spelled
        name = os.path.abspath(name)
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else torch.device(device)
    notes: list[str] = []
    if name in TINY_NAMES:
        tiny = build_tiny(name, attn_implementation=attn_implementation)
        model = tiny.model.to(device=device, dtype=dtype or torch.float32)
        processor = tiny.processor
        notes.append("tiny model with random weights: answers are meaningless, the mechanics are real")
    elif name.startswith("tiny-"):
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_NAMES)}")
    else:
        model, processor, more = _from_pretrained(name, device, dtype, attn_implementation)
        notes.extend(more)
    return Analyzer(model, processor, name=name, notes=notes)


def _from_pretrained(name: str, device: torch.device, dtype, attn_implementation: str):
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ValueError as err:  # e.g. a remote-code-only checkpoint
        raise ValueError(f"cannot load {name!r} without remote code ({err}); supported transformers-native "
                         f"families: {_supported()}") from err
    family = family_for_model_type(config.model_type)
    model = getattr(transformers, family.model_class).from_pretrained(
        name,
        config=config,
        dtype=dtype if dtype is not None else (torch.float32 if device.type == "cpu" else "auto"),
        attn_implementation=attn_implementation,
        trust_remote_code=False,
    )
    processor, notes = family.load_processor(name)
    return model.to(device).eval(), processor, notes


def layer_attention(state, tokens) -> np.ndarray:
    """[num_layers, H, N] float32: the last prompt token's attention to each candidate at every layer, per head
    (row 0 of an unpruned run with ``capture_layers``)."""
    positions = tokens.positions.cpu()
    rows = [state.layer_rows[i][0][:, positions.to(state.layer_rows[i].device)].float().cpu()
            for i in sorted(state.layer_rows)]
    return torch.stack(rows).numpy().astype(np.float32)


def _supported() -> str:
    return ", ".join(f.model_class for f in FAMILIES.values())


class Analyzer:
    """A loaded model + preprocessing; :meth:`analyze` runs one request, :meth:`generate` a batch of prompts.

    Arguments:
        model: a supported ``*ForConditionalGeneration`` (eval mode).
        processor: its transformers processor, or :class:`~d2pruner.families.ProcessorParts`.
        name: a display name; also the model id of its prior files.
        notes: remarks about the model copied into every result (e.g. "tiny random model").
        prior_dirs: where priors are looked up, in order, and saved (the first writable one); default the bundled
            priors, then :func:`~d2pruner.priors.store.user_prior_dir`.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        name: str = "",
        notes: Sequence[str] = (),
        prior_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.model_family: Family = family_for(model)
        self.notes = tuple(notes)
        self.priors = PriorStore(self.name, self.model_family, self.observe, prior_dirs)
        self._warmed_up = False

    @property
    def prior_dirs(self) -> list:
        """Where priors are looked up, then saved (first writable)."""
        return self.priors.dirs

    @prior_dirs.setter
    def prior_dirs(self, dirs) -> None:
        self.priors = PriorStore(self.name, self.model_family, self.observe, dirs)

    @property
    def family(self) -> str:
        return self.model_family.name

    @property
    def num_layers(self) -> int:
        return self.model_family.num_layers(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- one analysis -------------------------------------------------------------------------------------
    def analyze(
        self,
        image,
        prompt: str,
        *,
        methods: Sequence[str] | str = ("fastv", "dart", "d2pruner"),
        keep_ratio: float = 0.25,
        layer: int = 2,
        grounding: bool = False,
        max_new_tokens: int = 32,
        prior: PriorArg = "auto",
        steps: bool = False,
        heads: bool = False,
        method_batch: int | None = None,
        newline_budget: str = "excluded",
        progress: Progress | None = None,
        **method_params,
    ) -> AnalysisResult:
        """Run the unpruned model and every method on one (image, prompt).

        Arguments:
            image: a PIL image of any mode, or an HxW[xC] array.
            prompt: the question; with ``grounding=True`` the referring expression (the family's grounding
                template is applied and boxes are parsed).
            methods: names from ``d2pruner.METHODS``.
            keep_ratio: fraction of the N candidate visual tokens kept, in (0, 1]; n = max(1, round(r · N)).
            layer: K, the decoder layer from which tokens are pruned, 1 ≤ K < num_layers.
            max_new_tokens: greedy decoding length, 1 … 512.
            prior: ``"auto"`` (the calibrated natural prior of this model and layer, calibrated from the bundled
                images on first use and cached), ``"content-free"``, ``"uniform"`` (or None), a
                :class:`~d2pruner.priors.Prior`, or a 2-D tensor (resized to every grid) / one per grid.
            steps: also record each method's selection step by step (``MethodResult.steps``).
            heads: keep every layer's attention row per head (``AnalysisResult.layer_attention_heads``), not only
                the mean over heads.
            method_batch: at most this many methods per batched generation (default: all of them, fewer only
                when the estimated memory does not fit; 1 runs the methods one after another).
            newline_budget: ``"excluded"`` (default: n counts the grid tokens, LLaVA-NeXT's newline tokens are
                kept on top) or ``"counted"`` (as the peers count it: n = round(r · (N + newlines)) − newlines).
            progress: ``progress(done, total, message)``, called while a prior is being calibrated.
            **method_params: hyperparameters, given to every requested method that has them
                (e.g. ``alpha=1.0`` for ``d2pruner``); also α / θ of the displayed graph.

        Raises:
            ValueError: bad image, empty or too long prompt, keep_ratio outside (0, 1], layer outside
                [1, num_layers), unknown methods or parameters, a malformed prior; the message names the parameter.
        """
        settings = AnalysisSettings.create(
            num_layers=self.num_layers, methods=methods, keep_ratio=keep_ratio, layer=layer, grounding=grounding,
            max_new_tokens=max_new_tokens, prior=prior, steps=steps, heads=heads, method_batch=method_batch,
            newline_budget=newline_budget, **method_params,
        )
        prepared = self._prepare(image, prompt, grounding=settings.grounding)
        notes = [*self.notes, *prepared.notes]
        priors, prior_source = self._prior_maps(settings.prior, settings.layer, prepared, progress, notes)
        self._warm_up(prepared)
        return self._analyze(settings, prepared, priors, prior_source, notes)

    def _analyze(self, settings: AnalysisSettings, prepared: Prepared, priors, prior_source: str,
                 notes: list[str]) -> AnalysisResult:
        model, family, tokens, layer = self.model, self.model_family, prepared.tokens, settings.layer
        n = settings.budget(tokens.num_candidates, int(tokens.protected.numel()))
        generation = self._generation_kwargs(settings.max_new_tokens)
        with torch.inference_mode():
            start = time.perf_counter()
            encoded = family.encode_image(model, prepared.inputs)
            run.sync(model)
            vision_seconds = time.perf_counter() - start
        single = run.make_batch(family, model, [prepared], [encoded], self._pad_id)
        vanilla_ids, observed, _ = run.generate_rows(
            model, single, layer=layer, generation=generation, record=True, capture_layers=True,
            capture_sequence=any("seq_keys" in METHODS[m].requires for m in settings.methods),
        )
        vanilla_answer = self._decode(vanilla_ids[0], single.length)
        hidden, attention, keys, prefix = observed.hidden, observed.attention, observed.keys, observed.prefix
        grid_shapes = tokens.grid_shapes
        grid = grid_shapes[0] if len(grid_shapes) == 1 else grid_shapes
        relative = relative_attention(attention.cpu(), priors, grid_shapes)
        graph = hybrid_graph(hidden.cpu(), grid, **settings.graph)

        sequence = observed.rows[0].selection_inputs(0).sequence_inputs()
        selections = {m: self._select(m, settings, n, hidden, attention, keys, grid, priors, sequence)
                      for m in settings.methods}
        layer_heads = layer_attention(observed, tokens)
        answers, generation_seconds, chunks, alone = self._generate_methods(settings, prepared, encoded, selections,
                                                                             prefix, generation)
        if chunks > 1:
            reason = "as asked (method_batch)" if settings.method_batch else "to fit the memory"
            notes.append(f"the {len(settings.methods)} methods ran in {chunks} batched generations, {reason}")
        prefill = self._prefill_by_count(single, layer, selections, prefix, alone)
        results = {
            m: MethodResult(
                method=m, kept=kept.cpu().numpy(), num_kept=int(kept.numel()), answer=answers[m],
                box=prepared.box(family, answers[m]) if settings.grounding else None,
                prefill_seconds=prefill[int(kept.numel())], select_seconds=seconds, params=settings.params[m],
                steps=trace,
            )
            for m, (kept, seconds, trace) in selections.items()
        }
        att_np = attention.cpu().numpy().astype(np.float32)
        rel_np = relative.numpy().astype(np.float32)
        return AnalysisResult(
            model=self.name, family=self.family, prompt=prepared.prompt, question=prepared.question,
            image_size=prepared.original_size, processed_size=prepared.processed_size, layer=layer,
            keep_ratio=settings.keep_ratio, num_candidates=tokens.num_candidates, n=n, grids=prepared.grids,
            regions=prepared.regions, layout=prepared.layout, candidate_tokens=prepared.candidate_tokens,
            attention=prepared.per_grid(att_np), prior=[p.numpy().astype(np.float32) for p in priors],
            relative_attention=prepared.per_grid(rel_np), attention_flat=att_np, relative_flat=rel_np,
            prior_source=prior_source, graph_edges=graph.edges.numpy(), graph_edge_kinds=graph.edge_kinds,
            graph_params=dict(settings.graph), vanilla_answer=vanilla_answer,
            vanilla_box=prepared.box(family, vanilla_answer) if settings.grounding else None,
            vanilla_prefill_seconds=float(observed.prefill_seconds), vision_seconds=vision_seconds,
            prompt_tokens=tokens.seq_len, methods=results, notes=list(dict.fromkeys(notes)),
            generation_seconds=generation_seconds, generation_chunks=chunks,
            layer_attention=layer_heads.mean(1), layer_attention_heads=layer_heads if settings.heads else None,
            prefill_measured="one standalone pruned prefill per kept count (methods that keep as many tokens do the "
                             "same work), layers < K timed in the unpruned run",
        )

    def _select(self, method: str, settings, n: int, hidden, attention, keys, grid, priors, sequence: dict):
        extra = sequence if "seq_keys" in METHODS[method].requires else {}
        start = time.perf_counter()
        chosen = select(method, n=n, hidden=hidden, attention=attention, grid=grid, prior=priors, keys=keys, **extra,
                        **settings.params[method], **({"return_steps": True} if settings.steps else {}))
        seconds = time.perf_counter() - start
        if settings.steps:
            return chosen.kept, seconds, chosen.steps
        return chosen, seconds, ()

    def _generate_methods(self, settings, prepared, encoded, selections, prefix, generation):
        """All methods' answers from one batched generation (chunks only when memory requires or when asked).
        Returns the answers, the wall time, the number of generations and — when one method ran alone — its own
        prefill time."""
        model, family = self.model, self.model_family
        methods = list(selections)
        n_kept = max(int(kept.numel()) for kept, _, _ in selections.values())
        kept_length = prepared.tokens.seq_len - prepared.tokens.num_candidates + n_kept
        chunk = run.rows_per_chunk(model, rows=len(methods), length=prepared.tokens.seq_len, kept_length=kept_length,
                                   max_new_tokens=settings.max_new_tokens, layer=settings.layer,
                                   free_bytes=memory.free_bytes(self.device))
        chunk = min(chunk, settings.method_batch or chunk)
        answers, seconds, chunks, alone = {}, 0.0, 0, {}
        for i in range(0, len(methods), chunk):
            part = methods[i : i + chunk]
            batch = run.make_batch(family, model, [prepared] * len(part), [encoded] * len(part), self._pad_id)
            ids, state, took = run.generate_rows(model, batch, layer=settings.layer, generation=generation,
                                                 keep=[selections[m][0] for m in part], replay=prefix)
            answers.update({m: self._decode(ids[r], batch.length) for r, m in enumerate(part)})
            if len(part) == 1:
                alone.setdefault(int(selections[part[0]][0].numel()), float(state.prefill_seconds))
            seconds += took
            chunks += 1
        return answers, seconds, chunks, alone

    def _prefill_by_count(self, single, layer, selections, prefix, alone: dict) -> dict[int, float]:
        """A standalone pruned prefill time per distinct kept count (taken from a one-row generation when there
        was one, else one extra prefill forward)."""
        times = dict(alone)
        for kept, _, _ in selections.values():
            count = int(kept.numel())
            if count not in times:
                times[count] = run.standalone_prefill(self.model, single, layer=layer, keep=kept, replay=prefix)
        return times

    # ---- evaluation: many prompts, one method ---------------------------------------------------------------
    def generate(
        self,
        images: Sequence,
        prompts: Sequence[str],
        *,
        method: str | None = None,
        keep_ratio: float | None = None,
        keep: int | None = None,
        layer: int | None = None,
        preset: str | None = None,
        grounding: bool = False,
        max_new_tokens: int = 32,
        prior: PriorArg = "auto",
        batch_size: int | None = None,
        **method_params,
    ) -> list[Generation]:
        """Answers for several (image, prompt) pairs with one method (or unpruned) — the evaluation entry point.

        Arguments:
            images, prompts: equally long sequences (an image as for :meth:`analyze`; a prompt string each).
            method: a name from ``d2pruner.METHODS``, or None for the unpruned model (same code path: the
                hooks run in observe mode).
            keep_ratio / keep: the budget, one of them (with a method): a fraction of the N candidates in
                (0, 1] (n = max(1, round(r · N))) or a count n ≥ 1 (capped at N).
            layer: K (default: the preset's, else 2).
            preset: ``"understanding"`` or ``"localization"``: the paper's K, α, θ, r_pivot
                (:func:`d2pruner.paper_settings`) wherever ``layer`` / ``method_params`` do not set them.
            grounding: apply the family's grounding prompt to each prompt (a referring expression) and parse
                the answer's box into original pixels and [0, 1].
            max_new_tokens, prior: as for :meth:`analyze`.
            batch_size: prompts per batched generation (left-padded); default all of them.
            **method_params: the method's hyperparameters.

        Returns:
            One :class:`~d2pruner.analysis.results.Generation` per pair, in order.
        """
        images, prompts = list(images), list(prompts)
        if not images or len(images) != len(prompts):
            raise ValueError(f"images and prompts must be equally long and non-empty; got {len(images)} and "
                             f"{len(prompts)}")
        preset_values = paper_settings(preset, self.family) if preset is not None else {}
        layer = check_int(f"layer (K; this model has {self.num_layers} decoder layers)",
                          preset_values.get("layer", 2) if layer is None else layer, 1, self.num_layers - 1)
        if method is None:
            if keep_ratio is not None or keep is not None or method_params:
                raise ValueError("keep_ratio, keep and method parameters need a method (method=None is unpruned)")
            params: dict = {}
        else:
            (method,) = check_methods(method)
            if (keep_ratio is None) == (keep is None):
                raise ValueError("give exactly one of keep_ratio (a fraction in (0, 1]) and keep (a count >= 1)")
            if keep_ratio is not None:
                keep_count(keep_ratio, 1)
            else:
                check_int("keep", keep, 1)
            takes = method_parameters(METHODS[method])
            params = {k: v for k, v in preset_values.items() if k in takes}
            params.update(route_params((method,), method_params)[method])
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1, 512)
        size = len(images) if batch_size is None else check_int("batch_size", batch_size, 1)
        used = {"method": method, "layer": layer, "preset": preset, **params}
        out: list[Generation] = []
        for start in range(0, len(images), size):
            out += self._generate_batch(images[start : start + size], prompts[start : start + size], method=method,
                                        keep_ratio=keep_ratio, keep=keep, layer=layer, grounding=grounding,
                                        max_new_tokens=max_new_tokens, prior=prior, params=params, used=used)
        return out

    def _generate_batch(self, images, prompts, *, method, keep_ratio, keep, layer, grounding, max_new_tokens, prior,
                        params, used) -> list[Generation]:
        model, family = self.model, self.model_family
        prepared = [self._prepare(image, prompt, grounding=grounding) for image, prompt in zip(images, prompts,
                                                                                           strict=True)]
        notes = [[*self.notes, *p.notes] for p in prepared]
        select_fn = None
        if method is not None:
            budgets, maps = [], []
            for p, row_notes in zip(prepared, notes, strict=True):
                num = p.tokens.num_candidates
                budgets.append(keep_count(keep_ratio, num) if keep_ratio is not None else min(int(keep), num))
                maps.append(self._prior_maps(prior, layer, p, None, row_notes)[0])

            def select_fn(inputs):
                grid = inputs.grids[0] if len(inputs.grids) == 1 else inputs.grids
                return select(method, n=budgets[inputs.row], hidden=inputs.hidden, attention=inputs.attention,
                                     grid=grid, prior=maps[inputs.row], keys=inputs.keys,
                                     **inputs.sequence_inputs(), **params)

        with torch.inference_mode():
            encoded = [family.encode_image(model, p.inputs) for p in prepared]
        batch = run.make_batch(family, model, prepared, encoded, self._pad_id)
        sequence = method is not None and "seq_keys" in METHODS[method].requires
        ids, state, _ = run.generate_rows(model, batch, layer=layer, generation=self._generation_kwargs(
            max_new_tokens), select=select_fn, capture_sequence=sequence)
        out = []
        for r, p in enumerate(prepared):
            answer = self._decode(ids[r], batch.length)
            box = p.box(family, answer) if grounding else None
            width, height = p.original_size
            normalized = None if box is None else (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
            out.append(Generation(answer, box, normalized, state.rows[r].num_kept, p.tokens.num_candidates,
                                  p.question, used, notes[r]))
        return out

    # ---- attention only -----------------------------------------------------------------------------------
    def observe(self, image, prompt: str, *, layer: int = 2, heads: bool = False) -> Observation:
        """The layer-(K−1) attention of one (image, prompt), with early exit: only the vision tower and the
        first K decoder layers run, nothing is generated (used for calibration and the bias explorer).

        With ``heads=True`` the result also holds that attention row per head (``Observation.attention_heads``)."""
        layer = check_int(f"layer (K; this model has {self.num_layers} decoder layers)", layer, 1,
                          self.num_layers - 1)
        if not isinstance(heads, bool):
            raise ValueError(f"heads must be True or False, got {heads!r}")
        return self._observe(self._prepare(image, prompt), layer, heads=heads)

    def _observe(self, prepared: Prepared, layer: int, *, heads: bool = False) -> Observation:
        state = capture(self.model, prepared.tokens, prepared.inputs, layer=layer, capture_layers=heads)
        attention = state.attention.cpu().numpy().astype(np.float32)
        return Observation(
            layer=layer, grids=prepared.grids, attention=prepared.per_grid(attention), attention_flat=attention,
            hidden=state.hidden.cpu(), keys=None if state.keys is None else state.keys.cpu(), regions=prepared.regions,
            layout=prepared.layout, image_size=prepared.original_size, processed_size=prepared.processed_size,
            prompt_tokens=prepared.tokens.seq_len, notes=[*self.notes, *prepared.notes],
            attention_heads=layer_attention(state, prepared.tokens)[layer - 1] if heads else None,
        )

    def prior_for(self, result, layer: int, kind: str = "natural", *, calibrate: bool = True,
                  progress: Progress | None = None) -> tuple[list[np.ndarray], str, list[str]] | None:
        """This model's prior of ``kind`` at layer K = ``layer`` (attention at layer K−1) fitted to the grids of an
        earlier ``result`` (or observation) — e.g. to show relative attention at every layer of one analysis.

        Returns:
            (one [rows, cols] float32 map per grid, the prior's description, the notes of this lookup), or None
            when no prior of that layer is saved and ``calibrate`` is False.
        """
        layer = check_int(f"layer (K; this model has {self.num_layers} decoder layers)", layer, 1,
                          self.num_layers - 1)
        if calibrate:
            prior, notes = self.priors.get(layer, kind, progress=progress)
        else:
            prior, notes = self.priors.find(layer, kind)
            if prior is None:
                return None
        family = self.model_family
        names = [(g.name, g.rows, g.cols) for g in result.grids]
        maps = fit_prior(prior, names, role_of=family.prior_role, dynamic_roles=family.dynamic_prior_roles,
                         arrangement=family.tile_arrangement(result.layout))
        return [m.numpy().astype(np.float32) for m in maps], prior.describe(), notes

    def get_prior(self, layer: int, kind: str = "natural", *, progress: Progress | None = None) -> Prior:
        """This model's positional-bias prior at layer K: from ``prior_dirs`` if one was saved, else calibrated
        now — from the bundled photographs (``kind="natural"``) or blank and noise images (``"content-free"``) —
        and saved to the first writable directory of ``prior_dirs``."""
        layer = check_int(f"layer (K; this model has {self.num_layers} decoder layers)", layer, 1,
                          self.num_layers - 1)
        return self.priors.get(layer, kind, progress=progress)[0]

    # ---- helpers ------------------------------------------------------------------------------------------
    def _prepare(self, image, prompt: str, *, grounding: bool = False) -> Prepared:
        what = "referring expression" if grounding else "prompt"
        return prepare(self.model_family, self.model, self.processor, image, prompt, grounding=grounding, what=what)

    def _warm_up(self, prepared: Prepared) -> None:
        """First request: one untimed early-exit pass, so that one-time kernel and allocator set-up does not land
        in the timings."""
        if not self._warmed_up:
            capture(self.model, prepared.tokens, prepared.inputs, layer=1)
            self._warmed_up = True

    def _prior_maps(self, prior: PriorArg, layer: int, prepared: Prepared, progress: Progress | None,
                    notes: list[str]) -> tuple[list[torch.Tensor], str]:
        """One prior map per grid, exactly grid-shaped, and a description of where it came from."""
        shapes = prepared.tokens.grid_shapes
        if prior is None or (isinstance(prior, str) and prior == "uniform"):
            notes.append("uniform prior: relative attention = raw attention")
            return [torch.ones(r, c) for r, c in shapes], "uniform"
        if isinstance(prior, str):
            kinds = {"auto": "natural", "natural": "natural", "content-free": "content-free"}
            if prior not in kinds:
                raise ValueError(f"prior must be 'auto', 'content-free', 'uniform', a Prior or tensors; got {prior!r}")
            prior, found = self.priors.get(layer, kinds[prior], progress=progress)
            notes.extend(found)
        family = self.model_family
        if isinstance(prior, Prior):
            if prior.layer != layer:
                notes.append(f"the prior was calibrated at layer {prior.layer} but K = {layer}")
            names = [(g.name, g.rows, g.cols) for g in prepared.grids]
            maps = fit_prior(prior, names, role_of=family.prior_role, dynamic_roles=family.dynamic_prior_roles,
                             arrangement=family.tile_arrangement(prepared.layout))
            return maps, prior.describe()
        given = [prior] if isinstance(prior, torch.Tensor) else list(prior) if isinstance(prior, Sequence) else None
        if given is None:
            raise ValueError(f"prior must be 'auto', 'content-free', 'uniform', a Prior or tensors; got "
                             f"{type(prior).__name__}")
        if len(given) == 1:
            given = given * len(shapes)
        if len(given) != len(shapes) or any(not isinstance(p, torch.Tensor) or p.ndim != 2 for p in given):
            raise ValueError(f"prior must be one 2-D tensor or one per grid ({len(shapes)} grids)")
        for p in given:
            check_map(p)
        return [resize_prior(p, shape) for p, shape in zip(given, shapes, strict=True)], "given"

    @property
    def _pad_id(self) -> int:
        pad = getattr(self.model_family.tokenizer(self.processor), "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def _generation_kwargs(self, max_new_tokens: int) -> dict:
        kwargs = dict(max_new_tokens=int(max_new_tokens), do_sample=False, prefill_chunk_size=None)
        tokenizer = self.model_family.tokenizer(self.processor)
        if getattr(tokenizer, "pad_token_id", None) is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        return kwargs

    def _decode(self, ids: torch.Tensor, prompt_len: int) -> str:
        tokenizer = self.model_family.tokenizer(self.processor)
        return tokenizer.decode(ids[prompt_len:].tolist(), skip_special_tokens=True).strip()
