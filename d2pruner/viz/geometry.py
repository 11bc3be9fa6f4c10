"""Where the N candidate tokens look in the image: grids, regions, views (detail / overview) and the parts of the image
no token covers. Shared by the plotly figures and the PNG report. Numpy only.

Coordinates: pixels of the image the regions refer to, x to the right, y down; an image of width W spans [0, W].
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from d2pruner.viz.style import DISPLAY_MAX_SIDE

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grid:
    """One row-major grid of tokens among the N candidates (``offset`` = index of its first token)."""

    name: str
    rows: int
    cols: int
    offset: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class TokenGeometry:
    """The N candidate tokens' grids and regions.

    Arguments:
        grids: the token grids in candidate order (offsets 0, size₀, size₀ + size₁, …); any objects with ``name``,
            ``rows``, ``cols``, ``offset`` (e.g. an analysis result's ``GridView``).
        regions: [N, 4] float (x1, y1, x2, y2) of each token in image pixels; rows of a grid share their
            y-extent and columns their x-extent (true of every supported family's layout).
        image_size: (width, height) of the image the regions refer to.
    """

    grids: tuple[Grid, ...]
    regions: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        grids = tuple(Grid(str(g.name), int(g.rows), int(g.cols), int(g.offset)) for g in self.grids)
        object.__setattr__(self, "grids", grids)
        regions = np.asarray(self.regions, dtype=np.float64)
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        total = sum(g.size for g in grids)
        if regions.ndim != 2 or regions.shape != (total, 4):
            raise ValueError(f"regions must be [{total}, 4] for grids {self.shapes}, got {regions.shape}")
        offset = 0
        for g in grids:
            if g.offset != offset or g.rows < 1 or g.cols < 1:
                raise ValueError(f"grids must be non-empty and contiguous in order; got {grids}")
            offset += g.size
        w, h = self.image_size
        if w < 1 or h < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    @classmethod
    def from_grids(cls, grids: Sequence, regions: np.ndarray, image_size: tuple[int, int]) -> TokenGeometry:
        """From any grid objects with ``name``, ``rows``, ``cols``, ``offset`` (e.g. an analysis result's)."""
        return cls(tuple(grids), np.asarray(regions, dtype=np.float64), image_size)

    @classmethod
    def of(cls, result) -> TokenGeometry:
        """The geometry of an analysis result (or observation)."""
        return cls(tuple(result.grids), result.regions, result.image_size)

    @property
    def num_tokens(self) -> int:
        return int(self.regions.shape[0])

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(g.rows, g.cols) for g in self.grids]

    def grid_edges(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Column edges [cols + 1] and row edges [rows + 1] of grid ``index`` in image pixels."""
        g = self.grids[index]
        reg = self.regions[g.offset : g.offset + g.size].reshape(g.rows, g.cols, 4)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: filled below
            x1 = np.nanmin(reg[:, :, 0], axis=0)
            x2 = np.nanmax(reg[:, :, 2], axis=0)
            y1 = np.nanmin(reg[:, :, 1], axis=1)
            y2 = np.nanmax(reg[:, :, 3], axis=1)
        return _fill_edges(np.append(x1, x2[-1])), _fill_edges(np.append(y1, y2[-1]))

    def centres(self) -> np.ndarray:
        """[N, 2] token centres (x, y); NaN where a token has no region."""
        r = self.regions
        return np.stack([(r[:, 0] + r[:, 2]) / 2, (r[:, 1] + r[:, 3]) / 2], axis=1)

    def positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per token: grid index, row, column (each [N] int64)."""
        gi, rr, cc = [], [], []
        for k, g in enumerate(self.grids):
            r, c = np.divmod(np.arange(g.size), g.cols)
            gi.append(np.full(g.size, k))
            rr.append(r)
            cc.append(c)
        return np.concatenate(gi), np.concatenate(rr), np.concatenate(cc)

    def views(self) -> list[tuple[str, tuple[int, ...]]]:
        """Groups of grids drawn together: the detail view first, then the overview (base / thumbnail)."""
        overview = tuple(k for k, g in enumerate(self.grids) if g.name in ("base", "thumbnail"))
        detail = tuple(k for k in range(len(self.grids)) if k not in overview)
        if not overview or not detail:
            return [(self._label(range(len(self.grids))), tuple(range(len(self.grids))))]
        return [(self._label(detail), detail), (self._label(overview), overview)]

    def _label(self, indices) -> str:
        names = [self.grids[k].name for k in indices]
        if len(names) > 1 and all(n.startswith("tile") for n in names):
            return f"{len(names)} tiles"
        label = " + ".join(names)
        return {"highres": "high-res grid", "base": "base grid", "image": "image grid"}.get(label, label)

    def view_tokens(self, view: int = 0) -> np.ndarray:
        """Sorted candidate indices of the tokens in view ``view``."""
        _, grid_ids = self.views()[view]
        return np.concatenate([np.arange(self.grids[k].offset, self.grids[k].offset + self.grids[k].size)
                               for k in grid_ids])

    def view_of_token(self) -> np.ndarray:
        """[N] the view each token is drawn in."""
        out = np.zeros(self.num_tokens, dtype=np.int64)
        for v in range(len(self.views())):
            out[self.view_tokens(v)] = v
        return out

    def outside(self, view: int = 0) -> list[Box]:
        """Rectangles of the image that no token of ``view`` covers — e.g. the strips LLaVA-1.5's centre crop cuts
        away (the model never sees them). At most four: left, right, top and bottom of the covered area."""
        _, grid_ids = self.views()[view]
        w, h = self.image_size
        boxes = []
        for k in grid_ids:
            xe, ye = self.grid_edges(k)
            boxes.append((max(0.0, xe[0]), max(0.0, ye[0]), min(float(w), xe[-1]), min(float(h), ye[-1])))
        x1 = min(b[0] for b in boxes)
        y1 = min(b[1] for b in boxes)
        x2 = max(b[2] for b in boxes)
        y2 = max(b[3] for b in boxes)
        tol = 0.5
        out = []
        if x1 > tol:
            out.append((0.0, 0.0, x1, float(h)))
        if x2 < w - tol:
            out.append((x2, 0.0, float(w), float(h)))
        if y1 > tol:
            out.append((x1, 0.0, x2, y1))
        if y2 < h - tol:
            out.append((x1, y2, x2, float(h)))
        return out

    def raster(self, view: int, out_size: tuple[int, int]) -> np.ndarray:
        """[H, W] int64 token index under each output pixel centre (−1 where no token of the view is)."""
        out_w, out_h = out_size
        w_img, h_img = self.image_size
        xs = (np.arange(out_w) + 0.5) * (w_img / out_w)
        ys = (np.arange(out_h) + 0.5) * (h_img / out_h)
        index = np.full((out_h, out_w), -1, dtype=np.int64)
        for k in self.views()[view][1]:
            g = self.grids[k]
            xe, ye = self.grid_edges(k)
            ci = np.searchsorted(xe, xs, side="right") - 1
            ri = np.searchsorted(ye, ys, side="right") - 1
            cok = (ci >= 0) & (ci < g.cols)
            rok = (ri >= 0) & (ri < g.rows)
            tok = g.offset + np.clip(ri, 0, g.rows - 1)[:, None] * g.cols + np.clip(ci, 0, g.cols - 1)[None, :]
            ok = rok[:, None] & cok[None, :] & np.isfinite(self.regions[tok, 0])
            index = np.where(ok, tok, index)
        return index


def _fill_edges(edges: np.ndarray) -> np.ndarray:
    """Interpolate NaN edges (rows/columns without a visible token) so the edges stay increasing."""
    edges = np.asarray(edges, dtype=np.float64)
    ok = np.isfinite(edges)
    if ok.all():
        return edges
    if ok.sum() < 2:
        return np.arange(len(edges), dtype=np.float64)
    idx = np.arange(len(edges))
    return np.interp(idx, idx[ok], edges[ok])


# ---- the photo


def as_rgb(image) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def display_copy(image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """The image downscaled so its longer side is at most ``max_side`` (never upscaled)."""
    image = as_rgb(image)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
    return image


def photo_jpeg(image, max_side: int = DISPLAY_MAX_SIDE, quality: int = 85) -> bytes:
    """The display copy as JPEG bytes (what a served photo or a data URI holds)."""
    buf = io.BytesIO()
    display_copy(image, max_side).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_data_uri(image, max_side: int = DISPLAY_MAX_SIDE, quality: int = 85) -> str:
    """A ``data:image/jpeg;base64,…`` URI of the image, downscaled to ``max_side`` (for plotly layout images)."""
    return "data:image/jpeg;base64," + base64.b64encode(photo_jpeg(image, max_side, quality)).decode("ascii")
