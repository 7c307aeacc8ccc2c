"""Turning request bytes into model crops, safely.

Limits are checked from the image header before any pixel is decoded (so a 100 000 x 100 000 PNG of a
few kilobytes costs nothing), only the formats in ``Settings.image_formats`` are parsed, and every
failure is a :class:`~service.errors.InputError` naming the image and the problem. The preprocessing
itself (EXIF orientation, modes, bicubic resize) is the embedding contract's, in ``model.preprocess``.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipmc.model.preprocess import resize_crop, to_rgb
from clipmc.service.errors import InputError, PayloadTooLarge


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int
    formats: tuple[str, ...]


@dataclass(frozen=True)
class DecodedImage:
    crop: np.ndarray  # uint8 [H, W, 3] at the model's size
    thumbnail: bytes | None  # JPEG
    width: int
    height: int
    format: str


def decode_base64(text: object, what: str) -> bytes:
    """Standard base64, optionally as a ``data:image/...;base64,`` URL (what a browser produces)."""
    if not isinstance(text, str):
        raise InputError(f"{what}: must be a base64 string", "invalid_image")
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise InputError(f"{what}: malformed data URL", "invalid_image")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64", "invalid_image") from None


def decode_image(
    data: bytes, limits: ImageLimits, size: tuple[int, int], *, thumbnail_size: int | None = None, what: str = "image"
) -> DecodedImage:
    """Check, decode and resize one crop; optionally also make a JPEG thumbnail for the web page."""
    if not data:
        raise InputError(f"{what}: empty file (0 bytes)", "empty_image")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"{what}: {len(data)} bytes, over the limit of {limits.max_bytes}", "image_too_large")
    img = _open(data, limits, what)
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError(f"{what}: image has no pixels ({width}x{height})", "invalid_image")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"{what}: {width}x{height} pixels exceeds the limits (side <= {limits.max_side}, "
            f"pixels <= {limits.max_pixels})",
            "image_too_large",
        )
    fmt = img.format or "?"
    try:
        img.load()
        rgb = to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}", "image_too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt pixel data
        raise InputError(f"{what}: cannot decode the {fmt} image ({exc})", "invalid_image") from None
    crop = resize_crop(rgb, size)
    thumb = _thumbnail(rgb, thumbnail_size) if thumbnail_size else None
    return DecodedImage(crop=crop, thumbnail=thumb, width=width, height=height, format=fmt)


def _open(data: bytes, limits: ImageLimits, what: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}", "image_too_large") from None
    except UnidentifiedImageError:
        pass
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{what}: cannot decode the image ({exc})", "invalid_image") from None
    # Name the format when it is an image we do not accept (header only: nothing is decoded).
    try:
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Exception:  # any plugin may fail its own way on garbage; the answer is the same
        fmt = None
    accepted = ", ".join(limits.formats)
    if fmt:
        raise InputError(f"{what}: {fmt} images are not accepted ({accepted} are)", "unsupported_image_format", 415)
    raise InputError(f"{what}: not an image, or not one in an accepted format ({accepted})", "invalid_image")


def _thumbnail(rgb: Image.Image, size: int) -> bytes:
    thumb = rgb.copy()
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
