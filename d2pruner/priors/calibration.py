"""Calibrating positional-bias priors: the mean layer-(K−1) attention over many images.

Each image is *observed* with early exit (``Analyzer.observe``: the vision tower and the first K decoder layers
only) — calibration takes that observer as a function and knows nothing else of the model. Fixed-shape grid roles
are averaged as they are (the paper's definition); dynamic ones are first resized to a canonical grid with their
mass kept (see :mod:`d2pruner.priors`). The command line is ``python -m d2pruner.calibrate``.

A run checkpoints its running sums every ``--checkpoint-every`` images next to the output
(``<out>.partial``) and resumes from there when restarted with the same settings; the prior file itself is
only ever written whole (atomic rename), so an interrupted run never leaves a half-written prior.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d2pruner.priors import KINDS, Prior, resize_keeping_mass, tile_mosaic
from d2pruner.resources import CALIBRATION_DIR

DEFAULT_PROMPT = "Please describe the provided image."
DEFAULT_CANONICAL = (24, 24)
BUNDLED_IMAGES = CALIBRATION_DIR
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: size of the generated content-free images (a common 4:3 photo shape)
CONTENT_FREE_SIZE = (640, 480)

Progress = Callable[[int, int, str], None]
ImageSource = Sequence[tuple[str, Callable[[], object]]]  # (id, loader) pairs; loaders open lazily
#: ``observe(image, prompt, layer=K)`` → an observation with ``grids`` (``.name``), ``attention`` (one 2-D array per
#: grid) and ``layout`` — ``Analyzer.observe``
Observer = Callable[..., Any]


@dataclass
class PriorAccumulator:
    """Running sums of per-image attention maps by grid role.

    Arguments:
        family: the model family (``d2pruner.families``): its grid roles, dynamic roles and tile arrangement.
        canonical: the canonical (h, w) of dynamic roles.
    """

    family: Any
    canonical: tuple[int, int] = DEFAULT_CANONICAL
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, observation) -> None:
        """Add one observation (``Analyzer.observe``)."""
        for role, values in self.role_maps(observation).items():
            if role in self.sums and self.sums[role].shape != values.shape:
                raise ValueError(
                    f"grid {role!r} changed shape ({tuple(self.sums[role].shape)} → {tuple(values.shape)}) "
                    f"but is not a dynamic role of {self.family.label}"
                )
            self.sums[role] = self.sums.get(role, torch.zeros_like(values)) + values
        self.count += 1

    def role_maps(self, observation) -> dict[str, torch.Tensor]:
        """One float64 map per role for one image: tiles joined into their mosaic, dynamic roles resized."""
        by_role: dict[str, list[torch.Tensor]] = {}
        for grid, values in zip(observation.grids, observation.attention, strict=True):
            role = self.family.prior_role(grid.name)
            by_role.setdefault(role, []).append(torch.from_numpy(np.asarray(values, dtype=np.float64)))
        maps = {}
        for role, parts in by_role.items():
            arrangement = self.family.tile_arrangement(observation.layout)
            values = tile_mosaic(parts, arrangement) if len(parts) > 1 else parts[0]
            if role in self.family.dynamic_prior_roles:
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
    observe: Observer,
    images: ImageSource,
    *,
    model_id: str,
    family,
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
        observe: ``observe(image, prompt, layer=K)`` → an observation (``Analyzer.observe``: early exit).
        images: (id, loader) pairs; unreadable images are skipped and counted.
        model_id: the model's name (the prior's ``model_id``); ``family``: its :class:`~d2pruner.families.Family`.
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
    fingerprint = _fingerprint(model_id, layer, prompt, kind, canonical, [name for name, _ in images])
    accumulator, done, skipped = _resume(checkpoint, fingerprint, family, canonical)
    started = time.perf_counter()
    for index in range(done, len(images)):
        name, loader = images[index]
        try:
            image = loader()
        except Exception as error:  # any unreadable file is skipped and reported
            skipped.append(f"{name}: {type(error).__name__}")
        else:
            accumulator.add(observe(image, prompt, layer=layer))
        if progress is not None:
            progress(index + 1, len(images), name)
        if checkpoint is not None and (index + 1) % checkpoint_every == 0 and index + 1 < len(images):
            _save_checkpoint(checkpoint, fingerprint, accumulator, index + 1, skipped)
    prior = Prior(
        maps=accumulator.mean(),
        model_id=model_id,
        layer=layer,
        kind=kind,
        num_images=accumulator.count,
        source=source,
        prompt=prompt,
        info=_info(family.name, canonical, skipped, time.perf_counter() - started, len(images) - done),
    )
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return prior


def calibrate_bundled(
    observe: Observer, *, model_id: str, family, layer: int, kind: str = "natural", progress: Progress | None = None
) -> Prior:
    """Calibrate from the bundled photographs (``d2pruner/assets/calibration``) or the content-free images."""
    if kind == "content-free":
        return calibrate(observe, content_free_images(), model_id=model_id, family=family, layer=layer, kind=kind,
                         source="content-free images (8 blank, 8 noise)", progress=progress)
    if not BUNDLED_IMAGES.is_dir():
        raise ValueError(
            f"no calibrated prior for {model_id} at layer {layer} and no bundled calibration images; "
            "run `python -m d2pruner.calibrate --model ... --images DIR`"
        )
    images = folder_images(BUNDLED_IMAGES)
    return calibrate(observe, images, model_id=model_id, family=family, layer=layer,
                     source=f"assets/calibration ({len(images)} photographs)", progress=progress)


def _info(family: str, canonical, skipped: list[str], seconds: float, processed: int) -> dict:
    import transformers

    from d2pruner.compat import package_version

    return {
        "family": family,
        "canonical_grid": list(canonical),
        "skipped_images": skipped,
        "seconds_per_image": round(seconds / max(1, processed), 6),
        "d2pruner_version": package_version(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "date": date.today().isoformat(),
    }


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _resume(checkpoint: Path | None, fingerprint: str, family, canonical) -> tuple[PriorAccumulator, int, list[str]]:
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
