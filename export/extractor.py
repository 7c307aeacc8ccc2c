"""A one-line feature extractor: your crops in, contract vectors out.

"How do I run it on my own images?" is the question every ReID tool is asked first. The answer here::

    import clipmc
    extract = clipmc.FeatureExtractor("runs/sysu/best")             # backend "auto": the fastest runtime
    vectors = extract(["ir_0001.jpg", "ir_0002.png"], modality="infrared")   # float32 [2, D], L2-normalised

Each crop goes through the one preprocessing contract (``clipmc.model.preprocess.resize_crop``: EXIF
orientation, any mode to RGB, bicubic resize), exactly as the service prepares an uploaded crop, so a
file embedded here and the same file sent to ``/gallery/ingest`` give the same vector.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.contract import ModalityError, parse_modality
from clipmc.model.preprocess import ImageLike, resize_crop

from .base import Embedder, EmbedderError
from .factory import create_embedder


class FeatureExtractor:
    """Embed crops from paths, PIL images, encoded bytes or uint8 arrays.

    Args:
        weights: a checkpoint directory, "openai", an ``.onnx`` or ``.engine`` file (as ``create_embedder``).
        backend: "auto" (default: the fastest runtime this host has), "torch", "onnxruntime" or "tensorrt".
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "fp16" (GPU), "int8" or "bf16" (CPU opt-ins).
        batch_size: the largest micro-batch the runtime is given.
        engine_dir: where exported graphs and engines are cached.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        backend: str = "auto",
        device: str = "auto",
        *,
        precision: str = "auto",
        batch_size: int = 32,
        engine_dir: str | os.PathLike | None = None,
    ) -> None:
        self.embedder: Embedder = create_embedder(
            backend, weights, device=device, precision=precision, batch_sizes=(1, batch_size), engine_dir=engine_dir
        )

    @classmethod
    def from_embedder(cls, embedder: Embedder) -> FeatureExtractor:
        """Wrap an embedder that is already built (tests, the service's own)."""
        self = cls.__new__(cls)
        self.embedder = embedder
        return self

    @property
    def dim(self) -> int:
        return self.embedder.embedding_dim

    @property
    def embedding_version(self) -> str:
        return self.embedder.embedding_version

    def __call__(self, images: ImageLike | Sequence[ImageLike], modality: Any, camera: Any = None) -> np.ndarray:
        """Embed one crop or a list of crops.

        Args:
            images: a path (str or Path), a PIL image, encoded bytes, a uint8 array [H, W] / [H, W, 3], or a
                list of any of these.
            modality: one modality for all ("infrared", "visible", 0, 1, or any spelling of
                ``clipmc.contract``) or one per crop.
            camera: the crops' camera name(s), for models whose inputs include the camera (MIP); one for
                all or one per crop; None is the checkpoint's unknown camera (see ``Embedder.embed``).

        Returns:
            float32 [N, D], L2-normalised (N = 1 for a single crop).
        """
        items = _as_list(images)
        codes = self._modalities(modality, len(items))
        if not items:
            return np.zeros((0, self.dim), np.float32)
        crops = np.stack([resize_crop(item, self.embedder.image_size) for item in items])
        return self.embedder.embed(crops, codes, camera)

    def close(self) -> None:
        self.embedder.close()

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _modalities(modality: Any, n: int) -> np.ndarray:
        try:
            if isinstance(modality, (str, int, np.integer)):
                return np.full(n, parse_modality(modality), np.int64)
            values = list(modality)
            if len(values) != n:
                raise EmbedderError(f"got {len(values)} modalities for {n} crops: give one for all or one per crop")
            return np.array([parse_modality(v) for v in values], np.int64)
        except ModalityError as exc:
            raise EmbedderError(str(exc)) from None
        except TypeError:
            raise EmbedderError(f"modality must be a name, a code or a list of them, got {modality!r}") from None


def _as_list(images: Any) -> list[Any]:
    """One crop (path, bytes, PIL image, array) or a sequence of them -> a list of crops."""
    if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
        if isinstance(images, np.ndarray) and images.ndim == 4:  # a batch of equal-sized uint8 crops
            return list(images)
        return [images]
    return list(images)
