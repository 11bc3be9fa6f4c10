"""Positional-bias priors: the container, safetensors storage with JSON metadata, and fitting to grids.

A prior is the mean attention of the last prompt token to each visual token at layer K−1, averaged over
many natural images with a generic prompt (D²Pruner §3.2). It is stored as one safetensors file per
(model, layer, kind): one float32 2-D map per *grid role* of the model's visual layout, plus JSON metadata.
Loading validates everything and never unpickles anything.

Grid roles (each family maps its grids to roles, ``Family.prior_role``; grids sharing a role are tiles of one mosaic):

* **fixed** roles always have the same shape — LLaVA-1.5 ``"image"`` (24×24), LLaVA-NeXT ``"base"``
  (24×24), InternVL ``"thumbnail"`` (16×16). Their map is the plain mean of the per-image attention maps,
  exactly the paper's definition.
* **dynamic** roles change shape with the image — Qwen2.5-VL ``"image"`` (its grid follows the image),
  LLaVA-NeXT ``"highres"`` (unpadded high-res grid), InternVL ``"tiles"`` (the tiles put together as the
  mosaic they form in the image plane). Each image's map is resized bilinearly to a canonical grid with
  its total mass kept (so it stays in attention units whatever the grid size), then averaged. At use the
  canonical map is resized bilinearly to the image's grid, again keeping its total mass; InternVL's mosaic
  is then cut back into tiles. Keeping mass (not per-token values) keeps the roles of one layout on one
  scale, which matters because D²Pruner ranks the tokens of all grids together.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from d2pruner.ops import all_finite

FORMAT = "d2pruner-prior/1"
KINDS = ("natural", "content-free")
_METADATA_KEY = "d2pruner_prior"
_REQUIRED = ("model_id", "layer", "kind", "grids", "num_images", "source", "prompt")


class PriorFileError(ValueError):
    """A prior file is missing, corrupt, or does not match what was expected (the message names the file)."""


@dataclass(frozen=True)
class Prior:
    """A positional-bias prior.

    Attributes:
        maps: grid role → [h, w] float32 non-negative finite map (e.g. ``{"image": 24×24}``).
        model_id: hub id or name of the model it was calibrated on.
        layer: K; the maps are attention at layer K−1.
        kind: ``"natural"`` (photographs) or ``"content-free"`` (blank and noise images).
        num_images: how many images were averaged.
        source: where the images came from (folder, dataset).
        prompt: the prompt used.
        info: any other metadata (library versions, date, family, timing), JSON-serialisable.
    """

    maps: Mapping[str, torch.Tensor]
    model_id: str
    layer: int
    kind: str = "natural"
    num_images: int = 0
    source: str = ""
    prompt: str = ""
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.maps:
            raise ValueError("a prior needs at least one map")
        for role, values in self.maps.items():
            check_map(values, f"prior map {role!r}")
        if self.kind not in KINDS:
            raise ValueError(f"prior kind must be one of {KINDS}; got {self.kind!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"prior layer must be an integer >= 1; got {self.layer!r}")

    @property
    def grids(self) -> dict[str, tuple[int, int]]:
        """Grid role → (h, w) of the stored map."""
        return {role: (int(m.shape[0]), int(m.shape[1])) for role, m in self.maps.items()}

    def map_for(self, role: str) -> torch.Tensor:
        """The map of a grid role; a single-map prior serves every role."""
        if role in self.maps:
            return self.maps[role]
        if len(self.maps) == 1:
            return next(iter(self.maps.values()))
        raise KeyError(f"prior of {self.model_id!r} has no map for grid {role!r}; it has {sorted(self.maps)}")

    def describe(self) -> str:
        """One line for a UI or a log: what this prior is."""
        grids = ", ".join(f"{role} {h}×{w}" for role, (h, w) in self.grids.items())
        return (
            f"{self.kind} prior of {self.model_id}, layer {self.layer}, {self.num_images} images"
            f" from {self.source or 'unknown source'} ({grids})"
        )


def check_map(values: object, what: str = "prior") -> None:
    """Raise a ValueError unless ``values`` is a non-empty, finite, non-negative 2-D float tensor."""
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or min(values.shape) < 1:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{what} must be a non-empty 2-D tensor [h, w]; got {shape}")
    if not values.is_floating_point() or not all_finite(values):
        raise ValueError(f"{what} must hold finite floating-point values (no NaN or inf)")
    if bool((values < 0).any()):
        raise ValueError(f"{what} must be non-negative (it is a mean attention map)")


def resize_prior(prior: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a 2-D prior to ``size`` with half-pixel centres.

    This is ``align_corners=False`` bilinear interpolation without antialiasing — the sampling that
    ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` and ``torch.nn.functional.interpolate`` use — so a
    constant prior stays constant and resizing to the prior's own size is the identity.

    Args:
        prior: [h', w'] any floating dtype.
        size: (h, w) target grid.
    Returns:
        [h, w] float32 on the prior's device.
    """
    if prior.ndim != 2:
        raise ValueError(f"prior must be 2-D [h', w']; got shape {tuple(prior.shape)}")
    prior = prior.float()
    if tuple(prior.shape) == tuple(size):
        return prior.clone()
    resized = torch.nn.functional.interpolate(prior[None, None], size=tuple(size), mode="bilinear", align_corners=False)
    return resized[0, 0]


def resize_keeping_mass(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear :func:`resize_prior`, rescaled so that the total mass (sum) is unchanged."""
    resized = resize_prior(values, size)
    total = resized.sum()
    return resized * (values.float().sum() / total) if total > 0 else resized


def tile_mosaic(tiles: list[torch.Tensor], arrangement: tuple[int, int]) -> torch.Tensor:
    """Put equally shaped tile maps (row-major) together as the mosaic they form: [rows·h, cols·w]."""
    rows, cols = arrangement
    if len(tiles) != rows * cols:
        raise ValueError(f"{len(tiles)} tiles do not form a {rows}×{cols} arrangement")
    return torch.cat([torch.cat(tiles[r * cols : (r + 1) * cols], dim=1) for r in range(rows)], dim=0)


def cut_mosaic(mosaic: torch.Tensor, arrangement: tuple[int, int]) -> list[torch.Tensor]:
    """Inverse of :func:`tile_mosaic`: the tiles of a [rows·h, cols·w] map, row-major."""
    rows, cols = arrangement
    h, w = mosaic.shape[0] // rows, mosaic.shape[1] // cols
    return [mosaic[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(rows) for c in range(cols)]


def fit_prior(
    prior: Prior,
    grids: list[tuple[str, int, int]],
    *,
    role_of: Callable[[str], str],
    dynamic_roles: frozenset[str],
    arrangement: tuple[int, int] = (1, 1),
) -> list[torch.Tensor]:
    """One prior map per layout grid, each exactly the grid's shape (see the module docstring).

    Arguments:
        prior: a calibrated prior of this family (its maps by role).
        grids: ``(name, rows, cols)`` of each grid, in candidate order.
        role_of: the family's grid name → prior role (``Family.prior_role``).
        dynamic_roles: the roles whose grid changes shape with the image (``Family.dynamic_prior_roles``).
        arrangement: (rows, cols) of the tiles when several grids share one role (InternVL's tiles).
    Returns:
        [rows, cols] float32 maps, one per grid.
    """
    roles = [role_of(name) for name, _, _ in grids]
    fitted: list[torch.Tensor | None] = [None] * len(grids)
    for role in dict.fromkeys(roles):
        members = [i for i, r in enumerate(roles) if r == role]
        if len(members) > 1:  # tiles of one mosaic
            _, h, w = grids[members[0]]
            mosaic = _fit_role(prior, role, (arrangement[0] * h, arrangement[1] * w), dynamic_roles)
            for i, tile in zip(members, cut_mosaic(mosaic, arrangement), strict=True):
                fitted[i] = tile
        else:
            _, rows, cols = grids[members[0]]
            fitted[members[0]] = _fit_role(prior, role, (rows, cols), dynamic_roles)
    return fitted


def _fit_role(prior: Prior, role: str, size: tuple[int, int], dynamic_roles: frozenset[str]) -> torch.Tensor:
    values = prior.map_for(role)
    return resize_keeping_mass(values, size) if role in dynamic_roles else resize_prior(values, size)


def prior_filename(model_id: str, layer: int, kind: str = "natural") -> str:
    """File name of a prior: ``<model id with / as -->__layer<K>[__content-free].safetensors``."""
    safe = model_id.strip().replace("/", "--").replace("\\", "--")
    if not safe or any(c in safe for c in ':*?"<>|') or safe.startswith("."):
        raise ValueError(f"cannot build a file name from model id {model_id!r}")
    suffix = "" if kind == "natural" else f"__{kind}"
    return f"{safe}__layer{layer}{suffix}.safetensors"


def save_prior(prior: Prior, path: str | os.PathLike[str]) -> Path:
    """Write a prior atomically (temporary file + rename): an interrupted save never leaves a partial file.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "model_id": prior.model_id,
        "layer": prior.layer,
        "kind": prior.kind,
        "grids": {role: list(hw) for role, hw in prior.grids.items()},
        "num_images": prior.num_images,
        "source": prior.source,
        "prompt": prior.prompt,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **dict(prior.info),
    }
    tensors = {role: values.detach().float().cpu().contiguous() for role, values in prior.maps.items()}
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, tmp_name, metadata={_METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a prior is an ordinary shareable file
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def load_prior(path: str | os.PathLike[str], *, model_id: str | None = None, layer: int | None = None) -> Prior:
    """Load and validate a prior file.

    Args:
        path: the ``.safetensors`` file.
        model_id / layer: when given, the file must have been calibrated for them.
    Raises:
        PriorFileError: the file is missing, not a safetensors file, truncated, lacks or has malformed
            metadata, holds maps of the wrong shape / non-finite / negative values, or mismatches
            ``model_id`` / ``layer``. The message names the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PriorFileError(f"prior file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            maps = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise PriorFileError(f"prior file {path} is not a readable safetensors file ({error})") from error
    metadata = _parse_metadata(raw, path)
    _check_against_metadata(maps, metadata, path)
    if model_id is not None and metadata["model_id"] != model_id:
        raise PriorFileError(f"prior file {path} was calibrated for {metadata['model_id']!r}, not {model_id!r}")
    if layer is not None and metadata["layer"] != layer:
        raise PriorFileError(f"prior file {path} is for layer {metadata['layer']}, not layer {layer}")
    info = {key: value for key, value in metadata.items() if key not in (*_REQUIRED, "format")}
    try:
        return Prior(
            maps={role: maps[role].float() for role in metadata["grids"]},
            model_id=metadata["model_id"],
            layer=metadata["layer"],
            kind=metadata["kind"],
            num_images=metadata["num_images"],
            source=metadata["source"],
            prompt=metadata["prompt"],
            info=info,
        )
    except ValueError as error:
        raise PriorFileError(f"prior file {path}: {error}") from error


def _parse_metadata(raw: Mapping[str, str], path: Path) -> dict:
    if _METADATA_KEY not in raw:
        raise PriorFileError(f"prior file {path} has no d2pruner metadata (not written by save_prior?)")
    try:
        metadata = json.loads(raw[_METADATA_KEY])
    except json.JSONDecodeError as error:
        raise PriorFileError(f"prior file {path} has malformed metadata: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise PriorFileError(f"prior file {path} is not in format {FORMAT!r}")
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise PriorFileError(f"prior file {path} metadata lacks {missing}")
    grids = metadata["grids"]
    if not isinstance(grids, dict) or not all(
        isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw) for hw in grids.values()
    ):
        raise PriorFileError(f"prior file {path} metadata has malformed grids: {grids!r}")
    return metadata


def _check_against_metadata(maps: Mapping[str, torch.Tensor], metadata: dict, path: Path) -> None:
    grids = metadata["grids"]
    if set(maps) != set(grids):
        raise PriorFileError(f"prior file {path} holds maps {sorted(maps)} but its metadata lists {sorted(grids)}")
    for role, (h, w) in grids.items():
        values = maps[role]
        if tuple(values.shape) != (h, w):
            raise PriorFileError(
                f"prior file {path}: map {role!r} has shape {tuple(values.shape)}, expected ({h}, {w})"
            )
        try:
            check_map(values, f"map {role!r}")
        except ValueError as error:
            raise PriorFileError(f"prior file {path}: {error}") from error


def uniform_prior(grids: Mapping[str, tuple[int, int]], *, model_id: str, layer: int) -> Prior:
    """A flat prior (every position equal): relative attention then ranks exactly as raw attention."""
    maps = {role: torch.full((h, w), 1.0 / (h * w)) for role, (h, w) in grids.items()}
    return Prior(maps=maps, model_id=model_id, layer=layer, source="uniform (no calibrated prior)")
