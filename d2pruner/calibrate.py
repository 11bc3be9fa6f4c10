"""Calibrate a model's positional-bias prior from the command line (early exit; resumable).

    python -m d2pruner.calibrate --model tiny-llava --images d2pruner/assets/calibration
    python -m d2pruner.calibrate --model llava-hf/llava-1.5-7b-hf --images coco/val2017 --num 1000   # the paper's
    python -m d2pruner.calibrate --model llava-hf/llava-1.5-7b-hf --images coco_val_saved --split validation
    python -m d2pruner.calibrate --model tiny-llava --kind content-free
    python -m d2pruner.priors show d2pruner/assets/priors/tiny-llava__layer2.safetensors

``--images`` is a folder of image files (searched recursively, sorted by name, e.g. COCO's ``val2017/``) or a
Hugging Face ``datasets`` folder written by ``save_to_disk`` (its first image column). The paper's prior is the mean
over 1,000 random COCO images with the prompt "Please describe the provided image." — ``--num 1000`` takes the
first 1,000 by name (a fixed, reproducible subset).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from d2pruner.priors import KINDS, prior_filename, save_prior
from d2pruner.priors.calibration import (
    DEFAULT_PROMPT,
    calibrate,
    content_free_images,
    dataset_images,
    folder_images,
)
from d2pruner.resources import BUNDLED_PRIORS_DIR


def early_exit_speedup(analyzer, image, prompt: str, *, layer: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one early-exit observation vs one full prefill forward of the same prepared request
    (preprocessing excluded from both)."""
    prepared = analyzer._prepare(image, prompt)

    def full():
        with torch.inference_mode():
            analyzer.model(**prepared.inputs, use_cache=False)

    def early():
        analyzer._observe(prepared, layer)

    timings = {"early_exit": [], "full_prefill": []}
    for _ in range(repeats):
        for name, fn in (("early_exit", early), ("full_prefill", full)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(values)) for name, values in timings.items()}
    medians["speedup"] = medians["full_prefill"] / medians["early_exit"]
    return medians


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m d2pruner.calibrate",
        description="Calibrate a positional-bias prior: the mean last-token attention at layer K-1 over many images.",
    )
    parser.add_argument("--model", required=True, help="tiny-* name, hub id or local path")
    parser.add_argument("--images", help="folder of images or a datasets folder (save_to_disk); not for content-free")
    parser.add_argument("--kind", default="natural", choices=KINDS)
    parser.add_argument("--num", type=int, default=1000, help="at most this many images (default 1000, as the paper)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"generic prompt (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--layer", type=int, default=2, help="pruning layer K; the prior is attention at K-1")
    parser.add_argument("--canonical", default="24x24", help="canonical grid HxW of dynamic layouts (default 24x24)")
    parser.add_argument("--split", help="split of a datasets folder (default validation/test/train)")
    parser.add_argument("--out", help="output file (default d2pruner/assets/priors/<model>__layer<K>[...].safetensors)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="save running sums every N images")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--no-speedup", action="store_true", help="skip measuring early exit vs a full prefill")
    return parser.parse_args(argv)


def _canonical(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--canonical must look like 24x24; got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"--canonical must be positive; got {text!r}")
    return h, w


def run_calibrate(args: argparse.Namespace) -> Path:
    from d2pruner.analysis import load

    if args.num < 1:
        raise ValueError("--num must be >= 1")
    canonical = _canonical(args.canonical)
    if args.kind == "content-free":
        images, source = content_free_images(), "content-free images (8 blank, 8 noise)"
    elif not args.images:
        raise ValueError("--images is required for a natural prior")
    else:
        images = (
            folder_images(args.images, args.num)
            if not args.split
            else dataset_images(args.images, args.num, args.split)
        )
        source = f"{args.images} ({len(images)} images)"
    dtype = getattr(torch, args.dtype) if args.dtype else None
    analyzer = load(args.model, device=args.device, dtype=dtype)
    out = Path(args.out) if args.out else BUNDLED_PRIORS_DIR / prior_filename(analyzer.name, args.layer, args.kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = out.with_name(out.name + ".partial")
    if args.restart and checkpoint.exists():
        checkpoint.unlink()
    from tqdm import tqdm

    with tqdm(total=len(images), desc=f"calibrating {analyzer.name} K={args.layer}", unit="img") as bar:

        def progress(done: int, total: int, name: str) -> None:
            bar.set_postfix_str(name[-30:], refresh=False)
            bar.update(done - bar.n)

        prior = calibrate(
            analyzer.observe,
            images,
            model_id=analyzer.name,
            family=analyzer.model_family,
            layer=args.layer,
            prompt=args.prompt,
            kind=args.kind,
            source=source,
            canonical=canonical,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every,
        )
    if not args.no_speedup:
        _, loader = images[0]
        timing = early_exit_speedup(analyzer, loader(), args.prompt, layer=args.layer)
        prior = dataclasses.replace(prior, info={**prior.info, "early_exit": timing})
        print(
            f"early exit: {timing['early_exit'] * 1e3:.1f} ms vs full prefill {timing['full_prefill'] * 1e3:.1f} ms "
            f"per image ({timing['speedup']:.2f}x)"
        )
    path = save_prior(prior, out)
    print(f"saved {path}: {prior.describe()}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_calibrate(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
