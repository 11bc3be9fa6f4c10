"""``Analyzer.analyze`` with six methods against one method, methods batched in one generation or one by one.

One analysis runs the vision tower once, one unpruned generation, each method's selection, then the methods'
pruned generations — in ONE batched generation (one row per method, the layers below K replayed from the unpruned
run), or one after the other (``method_batch=1``, also replayed). Both give identical answers (tested); this measures
what batching saves. Shapes: the tiny models (as the app runs them offline), and real-width LLaVA-1.5-7B (576 visual
tokens) and LLaVA-NeXT-7B (2,880) language models at 4 of their 32 layers, built as ``bench/prefill.py`` builds them
(real transformers classes, random weights, the real processors).

Measured per configuration: wall time of ``analyze`` (medians over interleaved repetitions, the configurations
rotating their order), and peak memory above what was allocated before the call (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the peak resident set size sampled every 2 ms). Prior "uniform" (no
calibration), greedy decoding of ``--max-new-tokens`` tokens, keep ratios 1/4 and 1/9, K = 2.

    python bench/analysis.py                 # CPU -> bench/results/analysis-cpu.md (+ .json)
    python bench/analysis.py --device cuda   # GPU -> bench/results/analysis-gpu.md (+ .json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name

import d2pruner

RESULTS = Path(__file__).resolve().parent / "results"
SIX = ("fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di")
TINY = ("tiny-llava", "tiny-qwen2.5-vl")
REAL = ("llava-1.5-7b", "llava-next-7b")
CONFIGS = (("one method", ("d2pruner",), None), ("six, one by one", SIX, 1), ("six, batched", SIX, None))
PROMPT = "Describe this image in detail: the objects, their colours and where they are."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/analysis.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--shapes", nargs="+", default=[*TINY, *REAL], choices=[*TINY, *REAL])
    parser.add_argument("--runs", type=int, default=None, help="repetitions (default: 5 tiny, 3 real width)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="greedy answer length (default: 24)")
    parser.add_argument("--keep-ratios", nargs="+", type=float, default=[0.25, 1 / 9],
                        help="keep ratios (default: 1/4 and 1/9, the paper's 11.1 %%)")
    parser.add_argument("--layers", type=int, default=None, help="real-width depth (default: 4 on CPU, 32 on CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", type=Path, default=None, help="markdown output (default: bench/results/…)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was given but CUDA is not available")
    if args.layers is None:
        args.layers = 32 if args.device.startswith("cuda") else 4
    if args.max_new_tokens < 1 or args.threads < 1 or (args.runs is not None and args.runs < 1):
        parser.error("--max-new-tokens, --threads and --runs must be >= 1")
    return args


def build(shape: str, args) -> tuple[d2pruner.Analyzer, object]:
    """The analyzer of one shape and its input image."""
    import numpy as np
    from PIL import Image

    device = torch.device(args.device)
    if shape in TINY:
        analyzer = d2pruner.load(shape, device=device)
        rng = np.random.RandomState(0)
        return analyzer, Image.fromarray((rng.rand(112, 168, 3) * 255).astype("uint8"))
    import prefill

    spec = prefill.SHAPES[shape]
    options = argparse.Namespace(layers=args.layers, hidden=None, heads=None, intermediate=None)
    processor = prefill.build_processor(spec)
    dtype = torch.bfloat16
    model = prefill.build_model(spec, prefill.language_arch(spec, options),
                                processor.tokenizer.convert_tokens_to_ids("<image>"), device, dtype)
    return d2pruner.Analyzer(model, processor, name=shape), prefill.smooth_image(spec.image_size)


class PeakMemory:
    """Peak memory above the baseline during a ``with`` block (CUDA allocator, or CPU resident set size)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.highest = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.highest = max(self.highest, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.highest, _rss()) - self.base


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return float(f.read().split()[1]) * 4096


def measure(analyzer, image, shape: str, keep_ratio: float, args) -> dict:
    runs = args.runs or (5 if shape in TINY else 3)
    common = dict(keep_ratio=keep_ratio, layer=2, max_new_tokens=args.max_new_tokens, prior="uniform")
    for _, methods, batch in CONFIGS:  # warm-up, untimed
        analyzer.analyze(image, PROMPT, methods=methods, method_batch=batch, **common)
    times = {label: [] for label, _, _ in CONFIGS}
    peaks = {label: [] for label, _, _ in CONFIGS}
    answers = {}
    for rep in range(runs):
        order = CONFIGS[rep % len(CONFIGS):] + CONFIGS[: rep % len(CONFIGS)]
        for label, methods, batch in order:
            with PeakMemory(analyzer.device) as memory:
                start = time.perf_counter()
                result = analyzer.analyze(image, PROMPT, methods=methods, method_batch=batch, **common)
                times[label].append(time.perf_counter() - start)
            peaks[label].append(memory.peak)
            answers[label] = {m: r.answer for m, r in result.methods.items()}
    alone, batched = answers["six, one by one"], answers["six, batched"]
    same = sum(alone[m] == batched[m] for m in batched)
    one = statistics.median(times["one method"])
    return {
        "shape": shape, "keep_ratio": keep_ratio, "num_candidates": result.num_candidates, "n": result.n,
        "prompt_tokens": result.prompt_tokens, "same_answers": f"{same}/{len(batched)}",
        "runs": runs, "layers": analyzer.num_layers,
        "configs": {label: {"median_s": statistics.median(t), "ratio": statistics.median(t) / one,
                            "peak_mb": statistics.median(peaks[label]) / 1e6} for label, t in times.items()},
    }


def render(rows: list[dict], args) -> str:
    device = "CUDA " + torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({cpu_name()})"
    lines = [
        f"# analyze(): six methods vs one — batched in one generation vs one by one ({device})",
        "",
        f"{date.today().isoformat()} · torch {torch.__version__} · transformers "
        f"{__import__('transformers').__version__} · {args.threads} thread(s) · K = 2 · "
        f"{args.max_new_tokens} new tokens · prior uniform · medians of interleaved repetitions · "
        f"`python bench/analysis.py{' --device cuda' if args.device != 'cpu' else ''}`",
        "",
        "| shape | N visual | layers | keep (n) | configuration | median s | × one method | peak memory above base "
        "| answers = one by one |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for label, c in row["configs"].items():
            same = row.get("same_answers", "–") if label == "six, batched" else ""
            lines.append(f"| {row['shape']} | {row['num_candidates']} | {row['layers']} | "
                         f"{row['keep_ratio']:.3g} ({row['n']}) | {label} | "
                         f"{c['median_s']:.3f} | {c['ratio']:.2f}× | {c['peak_mb']:.0f} MB | {same} |")
    lines += [
        "",
        "Six methods: FastV, DART, DivPrune, MMR, D²Pruner, DI only. *One by one* = `analyze(..., method_batch=1)`: "
        "the same replayed prefix, one generation per method; *batched* = the default, one generation with one row per "
        "method. *Answers = one by one*: how many of the six batched answers equal the one-by-one answers of the same "
        "run. In float32 the tests pin them identical (tokens, logits within 1e-5); the real-width shapes run in bf16 "
        "with random weights, whose near-flat logits let a batched matmul's different rounding change a greedy "
        "token. Real-width shapes: the language model of LLaVA-1.5-7B / LLaVA-NeXT-7B (hidden 4096, FFN 11008, 32 "
        "heads, vocabulary 32064) at the depth given, bf16, random weights. CPU peak memory is the resident set "
        "size, sampled every 2 ms.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes:
        analyzer, image = build(shape, args)
        for keep_ratio in args.keep_ratios:
            row = measure(analyzer, image, shape, keep_ratio, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del analyzer
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    out = args.out or RESULTS / f"analysis-{kind}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, args))
    out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                    "rows": rows}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
