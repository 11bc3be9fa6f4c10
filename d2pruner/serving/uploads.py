"""Reading a visitor's image safely: only files inside the allowed folders (the upload cache, the bundled examples),
every path resolved first (symlinks included); pixel counts checked from the header before anything is decoded (JPEGs
decoded at reduced scale when large); one message for every path that may not be read, which reveals nothing about it.
Gradio-free and torch-free at import.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from d2pruner.serving.limits import Limits

#: image formats opened (Pillow tries no other parser)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: the one answer for a path that may not be read (outside the allowed folders, missing, not a file, unreadable)
NOT_AN_UPLOAD = ("The image must be a file uploaded to this app, or one of its examples. Please upload it again "
                 "(uploads are kept for a few minutes).")


class UploadError(ValueError):
    """A file the app will not read, with a message for the visitor (never a server path)."""


@dataclass
class LoadedImage:
    """A decoded upload.

    Attributes:
        image: RGB PIL image (the working copy the analysis runs on).
        original_size: (width, height) of the file, upright.
        scale: working pixels per file pixel (< 1 after a reduced-scale JPEG decode).
        notes: what the visitor should know (first frame of an animation, EXIF rotation, reduced decode).
        digest: 16 hex digits identifying the pixels (file content + decode), for caches.
    """

    image: Image.Image
    original_size: tuple[int, int]
    scale: float
    notes: list[str] = field(default_factory=list)
    digest: str = ""


def payload_path(payload) -> str | None:
    """The path in an image payload: a string, a path, or Gradio's file payload (a dict or object with ``path``).
    None for no image.

    Raises:
        UploadError: any other type (named).
    """
    if payload is None:
        return None
    if isinstance(payload, dict):
        payload = payload.get("path")
    elif hasattr(payload, "path") and not isinstance(payload, (str, os.PathLike)):
        payload = payload.path
    if payload is None:
        return None
    if isinstance(payload, os.PathLike):
        payload = os.fspath(payload)
    if not isinstance(payload, str):
        raise UploadError(f"image must be an uploaded image file; got {type(payload).__name__}")
    return payload if payload.strip() else None


def resolve_upload(payload, roots: Sequence[str | os.PathLike]) -> Path:
    """The real path of an uploaded file, if it lies inside one of ``roots`` and is a regular file.

    The path is resolved (``..``, symlinks) before the check, relative paths against the working directory. Every
    refusal — outside the roots, missing, a folder or device, unreadable — raises the same :data:`NOT_AN_UPLOAD`.
    """
    path = payload_path(payload)
    if path is None:
        raise UploadError("No image: upload one (or pick an example) first.")
    try:
        real = Path(os.path.realpath(path))
        allowed = [Path(os.path.realpath(r)) for r in roots]
        if not any(real == root or root in real.parents for root in allowed):
            raise UploadError(NOT_AN_UPLOAD)
        info = real.stat()
    except (OSError, ValueError):  # missing, permission, a NUL byte, a loop of links …
        raise UploadError(NOT_AN_UPLOAD) from None
    if not stat.S_ISREG(info.st_mode):
        raise UploadError(NOT_AN_UPLOAD)
    return real


def _digest(path: Path, extra: str) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(extra.encode())
    return h.hexdigest()[:16]


def _mp(pixels: float) -> str:
    return f"{pixels / 1e6:.0f} MP" if pixels >= 1e6 else f"{pixels:,.0f} pixels"


def open_image(path: str | os.PathLike, limits: Limits | None = None) -> LoadedImage:
    """Decode an allowed file (see :func:`resolve_upload`) within the pixel limits.

    Handles: 0-byte and oversized files, non-images, corrupt or truncated data, pixel bombs (refused from the header,
    or — JPEG — decoded at 1/2, 1/4 or 1/8 scale), animated images (first frame), EXIF orientation (applied), any
    colour mode (RGB).

    Raises:
        UploadError: with a message for the visitor.
    """
    limits = limits or Limits()
    path = Path(path)
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise UploadError("The uploaded file is empty (0 bytes).")
    if size_bytes > limits.upload_bytes:
        raise UploadError(f"The uploaded file is {size_bytes / 2**20:.0f} MB; the limit is "
                          f"{limits.upload_bytes / 2**20:.0f} MB.")
    notes: list[str] = []
    with path.open("rb") as f:
        magic = f.read(3)
    try:
        if magic == b"\xff\xd8\xff":
            img, size, factor = _open_jpeg(path, limits)
            if factor > 1:
                notes.append(f"the image is {size[0]}×{size[1]} ({_mp(size[0] * size[1])}), above the "
                             f"{_mp(limits.image_pixels)} limit: it was decoded at 1/{factor} resolution")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit follows
                img = Image.open(path, formats=FORMATS)
            size, factor = img.size, 1
            if size[0] * size[1] > limits.image_pixels:
                img.close()
                raise UploadError(
                    f"The image is {size[0]}×{size[1]} ({_mp(size[0] * size[1])}); the limit is "
                    f"{_mp(limits.image_pixels)}. Please downscale it (e.g. to 4096 px on the longer side), or upload "
                    "a JPEG, which is decoded at reduced resolution.")
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(f"The image has more pixels than this app decodes: the limit is {_mp(limits.image_pixels)}."
                          " Please downscale it (e.g. to 4096 px on the longer side).") from None
    except UnidentifiedImageError:
        raise UploadError("The uploaded file is not an image this app can read (supported: JPEG, PNG, WebP, GIF, "
                          "BMP, TIFF).") from None
    except (OSError, SyntaxError, ValueError, struct.error):
        raise UploadError("The uploaded image is damaged or truncated: its header cannot be read.") from None
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
            notes.append("animated image: the first frame is analysed")
        orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
        img.load()
        if orientation not in (None, 1):
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated upright according to its EXIF orientation tag ({orientation})")
        rgb = _rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        raise UploadError("The uploaded image is damaged or truncated and cannot be decoded.") from None
    except MemoryError:
        raise UploadError("The uploaded image is too large to decode here.") from None
    finally:
        if "rgb" not in locals() or rgb is not img:
            img.close()
    upright = (size[1], size[0]) if orientation in (5, 6, 7, 8) else (size[0], size[1])
    scale = rgb.width / upright[0]
    if factor > 1:
        notes.append(f"the working copy is {rgb.width}×{rgb.height}: boxes and regions are in its pixels (a typed "
                     f"ground-truth box is scaled by {scale:.4g})")
    return LoadedImage(rgb, (int(upright[0]), int(upright[1])), scale, notes, _digest(path, f"/{factor}"))


def _open_jpeg(path: Path, limits: Limits):
    """A JPEG opened from its header only (the plugin alone skips Pillow's global pixel check), set to decode at
    the largest of 1, 1/2, 1/4, 1/8 scale that stays within ``limits.image_pixels``."""
    jpeg = JpegImagePlugin.JpegImageFile(str(path))
    w, h = jpeg.size
    if w * h > limits.jpeg_header_pixels:
        jpeg.close()
        raise UploadError(f"The image is {w}×{h} ({_mp(w * h)}), too large to decode safely (limit "
                          f"{_mp(limits.jpeg_header_pixels)} for a JPEG).")
    factor = next(f for f in (1, 2, 4, 8) if math.ceil(w / f) * math.ceil(h / f) <= limits.image_pixels)
    if factor > 1:
        jpeg.draft("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    return jpeg, (w, h), factor


def _rgb(img: Image.Image) -> Image.Image:
    """Any mode → RGB (transparency on white; 16-bit / float grey scaled by its own range)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img.convert("F") if mode.startswith("I;16") else img, dtype=np.float64)
        arr = np.nan_to_num(arr)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros(arr.shape, np.uint8) if hi <= lo else np.round((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB") if mode != "RGB" else img


def load_upload(payload, roots: Sequence[str | os.PathLike], limits: Limits | None = None) -> LoadedImage:
    """:func:`resolve_upload` then :func:`open_image`."""
    return open_image(resolve_upload(payload, roots), limits)
