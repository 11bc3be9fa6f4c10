"""Time every selection method beside one normalised N×N Gram matmul, measured in the same run.

The Gram matrix (cosine similarity of all visual-token pairs) is the unavoidable core of any
similarity-based method, so each method's time is reported as a ratio to it. Measurements are
interleaved (one run of every method per repetition) so that load on a shared machine hits all alike.

    python bench/selection.py                      # CPU, one thread -> bench/results/selection-cpu.md
    python bench/selection.py --device cuda        # GPU            -> bench/results/selection-gpu.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name

import d2pruner

SIZES = ((24, 24), (48, 60))  # LLaVA-1.5 (576 tokens) and a LLaVA-NeXT-sized grid (2880 tokens)
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dim", type=int, default=4096, help="hidden size D (default: 4096)")
    parser.add_argument("--runs", type=int, default=10, help="timed repetitions per method (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", type=Path, default=None, help="output markdown (default: results/selection-<dev>.md)")
    return parser.parse_args(argv)


def smooth_hidden(h: int, w: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """Spatially smooth features (as real visual hidden states are), so the graph has edges."""
    coarse = torch.randn(1, dim, max(2, h // 4), max(2, w // 4), generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return field[0].permute(1, 2, 0).reshape(h * w, dim) + 0.3 * torch.randn(h * w, dim, generator=gen)


def make_case(grid: tuple[int, int], dim: int, device: str, dtype: torch.dtype) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    h, w = grid
    hidden = smooth_hidden(h, w, dim, gen)
    attention = torch.softmax(3 * torch.randn(h * w, generator=gen), dim=0)
    keys = torch.randn(h * w, dim, generator=gen)
    prior = torch.rand(24, 24, generator=gen) + 0.1
    # dart-official reads the whole prompt: 35 system / user tokens, the N visual tokens, 20 question tokens
    before, after = 35, 20
    length = before + h * w + after
    text_mask = torch.ones(length, dtype=torch.bool)
    text_mask[before:before + h * w] = False
    seq_normed = torch.cat([torch.randn(before, dim, generator=gen), hidden, torch.randn(after, dim, generator=gen)])
    return {
        "hidden": hidden.to(device, dtype),
        "attention": attention.to(device),
        "keys": keys.to(device, dtype),
        "grid": grid,
        "prior": prior.to(device),
        "seq_keys": torch.cat([torch.randn(before, dim, generator=gen), keys,
                               torch.randn(after, dim, generator=gen)]).to(device, dtype),
        "seq_normed": seq_normed.to(device, dtype),
        "visual_index": torch.arange(before, before + h * w, device=device),
        "text_mask": text_mask.to(device),
    }


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return measure


def gram(hidden: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    return unit @ unit.mT


def bench_size(grid: tuple[int, int], args: argparse.Namespace) -> list[tuple[str, float]]:
    dtype = getattr(torch, args.dtype)
    case = make_case(grid, args.dim, args.device, dtype)
    n = (grid[0] * grid[1]) // 9
    jobs: dict[str, Callable[[], object]] = {"gram (reference)": lambda: gram(case["hidden"])}
    for name in sorted(d2pruner.METHODS):
        jobs[name] = lambda name=name: d2pruner.select(name, n=n, **case)
    measure = timer(args.device)
    for fn in jobs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.runs):
        for name, fn in jobs.items():
            times[name].append(measure(fn))
    edges = d2pruner.hybrid_graph(case["hidden"], grid).edges.shape[0]
    print(f"  grid {grid}: N = {grid[0] * grid[1]}, n = {n}, hybrid-graph edges = {edges}")
    return [(name, statistics.median(values)) for name, values in times.items()]


def machine_line(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        where = torch.cuda.get_device_name(0)
    else:
        where = f"{cpu_name()}, {args.threads} thread(s)"
    return f"{date.today().isoformat()} · {where} · torch {torch.__version__} · D = {args.dim} · {args.dtype} inputs"


def render(results: dict[tuple[int, int], list[tuple[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"# Selection time ({args.device})",
        "",
        f"{machine_line(args)} · median of {args.runs} interleaved runs · n = N/9",
        "",
        "| method | " + " | ".join(f"N = {h * w} ({h}×{w}) ms | × Gram" for h, w in results) + " |",
        "|---|" + "---:|---:|" * len(results),
    ]
    names = [name for name, _ in next(iter(results.values()))]
    for name in names:
        cells = []
        for rows in results.values():
            table = dict(rows)
            cells += [f"{table[name] * 1e3:.2f}", f"{table[name] / table['gram (reference)']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for grid in SIZES:
        results[grid] = bench_size(grid, args)
    report = render(results, args)
    out = args.out or RESULTS / f"selection-{'gpu' if args.device.startswith('cuda') else 'cpu'}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
