"""The runtime-independent half of export: the `Embedder` interface, its errors and argument parsing.

Every runtime module (`runtime_torch`, `runtime_ort`, `runtime_trt`) subclasses `Embedder` from here,
and nothing here imports torch, onnx or tensorrt, so the ONNX Runtime and TensorRT runtimes stay free
of torch. The contract vector (DESIGN.md section 2): float32 [N, D], L2-normalised, tagged with
`embedding_version`.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.contract import ModalityError, parse_modality
from clipmc.model.cameras import CameraError, CameraMap
from clipmc.model.preprocess import PreprocessConfig, normalize

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
GPU_EXTRA = "pip install 'clipmc[gpu]'"


class EmbedderError(ValueError):
    """An embedder cannot be created or called as asked (unknown back-end, missing package, bad input)."""


ModalityLike = int | str | Sequence[int] | np.ndarray
CameraLike = str | int | None | Sequence[str | int | None]


class Embedder(abc.ABC):
    """Turns crops into contract vectors; subclasses implement `_run` on one micro-batch.

    `embed` validates and preprocesses the input once, splits it into micro-batches no larger than
    the largest configured batch size (bounded memory, and the shapes the runtimes were tuned for),
    and concatenates the results.
    """

    backend: str = ""

    def __init__(
        self,
        *,
        embedding_dim: int,
        embedding_version: str,
        image_size: tuple[int, int],
        batch_sizes: Sequence[int],
        device: str,
        precision: str,
        preprocessing: PreprocessConfig | None = None,
        inputs: Sequence[str] = ("image", "modality"),
        architecture_config: dict[str, Any] | None = None,
    ) -> None:
        self.embedding_dim = int(embedding_dim)
        self.embedding_version = str(embedding_version)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_sizes = normalize_batch_sizes(batch_sizes)
        self.device = device
        self.precision = precision
        # The model's own normalisation (from its checkpoint / ONNX metadata; CLIP's when not recorded).
        self._preprocess_cfg = preprocessing or PreprocessConfig(height=self.image_size[0], width=self.image_size[1])
        if (self._preprocess_cfg.height, self._preprocess_cfg.width) != self.image_size:
            raise EmbedderError(
                f"preprocessing size {self._preprocess_cfg} does not match image_size {self.image_size}"
            )
        #: The graph's inputs (model.registry): "camera" follows image and modality for MIP-like models.
        self.inputs = tuple(inputs)
        #: Camera name -> index (and the unknown index) from the architecture config; None without "camera".
        self.camera_map: CameraMap | None = None
        if "camera" in self.inputs:
            try:
                self.camera_map = CameraMap.from_architecture(architecture_config or {})
            except ValueError as exc:
                raise EmbedderError(f"bad camera map in the model's architecture config: {exc}") from exc
        #: How `create_embedder` chose this runtime (`selection.Selection.as_dict()`), shown by /readyz.
        self.selection: dict[str, str] | None = None

    # -- public API -------------------------------------------------------------------------------
    def embed(self, images: np.ndarray, modality: ModalityLike, camera: CameraLike = None) -> np.ndarray:
        """Embed a batch: float32 [N, D], L2-normalised.

        images: uint8 crops [N, H, W, 3] already resized to `image_size` (`model.preprocess.resize_crop`),
                or preprocessed float32 tensors [N, 3, H, W] (`model.preprocess.preprocess`).
        modality: 0 / "visible" or 1 / "infrared" for the whole batch, or an int array [N].
        camera: the crops' camera name(s) (one for all or one per crop; an int is a name: 3 is "3"),
                used by models whose inputs include "camera" and ignored by the others. None (or a
                name the checkpoint does not know) is the checkpoint's unknown-camera index; without
                one it is an EmbedderError (`model.cameras`).
        """
        x = self.prepare_images(images)
        m = self.prepare_modality(modality, x.shape[0])
        c = self.prepare_camera(camera, x.shape[0])
        if x.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        step = max(self.batch_sizes)
        outs = [
            self._run(x[i : i + step], m[i : i + step], None if c is None else c[i : i + step])
            for i in range(0, x.shape[0], step)
        ]
        out = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def warmup(self) -> None:
        """Run each configured micro-batch size once (allocations, kernel selection, lazy init), so that
        the first real request is not the slow one; the service's /readyz waits on this."""
        h, w = self.image_size
        for b in self.batch_sizes:
            x = np.zeros((b, 3, h, w), np.float32)
            camera = None if self.camera_map is None else np.zeros(b, np.int64)  # index 0 always exists
            self._run(x, np.arange(b, dtype=np.int64) % 2, camera)
        log.info("%s embedder warmed up at batch sizes %s", self.backend, list(self.batch_sizes))

    def close(self) -> None:  # noqa: B027 - an optional hook: not every runtime holds resources
        """Release runtime resources (sessions, engines, device memory)."""

    @property
    def preprocessing(self) -> PreprocessConfig:
        """The contract's preprocessing of this model: input size and normalisation."""
        return self._preprocess_cfg

    def describe(self) -> dict[str, Any]:
        """What /readyz, logs and benchmark reports show about this embedder."""
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "embedding_dim": self.embedding_dim,
            "embedding_version": self.embedding_version,
            "image_size": list(self.image_size),
            "normalization": self._preprocess_cfg.normalization,
            "inputs": list(self.inputs),
            "batch_sizes": list(self.batch_sizes),
            "selection": self.selection,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    # -- input validation -------------------------------------------------------------------------
    def prepare_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] or float [N, 3, H, W] -> contiguous float32 [N, 3, H, W]; clear errors."""
        if not isinstance(images, np.ndarray):
            raise EmbedderError(f"images must be a numpy array, got {type(images).__name__}")
        h, w = self.image_size
        if images.ndim != 4:
            raise EmbedderError(
                f"images must be a batch: uint8 [N, {h}, {w}, 3] or float32 [N, 3, {h}, {w}], got shape "
                f"{images.shape} (for one crop use images[None])"
            )
        if images.dtype == np.uint8:
            if images.shape[1:] != (h, w, 3):
                raise EmbedderError(
                    f"uint8 crops must be [N, {h}, {w}, 3] (resize with model.preprocess.resize_crop), "
                    f"got {images.shape}"
                )
            return normalize(images, self._preprocess_cfg)
        if np.issubdtype(images.dtype, np.floating):
            if images.shape[1:] != (3, h, w):
                raise EmbedderError(
                    f"float images must be preprocessed [N, 3, {h}, {w}] (model.preprocess.preprocess), "
                    f"got {images.shape}"
                )
            x = np.ascontiguousarray(images, dtype=np.float32)
            if not np.isfinite(x).all():
                raise EmbedderError("images contain NaN or infinite values")
            return x
        raise EmbedderError(f"images must be uint8 crops or float32 tensors, got dtype {images.dtype}")

    @staticmethod
    def prepare_modality(modality: ModalityLike, n: int) -> np.ndarray:
        """An int / name for the whole batch or one per image -> int64 [N] of 0 (visible) / 1 (infrared)."""
        if isinstance(modality, str):
            try:
                modality = parse_modality(modality)
            except ModalityError as exc:
                raise EmbedderError(str(exc)) from exc
        arr = np.asarray(modality)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise EmbedderError(f"modality must be an int or an int array, got dtype {arr.dtype}")
        if arr.ndim == 0:
            arr = np.full(n, int(arr), np.int64)
        elif arr.shape != (n,):
            raise EmbedderError(f"modality must be one int or an array of shape ({n},), got {arr.shape}")
        arr = arr.astype(np.int64)
        if n and not np.isin(arr, (0, 1)).all():
            raise EmbedderError(f"modality values must be 0 (visible) or 1 (infrared), got {np.unique(arr)}")
        return arr

    def prepare_camera(self, camera: CameraLike, n: int) -> np.ndarray | None:
        """Camera name(s) -> int64 [N] indices for a model with a camera input; None for the others."""
        if self.camera_map is None:
            return None
        try:
            return self.camera_map.indices(camera, n)
        except CameraError as exc:
            raise EmbedderError(str(exc)) from exc

    # -- back-end ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, images: np.ndarray, modality: np.ndarray, camera: np.ndarray | None) -> np.ndarray:
        """One micro-batch (N <= max(batch_sizes)): float32 [N, 3, H, W], int64 [N], and the camera
        indices int64 [N] where the graph takes them (else None) -> float32 [N, D]."""


def normalize_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    """Sorted, unique, positive micro-batch sizes."""
    try:
        sizes = tuple(sorted({int(b) for b in batch_sizes}))
    except (TypeError, ValueError) as exc:
        raise EmbedderError(f"batch_sizes must be positive integers, got {batch_sizes!r}") from exc
    if not sizes or sizes[0] < 1:
        raise EmbedderError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    return sizes


class ExportError(EmbedderError):
    """The model could not be exported, or an ONNX file is not a clipmc export.

    An EmbedderError (a ValueError) because either way no embedder can be made from it: callers of
    `create_embedder` (the service, the CLIs) handle one exception family."""


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' -> ("cpu", 0); 'cuda' / 'cuda:N' -> ("cuda", N); anything else is an EmbedderError.

    String-level on purpose: the torch-free runtimes need it too."""
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda", 0
    m = text.startswith("cuda:") and text[5:].isdigit()
    if m:
        return "cuda", int(text[5:])
    raise EmbedderError(f"unsupported device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def default_cache_dir() -> Path:
    """Where exported graphs and engines are cached unless a directory is given (CLIPMC_CACHE)."""
    return Path(os.environ.get("CLIPMC_CACHE", Path.home() / ".cache" / "clipmc")) / "export"
