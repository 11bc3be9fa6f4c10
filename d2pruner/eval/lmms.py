"""The lmms-eval model ``d2pruner``: any supported checkpoint, unpruned or pruned by one method.

``accelerate launch --num_processes=N -m lmms_eval --model d2pruner --model_args pretrained=…,method=…`` — each
process loads the model on its own device (``accelerator.device``) and answers the requests of its shard
(lmms-eval shards the documents by rank and gathers the results on rank 0). Requests go to
``Analyzer.generate`` in batches of ``batch_size`` (one task, one set of generation options per batch).

Grounding: a task whose ``generation_kwargs`` hold ``grounding: native`` (our strict RefCOCO tasks) hands over
the raw referring expression; the plugin calls ``generate(..., grounding=True)`` (the family's own prompt and
box frame) and answers with the box in [0, 1] of the original image as ``"[x1, y1, x2, y2]"``, or with
``"(no box) …"`` (:mod:`d2pruner.eval.box_text`). Every other task's text is passed as the prompt and the
answer returned as generated, cut at the task's stop strings.

At the end of each ``generate_until`` call every process logs one line (``d2pruner rank R/W: …``) with its
request count per task and how many grounding answers held no box.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from d2pruner.analysis import load
from d2pruner.eval.box_text import format_box
from d2pruner.eval.settings import EvalSettings, parse_model_args
from d2pruner.eval.task_generation import TaskGeneration, cut_at_stop, task_generation


@dataclass(frozen=True)
class _Job:
    """One request as the plugin needs it."""

    position: int  # in the generate_until call
    task: str
    split: str
    doc_id: int
    context: str  # the prompt (the raw referring expression in grounding mode)
    options: TaskGeneration
    doc_to_visual: Callable




class D2PrunerLMM(lmms):
    """lmms-eval model ``d2pruner`` (see the module docstring and ``docs/eval.md`` for the arguments).

    Arguments:
        **model_args: ``pretrained`` (required), ``method``, ``keep_ratio`` | ``keep``, ``layer``, ``preset``,
            ``prior``, ``batch_size``, ``max_new_tokens``, ``device``, ``dtype`` and the method's
            hyperparameters (e.g. ``alpha``, ``theta``, ``r_pivot``); see :func:`parse_model_args`.
    Raises:
        ValueError: a bad or unknown argument, named.
    """

    is_simple = True

    def __init__(self, **model_args) -> None:
        super().__init__()
        if model_args.get("max_batch_size") is not None:
            raise ValueError("max_batch_size is not supported (no automatic batch sizing); give batch_size")
        model_args.pop("max_batch_size", None)
        self.settings: EvalSettings = parse_model_args(model_args)
        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self._device = _process_device(self.settings.device, self.accelerator)
        self.analyzer = load(self.settings.pretrained, device=self._device, dtype=self.settings.torch_dtype)
        self._warned: set[str] = set()
        if self._rank == 0:
            logger.info(f"d2pruner: {self.settings.pretrained} ({self.analyzer.family}) on {self._world_size} "
                        f"process(es); {self._describe()}")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> D2PrunerLMM:
        """Build from ``--model_args`` plus lmms-eval's ``--batch_size`` / ``--device``.

        A ``batch_size`` in the model args wins over ``--batch_size`` (whose default 1 is always passed); two
        different explicit values are an error.
        """
        args = _parse_arg_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        for key, value in extra.items():
            if key not in args:
                args[key] = value
            elif key == "batch_size" and value not in (1, "1") and str(value) != str(args[key]):
                raise ValueError(f"batch_size given twice: {args[key]!r} in --model_args and {value!r} by --batch_size")
            elif key == "device" and str(value) != str(args[key]):
                raise ValueError(f"device given twice: {args[key]!r} in --model_args and {value!r} by --device")
        return cls(**args)

    # ---- what lmms-eval reads
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    # ---- request types
    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        """Answer ``generate_until`` requests (args: context, generation_kwargs, doc_to_visual, doc_id, task,
        split), in order."""
        jobs = [self._job(i, request) for i, request in enumerate(requests)]
        answers: list[str] = [""] * len(jobs)
        missing: collections.Counter[str] = collections.Counter()
        batches = list(_batches(jobs, self.settings.batch_size))
        for batch in tqdm(batches, desc="d2pruner", disable=self._rank != 0):
            options = batch[0].options
            gens = self.analyzer.generate(
                [self._image(job) for job in batch],
                [job.context for job in batch],
                grounding=options.grounding,
                max_new_tokens=options.max_new_tokens,
                **self.settings.generate_kwargs(),
            )
            for job, gen in zip(batch, gens, strict=True):
                answers[job.position] = _response(gen, options)
                missing[job.task] += int(options.grounding and gen.box_normalized is None)
                self.cache_hook.add_partial("generate_until", (job.context, {}), answers[job.position])
        self._log_counts(jobs, missing)
        return answers

    def clean(self) -> None:
        """Release the model (lmms-eval calls this once every request is answered, before scoring)."""
        self.analyzer = None
        super().clean()

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "the d2pruner model answers generate_until tasks only (pruning acts on generation); "
            "loglikelihood / multiple-choice-by-likelihood tasks are not supported"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the d2pruner model does not support multi-round generation")

    # ---- helpers
    def _job(self, position: int, request: Instance) -> _Job:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        options = task_generation(gen_kwargs, self.settings.max_new_tokens)
        for key in options.ignored:
            if key not in self._warned:
                self._warned.add(key)
                logger.warning(f"d2pruner: generation_kwargs {key!r} of task {task} has no effect (greedy decoding)")
        return _Job(position, task, split, doc_id, context, options, doc_to_visual)

    def _image(self, job: _Job):
        visuals = job.doc_to_visual(self.task_dict[job.task][job.split][job.doc_id])
        if not isinstance(visuals, (list, tuple)) or len(visuals) != 1:
            count = len(visuals) if isinstance(visuals, (list, tuple)) else type(visuals).__name__
            raise ValueError(f"d2pruner evaluates one image per request; task {job.task} doc {job.doc_id} has "
                             f"{count} visuals")
        return visuals[0]

    def _log_counts(self, jobs: list[_Job], missing: collections.Counter) -> None:
        per_task = collections.Counter(job.task for job in jobs)
        tasks = ", ".join(f"{task}: {count}" for task, count in sorted(per_task.items())) or "none"
        logger.info(f"d2pruner rank {self._rank}/{self._world_size} [{self._describe()}]: {len(jobs)} generate_until "
                    f"requests ({tasks}); {sum(missing.values())} grounding answers without a box")

    def _describe(self) -> str:
        s = self.settings
        if s.method is None:
            return "method=none"
        budget = f"keep_ratio={s.keep_ratio}" if s.keep_ratio is not None else f"keep={s.keep}"
        params = "".join(f", {k}={v}" for k, v in s.method_params.items())
        return f"method={s.method}, {budget}, layer={s.layer}, preset={s.preset}{params}"


def _parse_arg_string(arg_string: str) -> dict:
    pieces = [p for p in (arg_string or "").split(",") if p.strip()]
    bad = [p for p in pieces if "=" not in p]
    if bad:
        raise ValueError(f"model_args must be key=value pairs separated by commas; got {bad[0]!r}")
    return utils.simple_parse_args_string(arg_string or "")


def _process_device(device: str | None, accelerator: Accelerator) -> torch.device:
    """The device of this process: the model args' (one process) or the accelerator's (data parallel)."""
    if device is None:
        return accelerator.device
    chosen = torch.device(device)
    if accelerator.num_processes > 1:
        if chosen.index is not None or chosen.type != accelerator.device.type:
            raise ValueError(f"device={device} under {accelerator.num_processes} processes: each process uses its "
                             f"own device ({accelerator.device.type}:<rank>); give no device or a bare "
                             f"{accelerator.device.type!r}")
        return accelerator.device
    return chosen


def _batches(jobs: list[_Job], size: int) -> Iterator[list[_Job]]:
    """Chunks of at most ``size`` jobs sharing task, split and options (grouped; request order kept within)."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault((job.task, job.split, job.options), []).append(job)
    for group in groups.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]


def _response(gen, options: TaskGeneration) -> str:
    if options.grounding:
        return format_box(gen.box_normalized, gen.answer)
    return cut_at_stop(gen.answer, options.until)
