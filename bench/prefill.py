"""Measured prefill and decode time and peak memory, unpruned vs pruned at layer K, on real-shape LLaVA models.

Models are the real transformers classes (``LlavaForConditionalGeneration`` for LLaVA-1.5-7B,
``LlavaNextForConditionalGeneration`` for LLaVA-NeXT-7B) built from configs whose language model has the real
dimensions from ``d2pruner.efficiency.ARCHITECTURES`` (hidden 4096, FFN 11008, 32 heads, vocabulary 32064), with
random weights: timing does not depend on weight values, and nothing is downloaded. The vision tower has the real
geometry (336 px tiles, patch 14 -> 24x24 tokens per tile) but is narrow (hidden 64, 2 layers): it runs once per
shape, outside the timed region, and its output is fed to every timed ``generate`` through ``mm_encoder_outputs``.
The inputs come from the real processors (``LlavaProcessor`` / ``LlavaNextProcessor`` with llava-hf's image
settings and an offline byte-level tokenizer): LLaVA-1.5 gets 576 visual tokens; LLaVA-NeXT gets a 672x672 image
-> base 24x24 + high-res 48x48 grid = 2880 candidates, plus 48 newline tokens that are never pruned.

Pruning goes through the package's own ``d2pruner.prune(model, tokens, layer=K, select=fn)``: the
method's selection runs inside the prefill at layer K, so the prefill time includes it.

What is measured (one run = one greedy ``generate`` of 1 + decode-steps tokens, batch 1, sdpa attention):
  prefill      wall time of the first forward of ``generate`` (forward hooks on the model; CUDA synchronised)
  decode       mean forward time of the following decode steps, per token
  selection    wall time of the method's selection call inside the prefill
  per layer    forward time of every decoder layer in the prefill (used for the full-depth extrapolation)
  peak memory  in the warm-up: one extra untimed run per configuration (prefill + 1 decode step). On CUDA
               torch.cuda.max_memory_allocated minus the memory allocated before the run; on CPU the peak of the
               bytes allocated through torch's CPU allocator during the run, from the torch profiler's memory
               events. Both exclude the weights and the encoded image.
Runs are interleaved (every configuration once per repetition, rotating the order) and medians are reported.

    python bench/prefill.py                  # CPU: 4 layers, K = 2, bf16 -> bench/results/prefill-cpu.md (+ .json)
    python bench/prefill.py --device cuda    # GPU: 32 layers, K = 2, bf16 -> bench/results/prefill-gpu.md (+ .json)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fractions
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name

import d2pruner
from d2pruner.efficiency import ARCHITECTURES, ModelArch, efficiency_report
from d2pruner.families import family_for
from d2pruner.pruning import PruneInputs, prune

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_METHODS = ("fastv", "dart", "divprune", "mmr", "d2pruner")
DEFAULT_RATIOS = ("1/3", "1/9")
VISION = dict(  # real geometry (336 px, patch 14), narrow: the benchmark is about the language model
    model_type="clip_vision_model",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=336,
    patch_size=14,
    projection_dim=64,
)
# llava-hf/llava-v1.6-vicuna-7b-hf preprocessor_config.json
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
FILLER = "Describe this image in detail, including every object, its colour, its size and its position. "


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmarked model shape: the registry entry of its language model, its family and its test image."""

    name: str
    arch: str  # key of d2pruner.efficiency.ARCHITECTURES
    family: str  # "llava" | "llava_next"
    image_size: tuple[int, int]  # (width, height) of the synthetic input image


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "llava", (336, 336)),
        Shape("llava-next-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next", (672, 672)),
    )
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured configuration: ``method`` None is the unpruned model."""

    method: str | None
    ratio: fractions.Fraction | None

    @property
    def label(self) -> str:
        return "unpruned" if self.method is None else f"{self.method} @ {self.ratio}"


@dataclasses.dataclass
class Run:
    """One timed run (seconds)."""

    prefill: float
    decode: list[float]
    select: float | None
    layers: list[float]
    kept: int | None
    prefill_state: float | None = None  # PruneState.prefill_seconds, the package's own timer (cross-check)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def parse_ratio(text: str) -> fractions.Fraction:
    try:
        value = fractions.Fraction(text)
    except (ValueError, ZeroDivisionError) as err:
        raise argparse.ArgumentTypeError(f"keep ratio must be a number or a fraction like 1/9, got {text!r}") from err
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"keep ratio must be in (0, 1], got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/prefill.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES),
                        help="model shapes (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=sorted(d2pruner.METHODS),
                        help=f"pruning methods (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--ratios", nargs="+", type=parse_ratio, default=[parse_ratio(r) for r in DEFAULT_RATIOS],
                        help="keep ratios r; n = max(1, round(r·N)) (default: 1/3 1/9)")
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers L (default: 4 on CPU, the real depth, 32, on CUDA)")
    parser.add_argument("--prune-layer", type=int, default=2, help="K: layers >= K see the kept tokens (default: 2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="model dtype (default: bfloat16)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per configuration; medians (default: 5)")
    parser.add_argument("--decode-steps", type=int, default=None,
                        help="decode steps timed after the prefill (default: 8 on CPU, 32 on CUDA)")
    parser.add_argument("--text-tokens", type=int, default=50,
                        help="text tokens of the prompt (chat template included; default: 50)")
    parser.add_argument("--hidden", type=int, default=None, help="override the hidden size (tests only)")
    parser.add_argument("--intermediate", type=int, default=None,
                        help="override the FFN size (default with --hidden: scaled like the real model)")
    parser.add_argument("--heads", type=int, default=None, help="override the attention heads (tests only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output markdown (default: bench/results/prefill-<cpu|gpu>.md); JSON written beside it")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="measure nothing: re-render a saved JSON into markdown (written beside it, or to --out)")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.layers is None:
        args.layers = max(ARCHITECTURES[SHAPES[name].arch].num_layers for name in args.shapes) if cuda else 4
    if args.decode_steps is None:
        args.decode_steps = 32 if cuda else 8
    if not 1 <= args.prune_layer < args.layers:
        parser.error(f"--prune-layer K must satisfy 1 <= K < --layers ({args.layers}), got {args.prune_layer}")
    for name in ("runs", "threads", "text_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    hidden = args.hidden or 4096
    if args.heads is not None and (args.heads < 1 or hidden % args.heads):
        parser.error(f"--heads must divide the hidden size {hidden}, got {args.heads}")
    if args.decode_steps < 0:
        parser.error("--decode-steps must be >= 0")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda was given but CUDA is not available")
    return args


# ----------------------------------------------------------------------------------------------------------------
# model and inputs


def language_arch(shape: Shape, args: argparse.Namespace) -> ModelArch:
    """The benchmarked language model: the real architecture at ``--layers`` depth (and test overrides)."""
    real = ARCHITECTURES[shape.arch]
    hidden = args.hidden or real.hidden_size
    heads = args.heads or (real.num_heads if args.hidden is None else max(1, round(real.num_heads * hidden /
                                                                                   real.hidden_size)))
    inter = args.intermediate or round(real.intermediate_size * hidden / real.hidden_size)
    kv = heads if real.num_kv_heads == real.num_heads else max(1, heads * real.num_kv_heads // real.num_heads)
    return dataclasses.replace(real, num_layers=args.layers, hidden_size=hidden, intermediate_size=inter,
                               num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads)


def build_model(shape: Shape, arch: ModelArch, image_token_id: int, device: torch.device, dtype: torch.dtype):
    """A randomly initialised ``Llava(Next)ForConditionalGeneration`` with ``arch`` as its language model."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    text = dict(
        model_type="llama", vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads, head_dim=arch.head_dim,
        max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    common = dict(vision_config=dict(VISION), text_config=text, image_token_index=image_token_id,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
                  pad_token_id=0)
    if shape.family == "llava":
        cls, config = LlavaForConditionalGeneration, LlavaConfig(**common)
    else:
        cls, config = LlavaNextForConditionalGeneration, LlavaNextConfig(image_grid_pinpoints=NEXT_PINPOINTS, **common)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]), device:
        torch.manual_seed(0)
        model = cls._from_config(config, dtype=dtype)
    return model.to(device).eval()


def build_processor(shape: Shape):
    """The family's real processor with llava-hf's image settings and an offline byte-level tokenizer."""
    from transformers import (
        CLIPImageProcessorPil,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    from d2pruner.families.llava import CHAT_TEMPLATE as LLAVA_CHAT_TEMPLATE
    from d2pruner.families.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(LLAVA_CHAT_TEMPLATE)
    common = dict(tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                  chat_template=LLAVA_CHAT_TEMPLATE, num_additional_image_tokens=1)
    size, crop = {"shortest_edge": 336}, {"height": 336, "width": 336}
    if shape.family == "llava":
        return LlavaProcessor(image_processor=CLIPImageProcessorPil(size=size, crop_size=crop), **common)
    image_processor = LlavaNextImageProcessorPil(size=size, crop_size=crop, image_grid_pinpoints=NEXT_PINPOINTS)
    return LlavaNextProcessor(image_processor=image_processor, **common)


def smooth_image(size: tuple[int, int]) -> Image.Image:
    """A deterministic image of smooth colour fields (neighbouring patches look alike, as in photographs)."""
    coarse = (np.random.RandomState(0).rand(6, 6, 3) * 255).astype("uint8")
    return Image.fromarray(coarse).resize(size, Image.BILINEAR)


def prompt_for(family, processor, text_tokens: int) -> str:
    """A prompt whose chat text holds exactly ``text_tokens`` tokens besides the image placeholder."""
    tokenizer = family.tokenizer(processor)
    overhead = len(tokenizer(family.chat_text(processor, ""))["input_ids"]) - 1  # minus the <image> placeholder
    if text_tokens <= overhead:
        raise ValueError(f"--text-tokens must exceed the chat template's {overhead} tokens, got {text_tokens}")
    need = text_tokens - overhead
    return (FILLER * (need // len(FILLER) + 1))[:need]


# ----------------------------------------------------------------------------------------------------------------
# measurement


class Clock:
    """``perf_counter`` that first waits for the device (CUDA) so that times cover the queued work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


@contextlib.contextmanager
def forward_timer(model, layers, clock: Clock, per_layer: bool) -> Iterator[tuple[list[float], list[float]]]:
    """Times every top-level forward (first = prefill) and, in the prefill, every decoder layer."""
    forwards: list[float] = []
    layer_times: list[float] = [0.0] * len(layers)
    starts: dict[int, float] = {}

    def top_pre(module, args, kwargs):
        starts[-1] = clock.now()

    def top_post(module, args, kwargs, output):
        forwards.append(clock.now() - starts[-1])

    def layer_pre(idx):
        def hook(module, args, kwargs):
            if not forwards:
                starts[idx] = clock.now()
        return hook

    def layer_post(idx):
        def hook(module, args, kwargs, output):
            if not forwards:
                layer_times[idx] = clock.now() - starts[idx]
        return hook

    handles = [model.register_forward_pre_hook(top_pre, with_kwargs=True),
               model.register_forward_hook(top_post, with_kwargs=True)]
    if per_layer:
        for idx, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(layer_pre(idx), with_kwargs=True))
            handles.append(layer.register_forward_hook(layer_post(idx), with_kwargs=True))
    try:
        yield forwards, layer_times
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak bytes allocated above the start of the block (CUDA: allocator stats; CPU: torch profiler events)."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
        result["peak_total_bytes"] = torch.cuda.max_memory_allocated(device)
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    result["peak_bytes"] = peak


class ShapeBench:
    """One model shape: the model, its encoded image and prompt, and how to run one configuration."""

    def __init__(self, shape: Shape, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
        self.shape, self.args, self.device = shape, args, device
        self.arch = language_arch(shape, args)
        self.clock = Clock(device)
        processor = build_processor(shape)
        tokenizer = processor.tokenizer
        start = time.perf_counter()
        self.model = build_model(shape, self.arch, tokenizer.convert_tokens_to_ids("<image>"), device, dtype)
        self.build_seconds = time.perf_counter() - start
        self.family = family_for(self.model)
        prompt = prompt_for(self.family, processor, args.text_tokens)
        image = smooth_image(shape.image_size)
        inputs = self.family.build_inputs(self.model, processor, image, prompt)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        self.tokens = self.family.tokens_for(self.model, processor, image.size, inputs)
        self.num_visual = self.tokens.num_candidates
        self.num_protected = int(self.tokens.protected.numel())
        self.num_text = self.tokens.seq_len - self.num_visual - self.num_protected
        if self.num_text != args.text_tokens:
            raise RuntimeError(f"built {self.num_text} text tokens, expected {args.text_tokens}")
        with torch.inference_mode():
            self.encoded = self.family.encode_image(self.model, inputs)
        self.text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        gen = torch.Generator().manual_seed(1)
        self.prior = (torch.rand(24, 24, generator=gen) + 0.5).to(device)  # stands in for a calibrated prior
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def keep_count(self, ratio: fractions.Fraction) -> int:
        from d2pruner.analysis import keep_count

        return keep_count(float(ratio), self.num_visual)

    def run(self, config: Config, *, memory: bool = False) -> tuple[Run, dict[str, float]]:
        """One greedy ``generate`` under ``config``: times of 1 + decode-steps forwards, or (``memory``) the peak
        memory of the prefill and one decode step, untimed."""
        steps = min(1, self.args.decode_steps) if memory else self.args.decode_steps
        gen_kwargs = dict(max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False,
                          prefill_chunk_size=None, pad_token_id=0)
        select_times: list[float] = []
        if config.method is None:
            pruning = contextlib.nullcontext(None)
        else:
            n = self.keep_count(config.ratio)
            pruning = prune(self.model, self.tokens, layer=self.args.prune_layer,
                            select=self._selector(config.method, n, select_times))
        layers = self.family.language_model(self.model).layers
        per_layer = not memory and len(layers) < ARCHITECTURES[self.shape.arch].num_layers  # for extrapolation only
        mem_ctx = peak_memory(self.device) if memory else contextlib.nullcontext({})
        with (
            torch.inference_mode(),
            pruning as state,
            forward_timer(self.model, layers, self.clock, per_layer) as (forwards, layer_times),
            mem_ctx as mem,
        ):
            self.model.generate(**self.text_inputs, mm_encoder_outputs=self.encoded, **gen_kwargs)
        if len(forwards) != steps + 1:
            raise RuntimeError(f"expected {steps + 1} forwards, timed {len(forwards)}")
        kept = None if state is None else state.num_kept
        if state is not None and kept != self.keep_count(config.ratio):
            raise RuntimeError(f"{config.label}: kept {kept}, expected {self.keep_count(config.ratio)}")
        run = Run(prefill=forwards[0], decode=forwards[1:], select=select_times[0] if select_times else None,
                  layers=list(layer_times), kept=kept,
                  prefill_state=None if state is None else state.prefill_seconds)
        return run, mem

    def _selector(self, method: str, n: int, times: list[float]) -> Callable[[PruneInputs], torch.Tensor]:
        prior = self.prior

        def select(inputs: PruneInputs) -> torch.Tensor:
            start = self.clock.now()
            kept = d2pruner.select(method, n=n, hidden=inputs.hidden, attention=inputs.attention,
                                   keys=inputs.keys, grid=inputs.grid, prior=prior)
            times.append(self.clock.now() - start)
            return kept

        return select


# ----------------------------------------------------------------------------------------------------------------
# aggregation and report


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(bench: ShapeBench, configs: list[Config], runs: dict[Config, list[Run]],
              memory: dict[Config, dict[str, float]], args: argparse.Namespace) -> list[dict]:
    """One row per configuration: medians, speedups, overheads, analytic ratios and the full-depth extrapolation."""
    real = ARCHITECTURES[bench.shape.arch]
    k, depth, full_depth = args.prune_layer, bench.arch.num_layers, real.num_layers
    n_total = bench.num_visual
    text = bench.num_text + bench.num_protected  # newline tokens are always kept, like text
    rows = []
    for config in configs:
        rs = runs[config]
        prefill = median([r.prefill for r in rs])
        per_layer = [median([r.layers[i] for r in rs]) for i in range(depth)]
        tail = median(per_layer[k:])  # one layer at the (pruned) length that layers >= K see
        row = dict(
            shape=bench.shape.name, method=config.method or "unpruned",
            ratio=None if config.ratio is None else str(config.ratio),
            kept=n_total if config.method is None else rs[0].kept, visual=n_total,
            prefill_ms=prefill * 1e3,
            decode_ms=median([statistics.fmean(r.decode) for r in rs]) * 1e3 if args.decode_steps else None,
            select_ms=None if config.method is None else median([r.select for r in rs]) * 1e3,
            layer_ms=[t * 1e3 for t in per_layer],
            peak_mb=memory[config]["peak_bytes"] / 1e6,
            peak_total_mb=memory[config]["peak_total_bytes"] / 1e6 if "peak_total_bytes" in memory[config] else None,
            extrapolated_prefill_ms=(prefill + max(0, full_depth - depth) * tail) * 1e3,
            runs_prefill_ms=[r.prefill * 1e3 for r in rs],
            prune_state_prefill_ms=None if config.method is None else median([r.prefill_state for r in rs]) * 1e3,
        )
        kept = row["kept"]
        paper = efficiency_report(real, text_tokens=text, visual_tokens=n_total, layer=k, kept=kept)
        exact = {name: efficiency_report(a, text_tokens=text, visual_tokens=n_total, layer=k, kept=kept,
                                         convention="exact")
                 for name, a in (("bench", bench.arch), ("full", real))}
        row.update(flops_ratio_paper=paper.flops_reduction, kv_ratio_paper=paper.kv_reduction,
                   flops_ratio_bench=exact["bench"].flops_reduction, flops_ratio_full=exact["full"].flops_reduction)
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["speedup"] = base["prefill_ms"] / row["prefill_ms"]
        row["extrapolated_speedup"] = base["extrapolated_prefill_ms"] / row["extrapolated_prefill_ms"]
        if row["select_ms"] is not None:
            row["select_pct"] = 100 * row["select_ms"] / row["prefill_ms"]
            row["extrapolated_select_pct"] = 100 * row["select_ms"] / row["extrapolated_prefill_ms"]
    return rows


def matmul_gflops(arch: ModelArch, dtype: torch.dtype, device: torch.device, tokens: int = 1024) -> float:
    """Throughput of one FFN-shaped matmul ([tokens, hidden] x [hidden, intermediate]), median of 3, GFLOP/s."""
    clock = Clock(device)
    x = torch.randn(tokens, arch.hidden_size, dtype=dtype, device=device)
    w = torch.randn(arch.intermediate_size, arch.hidden_size, dtype=dtype, device=device)
    torch.nn.functional.linear(x, w)
    times = []
    for _ in range(3):
        start = clock.now()
        torch.nn.functional.linear(x, w)
        times.append(clock.now() - start)
    return 2 * tokens * arch.hidden_size * arch.intermediate_size / median(times) / 1e9


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown report of one benchmark (everything it needs is in the saved JSON)."""
    cuda = meta["device"] == "cuda"
    depth, full, k = meta["layers"], meta["full_layers"], meta["prune_layer"]
    lines = [
        f"# Prefill benchmark ({meta['device']})",
        "",
        f"{meta['date']} · {meta['machine']} · torch {meta['torch']} · transformers {meta['transformers']} · "
        f"{meta['dtype']} · sdpa · batch 1",
        "",
        f"Language model: hidden {meta['hidden']}, FFN {meta['intermediate']}, {meta['heads']} heads "
        f"({meta['kv_heads']} KV), vocab {meta['vocab']}, **{depth} of {full} layers**, pruning at **K = {k}**; "
        f"random weights; real `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` classes. "
        f"{meta['text_tokens']} text tokens, {meta['decode_steps']} decode steps, median of {meta['runs']} "
        f"interleaved runs. Vision tower: real geometry (336 px, patch 14), narrow (hidden 64, 2 layers), run once "
        f"outside the timed region (`mm_encoder_outputs`). Pruning through `d2pruner.prune(select=...)`.",
        "",
        "Columns: *prefill* = first forward of `generate` (selection included), median; *min* = fastest run "
        "(a noise check: interference only adds time); *× FLOPs @nL* = analytic FLOPs "
        "ratio at n layers (`d2pruner.efficiency`, `convention=\"exact\"`: gated FFN, 2 FLOPs per MAC, layers < K "
        "at full length), the ceiling of a compute-bound speedup; *decode* = mean forward time per decode step; "
        "*peak Δ* = "
        + ("`torch.cuda.max_memory_allocated` minus what was allocated before the run (weights, features)"
           if cuda else "peak of the bytes allocated through torch's CPU allocator during the run (torch "
                        "profiler memory events), weights excluded")
        + " (prefill + 1 decode step, in the untimed warm-up run); *select %* = selection / prefill; *FLOPs ×, "
        f"KV × (paper)* = `d2pruner.efficiency` ratios in the paper's (FastV) convention at the real depth ({full} "
        "layers), text = text + newline tokens.",
    ]
    if meta["matmul_gflops"]:
        lines += ["", "Dtype check on this machine (one FFN-shaped matmul, 1024 tokens): " + ", ".join(
            f"{name} {value:.0f} GFLOP/s" for name, value in meta["matmul_gflops"].items()) + "."]
    if depth < full:
        lines += ["",
                  f"**Extrapolated** columns (not measured): full-depth prefill = measured prefill + ({full} − "
                  f"{depth}) × the median measured time of one decoder layer ≥ K in that configuration; the "
                  "selection % and speedup are relative to it."]
    for shape in meta["shapes"]:
        sub = [r for r in rows if r["shape"] == shape["name"]]
        lines += ["", f"## {shape['name']} — {shape['visual']} visual tokens"
                  + (f" (+ {shape['protected']} newline tokens, always kept)" if shape["protected"] else "")
                  + f", prompt {shape['seq_len']} tokens",
                  "",
                  f"Weights {shape['weight_gb']:.2f} GB; model built in {shape['build_seconds']:.0f} s.",
                  ""]
        head = ["method", "keep", "kept", "prefill ms", "min ms", "speedup", f"× FLOPs @{depth}L", "decode ms/tok",
                "peak Δ MB"]
        if cuda:
            head.append("peak total MB")
        head += ["select ms", "select %"]
        if depth < full:
            head += [f"extrap. {full}L prefill ms", "extrap. speedup", f"× FLOPs @{full}L", "extrap. select %"]
        head += [f"FLOPs × ({full}L, paper)", f"KV × ({full}L, paper)"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * (len(head) - 2))
        for r in sub:
            cells = [r["method"], r["ratio"] or "1", str(r["kept"]), _fmt(r["prefill_ms"]),
                     _fmt(min(r["runs_prefill_ms"])),
                     _fmt(r["speedup"], 2, "×"), _fmt(r["flops_ratio_bench"], 2, "×"), _fmt(r["decode_ms"]),
                     _fmt(r["peak_mb"], 0)]
            if cuda:
                cells.append(_fmt(r["peak_total_mb"], 0))
            cells += [_fmt(r["select_ms"], 2), _fmt(r.get("select_pct"), 2, " %")]
            if depth < full:
                cells += [_fmt(r["extrapolated_prefill_ms"], 0), _fmt(r["extrapolated_speedup"], 2, "×"),
                          _fmt(r["flops_ratio_full"], 2, "×"), _fmt(r.get("extrapolated_select_pct"), 2, " %")]
            cells += [_fmt(r["flops_ratio_paper"], 2, "×"), _fmt(r["kv_ratio_paper"], 2, "×")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Against the targets", "", *targets(meta, rows), "",
              f"Command: `{meta['command']}` · total wall time {meta['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def targets(meta: dict, rows: list[dict]) -> list[str]:
    """Prefill speedup at the smallest keep ratio (target ≥ 5× on GPU at full depth; paper 5.09× at 11.2 %) and
    D²Pruner's selection overhead (target ≤ 0.8 % of the prefill, paper)."""
    depth, full, k = meta["layers"], meta["full_layers"], meta["prune_layer"]
    reduced = depth < full
    smallest = min(fractions.Fraction(r["ratio"]) for r in rows if r["ratio"] is not None)
    base = {r["shape"]: r for r in rows if r["method"] == "unpruned"}
    out = []
    for r in rows:
        if r["ratio"] != str(smallest) or r["method"] not in ("fastv", "d2pruner"):
            continue
        head = f"- {r['shape']}, {r['method']} @ {smallest}: prefill speedup {r['speedup']:.2f}×"
        if reduced:
            out.append(f"{head} at {depth} layers, against a ceiling of {r['flops_ratio_bench']:.2f}× (analytic, "
                       f"layers < K = {k} are never pruned); extrapolated to {full} layers "
                       f"{r['extrapolated_speedup']:.2f}× (analytic {r['flops_ratio_full']:.2f}× exact, "
                       f"{r['flops_ratio_paper']:.2f}× paper convention). Target ≥ 5× (GPU, full depth): not "
                       "measurable here.")
        else:
            out.append(f"{head} (analytic {r['flops_ratio_full']:.2f}× exact, {r['flops_ratio_paper']:.2f}× paper "
                       f"convention): target ≥ 5× (paper 5.09×) **{'met' if r['speedup'] >= 5 else 'not met'}**.")
    for r in rows:
        if r["method"] != "d2pruner":
            continue
        line = (f"- {r['shape']}, d2pruner @ {r['ratio']}: selection {r['select_ms']:.1f} ms = {r['select_pct']:.2f} % "
                "of its prefill")
        if reduced:
            pct = r["extrapolated_select_pct"]
            of_unpruned = 100 * r["select_ms"] / base[r["shape"]]["extrapolated_prefill_ms"]
            line += (f" at {depth} layers (inflated: the prefill is short); **extrapolated** to {full} layers: "
                     f"**{pct:.2f} %** of the pruned prefill, {of_unpruned:.2f} % of the unpruned one. Target ≤ 0.8 %: "
                     f"**{'met' if pct <= 0.8 else 'not met'}** on the pruned-prefill basis (extrapolation).")
        else:
            of_unpruned = 100 * r["select_ms"] / base[r["shape"]]["prefill_ms"]
            line += (f", {of_unpruned:.2f} % of the unpruned prefill. Target ≤ 0.8 %: "
                     f"**{'met' if r['select_pct'] <= 0.8 else 'not met'}** on the pruned-prefill basis.")
        out.append(line)
    out += [
        "",
        "Notes: the selection computes its similarities in float32 whatever the model dtype (package design), so "
        "where the model runs in bf16 the selection's share of the prefill is larger than a same-dtype comparison "
        "would give. Every timed run is a real `generate`; *min* beside the median shows how much the shared "
        "machine's load moved the medians.",
    ]
    return out


# ----------------------------------------------------------------------------------------------------------------


def bench_shape(shape: Shape, configs: list[Config], args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype) -> tuple[list[dict], dict, ModelArch]:
    """Warm-up + memory pass, then ``args.runs`` interleaved timed repetitions of every configuration."""
    bench = ShapeBench(shape, args, device, dtype)
    print(f"{shape.name}: {bench.num_visual} visual (+{bench.num_protected} protected) + {bench.num_text} text "
          f"tokens, {bench.arch.num_layers} layers, built in {bench.build_seconds:.1f} s", flush=True)
    memory = {config: bench.run(config, memory=True)[1] for config in configs}  # untimed warm-up
    runs: dict[Config, list[Run]] = {c: [] for c in configs}
    for rep in range(args.runs):
        shift = rep % len(configs)  # rotate the order so that drifting load hits every configuration alike
        for config in configs[shift:] + configs[:shift]:
            runs[config].append(bench.run(config)[0])
        print(f"  run {rep + 1}/{args.runs} prefill ms: "
              + ", ".join(f"{c.label} {runs[c][-1].prefill * 1e3:.0f}" for c in configs), flush=True)
    rows = summarise(bench, configs, runs, memory, args)
    meta = dict(name=shape.name, arch=shape.arch, visual=bench.num_visual, protected=bench.num_protected,
                text=bench.num_text, seq_len=bench.tokens.seq_len, weight_gb=bench.weight_bytes / 1e9,
                build_seconds=bench.build_seconds)
    return rows, meta, bench.arch


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark, write the markdown table and its JSON, return the markdown path."""
    import transformers

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        out = args.out or args.render.with_suffix(".md")
        out.write_text(render(data["meta"], data["rows"]))
        print(f"rendered {out}")
        return out
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    gflops = {}
    if not cuda:  # records whether bf16 (AVX512-BF16 / AMX) or fp32 is the faster CPU dtype here
        probe = language_arch(SHAPES[args.shapes[0]], args)
        gflops = {name: matmul_gflops(probe, getattr(torch, name), device) for name in ("bfloat16", "float32")}
        print("FFN matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in gflops.items()), flush=True)
    configs = [Config(None, None)] + [Config(m, r) for r in sorted(args.ratios, reverse=True) for m in args.methods]
    rows: list[dict] = []
    shapes_meta: list[dict] = []
    for name in args.shapes:
        shape_rows, shape_meta, arch = bench_shape(SHAPES[name], configs, args, device, dtype)
        rows += shape_rows
        shapes_meta.append(shape_meta)
        if cuda:
            torch.cuda.empty_cache()
    machine = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()} ({platform.machine()}), " \
                                                              f"{args.threads} thread(s)"
    meta = dict(
        date=date.today().isoformat(), device=device.type, machine=machine, torch=torch.__version__,
        transformers=transformers.__version__, dtype=args.dtype, layers=args.layers,
        full_layers=max(ARCHITECTURES[s["arch"]].num_layers for s in shapes_meta), prune_layer=args.prune_layer,
        hidden=arch.hidden_size, intermediate=arch.intermediate_size, heads=arch.num_heads,
        kv_heads=arch.num_kv_heads, vocab=arch.vocab_size, text_tokens=args.text_tokens,
        decode_steps=args.decode_steps, runs=args.runs, threads=args.threads, matmul_gflops=gflops,
        shapes=shapes_meta, command=" ".join(["python bench/prefill.py", *argv]),
        wall_seconds=time.perf_counter() - started,
    )
    out = args.out or RESULTS / f"prefill-{'gpu' if cuda else 'cpu'}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    report = render(meta, rows)
    out.write_text(report)
    print(report)
    print(f"saved {out} and {out.with_suffix('.json').name}")
    return out


if __name__ == "__main__":
    main()
