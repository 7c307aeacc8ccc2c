"""The one preprocessing function of the embedding contract (DESIGN.md section 2).

Every runtime (torch, ONNX Runtime, TensorRT), the trainer's evaluation and the service call this
module, so a crop becomes the same tensor wherever it is embedded. It depends on NumPy and Pillow
only: the service never needs torch to prepare an image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # timm's ViT ImageNet weights and MIP/TransReID normalise with 0.5 / 0.5
# Named normalisations: the name goes into the embedding_version tag.
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF, HALF)}
DEFAULT_SIZE = (288, 144)  # (H, W)

ImageLike = Image.Image | np.ndarray | bytes | str | Path

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}


@dataclass(frozen=True)
class PreprocessConfig:
    """What the embedding contract fixes; recorded in checkpoints, ONNX metadata and galleries."""

    height: int = DEFAULT_SIZE[0]
    width: int = DEFAULT_SIZE[1]
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def named(cls, height: int, width: int, normalization: str = "clip") -> PreprocessConfig:
        """The config of a named normalisation ("clip", "imagenet" or "half") at (height, width)."""
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {normalization!r}: use one of {sorted(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[normalization]
        return cls(height=height, width=width, mean=mean, std=std)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Inverse of `to_dict` (as stored in checkpoints, ONNX metadata and engine sidecars)."""
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            mean=tuple(float(v) for v in d.get("mean", CLIP_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d.get("std", CLIP_STD)),  # type: ignore[arg-type]
        )

    @property
    def normalization(self) -> str:
        """ "clip", "imagenet", "half", or "custom" for any other mean/std."""
        for name, (mean, std) in NORMALIZATIONS.items():
            if tuple(self.mean) == tuple(mean) and tuple(self.std) == tuple(std):
                return name
        return "custom"

    @property
    def tag(self) -> str:
        """Short identifier that goes into the embedding_version (e.g. 288x144-bicubic-clipnorm)."""
        norm = self.normalization
        if norm == "custom":  # a hash keeps two custom normalisations apart
            import hashlib

            norm = "custom" + hashlib.sha256(repr((tuple(self.mean), tuple(self.std))).encode()).hexdigest()[:8]
        return f"{self.height}x{self.width}-{self.interpolation}-{norm}norm"

    def to_dict(self) -> dict:
        return {
            "height": self.height,
            "width": self.width,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "channels": "RGB; single-channel replicated",
            "exif_orientation": True,
            "high_bit_depth": "min-max stretched to 8 bit",
        }


class ImageDecodeError(ValueError):
    """The input is not a decodable image."""


def to_rgb(image: ImageLike) -> Image.Image:
    """Open, apply EXIF orientation and convert any supported mode to 8-bit RGB.

    High-bit-depth frames (16-bit or float IR sensor output) are min-max stretched to 8 bit, because
    raw radiometric values occupy a narrow band of the 16-bit range and a plain cast would clip them.
    """
    img = _open(image)
    img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite transparent pixels on black rather than on whatever colour they happen to hold.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def resize_crop(image: ImageLike, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """RGB crop resized (bicubic) to (H, W): uint8 array [H, W, 3]."""
    h, w = size
    img = to_rgb(image).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def normalize(crops: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """uint8 crops [..., H, W, 3] -> float32 [..., 3, H, W] scaled to [0, 1] and CLIP-normalised."""
    cfg = cfg or PreprocessConfig()
    if crops.dtype != np.uint8 or crops.shape[-1] != 3:
        raise ValueError(f"expected uint8 crops with 3 channels last, got {crops.dtype} {crops.shape}")
    x = crops.astype(np.float32) / 255.0
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess(image: ImageLike, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Any crop -> the model's input tensor, float32 [3, H, W] (DESIGN.md section 2)."""
    cfg = cfg or PreprocessConfig()
    return normalize(resize_crop(image, (cfg.height, cfg.width)), cfg)


def preprocess_batch(images: list[ImageLike], cfg: PreprocessConfig | None = None) -> np.ndarray:
    """A list of crops -> float32 [N, 3, H, W]."""
    cfg = cfg or PreprocessConfig()
    if not images:
        return np.zeros((0, 3, cfg.height, cfg.width), np.float32)
    return np.stack([preprocess(im, cfg) for im in images])


def _open(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return _from_array(image)
    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(image)))
        else:
            img = Image.open(image)
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for undecodable input
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    return img


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        if arr.dtype == np.uint8:
            return Image.fromarray(arr, mode="L")
        return Image.fromarray(arr.astype(np.float32), mode="F")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            return _from_array(arr[:, :, 0])
        if arr.dtype != np.uint8:
            raise ValueError(f"colour arrays must be uint8, got {arr.dtype}")
        return Image.fromarray(arr, mode="RGB" if arr.shape[2] == 3 else "RGBA")
    raise ValueError(f"unsupported image array shape {arr.shape}: expected [H, W], [H, W, 1|3|4]")
