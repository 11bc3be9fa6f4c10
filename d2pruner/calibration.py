"""Calibrating positional-bias priors: the mean layer-(K−1) attention over many images.

Each image runs with early exit (:meth:`~d2pruner.analyzer.Analyzer.observe`: the vision tower and the first
K decoder layers only). Fixed-shape grid roles are averaged as they are (the paper's definition); dynamic
ones are first resized to a canonical grid with their mass kept (see :mod:`d2pruner.priors`).

Command line::

    python -m d2pruner.priors calibrate --model tiny-llava --images assets/calibration
    python -m d2pruner.priors calibrate --model llava-hf/llava-1.5-7b-hf --images coco/val2017 --num 1000
    python -m d2pruner.priors calibrate --model tiny-llava --kind content-free
    python -m d2pruner.priors show priors/tiny-llava__layer2.safetensors

A run checkpoints its running sums every ``--checkpoint-every`` images next to the output
(``<out>.partial``) and resumes from there when restarted with the same settings; the prior file itself is
only ever written whole (atomic rename), so an interrupted run never leaves a half-written prior.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import torch

from d2pruner.layout import tile_arrangement
from d2pruner.priors import KINDS, Prior, grid_role, is_dynamic, resize_keeping_mass, tile_mosaic
from d2pruner.resources import CALIBRATION_DIR

DEFAULT_PROMPT = "Please describe the provided image."
DEFAULT_CANONICAL = (24, 24)
BUNDLED_IMAGES = CALIBRATION_DIR
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: size of the generated content-free images (a common 4:3 photo shape)
CONTENT_FREE_SIZE = (640, 480)

Progress = Callable[[int, int, str], None]
ImageSource = Sequence[tuple[str, Callable[[], object]]]  # (id, loader) pairs; loaders open lazily


@dataclass
class PriorAccumulator:
    """Running sums of per-image attention maps by grid role.

    Arguments:
        family: the layout family (decides which roles are dynamic).
        canonical: the canonical (h, w) of dynamic roles.
    """

    family: str
    canonical: tuple[int, int] = DEFAULT_CANONICAL
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, observation) -> None:
        """Add one :class:`~d2pruner.analyzer.Observation`."""
        for role, values in self.role_maps(observation).items():
            if role in self.sums and self.sums[role].shape != values.shape:
                raise ValueError(
                    f"grid {role!r} changed shape ({tuple(self.sums[role].shape)} → {tuple(values.shape)}) "
                    f"but is not a dynamic role of {self.family}"
                )
            self.sums[role] = self.sums.get(role, torch.zeros_like(values)) + values
        self.count += 1

    def role_maps(self, observation) -> dict[str, torch.Tensor]:
        """One float64 map per role for one image: tiles joined into their mosaic, dynamic roles resized."""
        by_role: dict[str, list[torch.Tensor]] = {}
        for grid, values in zip(observation.grids, observation.attention, strict=True):
            by_role.setdefault(grid_role(grid.name), []).append(torch.from_numpy(np.asarray(values, dtype=np.float64)))
        maps = {}
        for role, parts in by_role.items():
            values = tile_mosaic(parts, tile_arrangement(observation.layout)) if role == "tiles" else parts[0]
            if is_dynamic(self.family, role):
                values = resize_keeping_mass(values, self.canonical).double()
            maps[role] = values
        return maps

    def mean(self) -> dict[str, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no image was calibrated")
        return {role: (total / self.count).float() for role, total in self.sums.items()}


# ---------------------------------------------------------------------------------------------- images
def folder_images(folder: str | os.PathLike[str], limit: int | None = None) -> ImageSource:
    """Image files of a folder (sorted by name, recursively), opened lazily."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist")
    if _is_dataset(folder):
        return dataset_images(folder, limit)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [(str(p.relative_to(folder)), _file_loader(p)) for p in files[:limit]]


def _file_loader(path: Path) -> Callable[[], object]:
    def load():
        from PIL import Image, ImageOps

        with Image.open(path) as image:
            image.seek(0)
            return ImageOps.exif_transpose(image).copy()

    return load


def _is_dataset(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def dataset_images(folder: str | os.PathLike[str], limit: int | None = None, split: str | None = None) -> ImageSource:
    """Images of a Hugging Face ``datasets`` folder saved with ``save_to_disk`` (first image column)."""
    try:
        import datasets
    except ImportError as error:
        raise ValueError(f"{folder} is a datasets folder; reading it needs `pip install datasets`") from error
    data = datasets.load_from_disk(str(folder))
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        chosen = split or next((s for s in ("validation", "val", "test", "train") if s in data), names[0])
        if chosen not in data:
            raise ValueError(f"split {chosen!r} not in {folder}; it has {names}")
        data = data[chosen]
    column = next((name for name, feature in data.features.items() if isinstance(feature, datasets.Image)), None)
    if column is None:
        raise ValueError(f"dataset {folder} has no image column (features: {list(data.features)})")
    count = len(data) if limit is None else min(limit, len(data))
    return [(f"{column}[{i}]", (lambda i=i: data[i][column])) for i in range(count)]


def content_free_images(size: tuple[int, int] = CONTENT_FREE_SIZE) -> ImageSource:
    """Images without content: 8 flat colours and 8 noise images (uniform colour noise, Gaussian grey
    noise), deterministic. Their mean attention is what position alone draws."""
    from PIL import Image

    colours = {
        "black": (0, 0, 0),
        "white": (255, 255, 255),
        "grey": (128, 128, 128),
        "red": (200, 30, 30),
        "green": (30, 160, 60),
        "blue": (30, 60, 200),
        "yellow": (230, 210, 40),
        "sky": (135, 190, 235),
    }
    width, height = size
    images: list[tuple[str, Callable[[], object]]] = [
        (f"blank-{name}", (lambda rgb=rgb: Image.new("RGB", size, rgb))) for name, rgb in colours.items()
    ]

    def noise(seed: int, gaussian: bool):
        rng = np.random.default_rng(seed)
        if gaussian:
            grey = np.clip(rng.normal(128, 40, (height, width)), 0, 255).astype(np.uint8)
            return Image.fromarray(grey).convert("RGB")
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    images += [(f"noise-uniform-{s}", (lambda s=s: noise(s, False))) for s in range(4)]
    images += [(f"noise-gaussian-{s}", (lambda s=s: noise(100 + s, True))) for s in range(4)]
    return images


# ---------------------------------------------------------------------------------------------- calibration
def calibrate(
    analyzer,
    images: ImageSource,
    *,
    layer: int,
    prompt: str = DEFAULT_PROMPT,
    kind: str = "natural",
    source: str = "",
    canonical: tuple[int, int] = DEFAULT_CANONICAL,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 25,
) -> Prior:
    """Mean layer-(K−1) attention over ``images`` → a :class:`~d2pruner.priors.Prior`.

    Arguments:
        analyzer: a loaded :class:`~d2pruner.analyzer.Analyzer`.
        images: (id, loader) pairs; unreadable images are skipped and counted.
        layer: K.
        prompt: the generic prompt (paper: "Please describe the provided image.").
        kind: ``"natural"`` or ``"content-free"``.
        source: a description of the images for the metadata.
        canonical: canonical grid of dynamic roles.
        progress: ``progress(done, total, message)`` after each image.
        checkpoint: a file for running sums; resumed when its settings match, deleted at the end.
    """
    if kind not in KINDS:
        raise ValueError(f"prior kind must be one of {KINDS}; got {kind!r}")
    if not images:
        raise ValueError("no images to calibrate on")
    fingerprint = _fingerprint(analyzer.name, layer, prompt, kind, canonical, [name for name, _ in images])
    accumulator, done, skipped = _resume(checkpoint, fingerprint, analyzer.family, canonical)
    started = time.perf_counter()
    for index in range(done, len(images)):
        name, loader = images[index]
        try:
            image = loader()
        except Exception as error:  # any unreadable file is skipped and reported
            skipped.append(f"{name}: {type(error).__name__}")
        else:
            accumulator.add(analyzer.observe(image, prompt, layer=layer))
        if progress is not None:
            progress(index + 1, len(images), name)
        if checkpoint is not None and (index + 1) % checkpoint_every == 0 and index + 1 < len(images):
            _save_checkpoint(checkpoint, fingerprint, accumulator, index + 1, skipped)
    prior = Prior(
        maps=accumulator.mean(),
        model_id=analyzer.name,
        layer=layer,
        kind=kind,
        num_images=accumulator.count,
        source=source,
        prompt=prompt,
        info=_info(analyzer, canonical, skipped, time.perf_counter() - started, len(images) - done),
    )
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return prior


def calibrate_bundled(analyzer, *, layer: int, kind: str = "natural", progress: Progress | None = None) -> Prior:
    """Calibrate from the bundled photographs (``assets/calibration``) or the content-free images."""
    if kind == "content-free":
        return calibrate(
            analyzer,
            content_free_images(),
            layer=layer,
            kind=kind,
            source="content-free images (8 blank, 8 noise)",
            progress=progress,
        )
    if not BUNDLED_IMAGES.is_dir():
        raise ValueError(
            f"no calibrated prior for {analyzer.name} at layer {layer} and no bundled images at {BUNDLED_IMAGES}; "
            "run `python -m d2pruner.priors calibrate --model ... --images DIR`"
        )
    images = folder_images(BUNDLED_IMAGES)
    return calibrate(
        analyzer, images, layer=layer, source=f"assets/calibration ({len(images)} photographs)", progress=progress
    )


def _info(analyzer, canonical, skipped: list[str], seconds: float, processed: int) -> dict:
    import transformers

    from d2pruner import __version__

    return {
        "family": analyzer.family,
        "canonical_grid": list(canonical),
        "skipped_images": skipped,
        "seconds_per_image": round(seconds / max(1, processed), 6),
        "d2pruner_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "date": date.today().isoformat(),
    }


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _resume(
    checkpoint: Path | None, fingerprint: str, family: str, canonical
) -> tuple[PriorAccumulator, int, list[str]]:
    fresh = PriorAccumulator(family=family, canonical=tuple(canonical))
    if checkpoint is None or not checkpoint.is_file():
        return fresh, 0, []
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(checkpoint), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("d2pruner_checkpoint", "{}"))
            sums = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError):
        return fresh, 0, []
    if meta.get("fingerprint") != fingerprint:
        return fresh, 0, []
    fresh.sums, fresh.count = sums, int(meta["count"])
    return fresh, int(meta["done"]), list(meta.get("skipped", []))


def _save_checkpoint(path: Path, fingerprint: str, accumulator: PriorAccumulator, done: int, skipped) -> None:
    from safetensors.torch import save_file

    meta = {"fingerprint": fingerprint, "done": done, "count": accumulator.count, "skipped": list(skipped)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.contiguous() for k, v in accumulator.sums.items()},
        str(tmp),
        metadata={"d2pruner_checkpoint": json.dumps(meta)},
    )
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- early exit
def early_exit_speedup(analyzer, image, prompt: str, *, layer: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one early-exit observation vs one full prefill forward of the same prepared request
    (preprocessing excluded from both)."""
    request = analyzer._prepare(image, prompt)

    def full():
        with torch.inference_mode():
            analyzer.model(**request.inputs, use_cache=False)

    def early():
        analyzer._observe(request, layer)

    timings = {"early_exit": [], "full_prefill": []}
    for _ in range(repeats):
        for name, fn in (("early_exit", early), ("full_prefill", full)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(values)) for name, values in timings.items()}
    medians["speedup"] = medians["full_prefill"] / medians["early_exit"]
    return medians


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m d2pruner.priors",
        description="Calibrate and inspect positional-bias priors (mean last-token attention at layer K-1).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cal = commands.add_parser("calibrate", help="calibrate a prior for a model and layer")
    cal.add_argument("--model", required=True, help="tiny-* name, hub id or local path")
    cal.add_argument("--images", help="folder of images or a datasets folder (save_to_disk); not for content-free")
    cal.add_argument("--kind", default="natural", choices=KINDS)
    cal.add_argument("--num", type=int, default=1000, help="at most this many images (default 1000, as the paper)")
    cal.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"generic prompt (default {DEFAULT_PROMPT!r})")
    cal.add_argument("--layer", type=int, default=2, help="pruning layer K; the prior is attention at K-1 (default 2)")
    cal.add_argument("--canonical", default="24x24", help="canonical grid HxW of dynamic layouts (default 24x24)")
    cal.add_argument("--split", help="split of a datasets folder (default validation/test/train)")
    cal.add_argument("--out", help="output file (default priors/<model>__layer<K>[__content-free].safetensors)")
    cal.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    cal.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype")
    cal.add_argument("--checkpoint-every", type=int, default=25, help="save running sums every N images")
    cal.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    cal.add_argument("--no-speedup", action="store_true", help="skip measuring early exit vs a full prefill")
    show = commands.add_parser("show", help="print a prior file's metadata and summary")
    show.add_argument("path")
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
    from d2pruner.analyzer import BUNDLED_PRIORS, load
    from d2pruner.priors import prior_filename, save_prior

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
    out = Path(args.out) if args.out else BUNDLED_PRIORS / prior_filename(analyzer.name, args.layer, args.kind)
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
            analyzer,
            images,
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


def run_show(args: argparse.Namespace) -> None:
    from d2pruner.priors import load_prior

    prior = load_prior(args.path)
    print(prior.describe())
    print(json.dumps({"prompt": prior.prompt, **prior.info}, indent=2, default=str))
    for role, values in prior.maps.items():
        rows = values.sum(dim=1)
        print(
            f"{role}: {tuple(values.shape)}, sum {float(values.sum()):.4g}, bottom/top row mass ratio "
            f"{float(rows[-1] / rows[0]) if rows[0] > 0 else float('inf'):.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "calibrate":
            run_calibrate(args)
        else:
            run_show(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
