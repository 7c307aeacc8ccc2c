"""One `Embedder` interface over the torch, ONNX Runtime and TensorRT runtimes (DESIGN.md section 6).

The service, the gallery tools and the benchmarks call `create_embedder(...)` and then
`embed(images, modality)`; which runtime answers is configuration. Every back-end takes the same
inputs (raw uint8 crops or preprocessed float32 tensors, see `Embedder.embed`) and returns the same
contract vector (DESIGN.md section 2): float32 [N, D], L2-normalised, tagged with `embedding_version`.

    emb = create_embedder("torch", "runs/sysu/best")             # checkpoint directory
    emb = create_embedder("onnxruntime", "model.onnx")           # version read from ONNX metadata
    emb = create_embedder("tensorrt", "runs/sysu/best", device="cuda", precision="fp16",
                          batch_sizes=(1, 8, 32), engine_dir="/var/cache/clipmc/engines")
    emb.warmup()
    vectors = emb.embed(crops_uint8, modality=1)                 # [N, H, W, 3] uint8 -> [N, D]
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.preprocess import PreprocessConfig, normalize

if TYPE_CHECKING:
    import torch

    from model.clipmc import CLIPMC

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")
GPU_EXTRA = "pip install 'clipmc[gpu]'"
_MODALITY_NAMES = {"visible": 0, "rgb": 0, "infrared": 1, "ir": 1}


class EmbedderError(ValueError):
    """An embedder cannot be created or called as asked (unknown back-end, missing package, bad input)."""


ModalityLike = int | str | Sequence[int] | np.ndarray


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
    ) -> None:
        self.embedding_dim = int(embedding_dim)
        self.embedding_version = str(embedding_version)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_sizes = normalize_batch_sizes(batch_sizes)
        self.device = device
        self.precision = precision
        self._preprocess_cfg = PreprocessConfig(height=self.image_size[0], width=self.image_size[1])

    # -- public API -------------------------------------------------------------------------------
    def embed(self, images: np.ndarray, modality: ModalityLike) -> np.ndarray:
        """Embed a batch: float32 [N, D], L2-normalised.

        images: uint8 crops [N, H, W, 3] already resized to `image_size` (`model.preprocess.resize_crop`),
                or preprocessed float32 tensors [N, 3, H, W] (`model.preprocess.preprocess`).
        modality: 0 / "visible" or 1 / "infrared" for the whole batch, or an int array [N].
        """
        x = self.prepare_images(images)
        m = self.prepare_modality(modality, x.shape[0])
        if x.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        step = max(self.batch_sizes)
        outs = [self._run(x[i : i + step], m[i : i + step]) for i in range(0, x.shape[0], step)]
        out = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def warmup(self) -> None:
        """Run each configured micro-batch size once (allocations, kernel selection, lazy init), so that
        the first real request is not the slow one; the service's /readyz waits on this."""
        h, w = self.image_size
        for b in self.batch_sizes:
            x = np.zeros((b, 3, h, w), np.float32)
            self._run(x, np.arange(b, dtype=np.int64) % 2)
        log.info("%s embedder warmed up at batch sizes %s", self.backend, list(self.batch_sizes))

    def close(self) -> None:  # noqa: B027 - an optional hook: not every runtime holds resources
        """Release runtime resources (sessions, engines, device memory)."""

    def describe(self) -> dict[str, Any]:
        """What /readyz, logs and benchmark reports show about this embedder."""
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "embedding_dim": self.embedding_dim,
            "embedding_version": self.embedding_version,
            "image_size": list(self.image_size),
            "batch_sizes": list(self.batch_sizes),
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
            key = modality.strip().lower()
            if key not in _MODALITY_NAMES:
                raise EmbedderError(f"unknown modality {modality!r}: use 0/'visible' or 1/'infrared'")
            modality = _MODALITY_NAMES[key]
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

    # -- back-end ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        """One micro-batch (N <= max(batch_sizes)): float32 [N, 3, H, W], int64 [N] -> float32 [N, D]."""


def normalize_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    """Sorted, unique, positive micro-batch sizes."""
    try:
        sizes = tuple(sorted({int(b) for b in batch_sizes}))
    except (TypeError, ValueError) as exc:
        raise EmbedderError(f"batch_sizes must be positive integers, got {batch_sizes!r}") from exc
    if not sizes or sizes[0] < 1:
        raise EmbedderError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    return sizes


# ------------------------------------------------------------------------------------------------
# torch
# ------------------------------------------------------------------------------------------------
class TorchEmbedder(Embedder):
    """The reference runtime: `CLIPMC.embed` in PyTorch on CPU or CUDA.

    fp16 uses CUDA autocast rather than `.half()`: autocast runs matmuls and convolutions in fp16
    while LayerNorm, softmax and the norms of the final L2 normalisation stay fp32 (autocast's fp32
    op list), which is the precision split DESIGN.md section 4 asks for, with no hand-written casts.
    `compile=True` wraps the graph in `torch.compile` (mode "reduce-overhead" uses CUDA graphs on GPU).
    """

    backend = "torch"

    def __init__(
        self,
        model: CLIPMC,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1, 8, 32),
        embedding_version: str | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        import torch

        from model.clipmc import EmbeddingGraph

        dev = _torch_device(device)
        if precision not in PRECISIONS:
            raise EmbedderError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
        if precision == "fp16" and dev.type != "cuda":
            raise EmbedderError("the torch back-end runs fp16 on CUDA only: use device='cuda' or precision='fp32'")
        version = embedding_version or model.embedding_version  # the property hashes the weights: once
        super().__init__(
            embedding_dim=model.embedding_dim,
            embedding_version=version,
            image_size=model.config.image_size,
            batch_sizes=batch_sizes,
            device=str(dev),
            precision=precision,
        )
        self.model = model.eval().to(dev)
        self._torch_device = dev
        graph: Any = EmbeddingGraph(self.model)
        if compile:
            graph = torch.compile(graph, mode=compile_mode, dynamic=False)
        self._graph = graph
        self.compiled = bool(compile)

    def embed_tensor(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """On-device variant for callers that already hold torch tensors (the verify command)."""
        import torch

        with torch.inference_mode():
            if self.precision == "fp16":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self._graph(images, modality)
            else:
                out = self._graph(images, modality)
        return out.float()

    def _run(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(images).to(self._torch_device, non_blocking=True)
        m = torch.from_numpy(modality).to(self._torch_device, non_blocking=True)
        return self.embed_tensor(x, m).cpu().numpy()

    def close(self) -> None:
        if self._torch_device.type == "cuda":
            import torch

            self._graph = None
            self.model = None  # type: ignore[assignment]
            torch.cuda.empty_cache()


def _torch_device(device: str) -> torch.device:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EmbedderError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedderError(f"device {device!r} requested but torch sees no CUDA GPU")
    if dev.type not in ("cpu", "cuda"):
        raise EmbedderError(f"unsupported device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    return dev


# ------------------------------------------------------------------------------------------------
# factory
# ------------------------------------------------------------------------------------------------
OPEN_CLIP_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_model_weights(weights: str | os.PathLike) -> tuple[CLIPMC, str]:
    """(model, embedding_version) for a checkpoint directory, "openai" (zero-shot CLIP ViT-B/16 from
    open_clip's cache or download) or a local open_clip ViT-B-16 weights file (zero-shot, offline)."""
    from model.checkpoint import load_checkpoint, read_checkpoint_config

    if weights_kind(weights) == "zero-shot":
        from model.factory import build_model

        model = build_model("vit-b-16", pretrained=str(weights))
        return model, model.embedding_version
    model = load_checkpoint(weights)
    return model, read_checkpoint_config(weights)["embedding_version"]


def create_embedder(
    backend: str,
    weights: str | os.PathLike,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    batch_sizes: Sequence[int] = (1, 8, 32),
    engine_dir: str | os.PathLike | None = None,
) -> Embedder:
    """Build the embedder the configuration names.

    weights: a checkpoint directory, "openai" (zero-shot CLIP ViT-B/16; or a local open_clip ViT-B-16
    weights file, e.g. `open_clip_model.safetensors`), an `.onnx` file (onnxruntime,
    or tensorrt which builds an engine from it) or an `.engine` file (tensorrt; its sidecar JSON holds
    the embedding_version). For backend "tensorrt" a checkpoint or ONNX file is exported / built into
    `engine_dir` through the engine cache, which is what a deployment does on first start.

    Raises EmbedderError (a ValueError) for an unknown back-end, precision, device or file kind and for a
    missing package (naming the pip extra); the model's own errors pass through unchanged:
    `model.checkpoint.CheckpointError` (ValueError) for a bad checkpoint and
    `model.factory.PretrainedWeightsError` (RuntimeError) when "openai" weights cannot be obtained.
    """
    backend = str(backend).strip().lower()
    if backend not in BACKENDS:
        raise EmbedderError(f"unknown embedder backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EmbedderError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    sizes = normalize_batch_sizes(batch_sizes)
    kind = weights_kind(weights)
    if backend == "torch":
        if kind not in ("checkpoint", "zero-shot"):
            raise EmbedderError(
                f"the torch back-end needs a checkpoint directory or 'openai', got the {kind} file {weights}"
            )
        if _torch_device(device).type != "cuda" and precision == "fp16":  # fail before loading weights
            raise EmbedderError("the torch back-end runs fp16 on CUDA only: use device='cuda' or precision='fp32'")
        model, version = load_model_weights(weights)
        return TorchEmbedder(model, device=device, precision=precision, batch_sizes=sizes, embedding_version=version)
    if backend == "onnxruntime":
        from .runtime_ort import OnnxRuntimeEmbedder

        if kind == "engine":
            raise EmbedderError(f"{weights}: a TensorRT engine runs on the tensorrt back-end, not onnxruntime")
        onnx_path = Path(weights) if kind == "onnx" else _export_to_cache(weights, engine_dir)
        return OnnxRuntimeEmbedder(
            onnx_path, device=device, precision=precision, batch_sizes=sizes, cache_dir=engine_dir
        )
    from .runtime_trt import TensorRTEmbedder, engine_from_weights
    from .tensorrt_build import cuda_device, import_tensorrt

    import_tensorrt()  # first the errors that say what to install, then those about the files
    cuda_device(device)
    if kind == "engine":
        return TensorRTEmbedder(Path(weights), device=device, batch_sizes=sizes)
    onnx_path = Path(weights) if kind == "onnx" else _export_to_cache(weights, engine_dir)
    engine_path = engine_from_weights(onnx_path, engine_dir, precision=precision, batch_sizes=sizes, device=device)
    return TensorRTEmbedder(engine_path, device=device, batch_sizes=sizes)


def weights_kind(weights: str | os.PathLike) -> str:
    """'zero-shot' ("openai" or an open_clip weights file), 'checkpoint', 'onnx' or 'engine'."""
    if str(weights) == "openai":
        return "zero-shot"
    p = Path(weights)
    if p.is_dir() or (p.is_file() and p.name in ("config.json", "model.safetensors")):
        return "checkpoint"
    if p.is_file() and p.suffix in OPEN_CLIP_WEIGHT_SUFFIXES:
        return "zero-shot"
    if p.suffix == ".onnx":
        if not p.is_file():
            raise EmbedderError(f"{p}: ONNX file not found")
        return "onnx"
    if p.suffix in (".engine", ".plan"):
        if not p.is_file():
            raise EmbedderError(f"{p}: TensorRT engine not found")
        return "engine"
    if not p.exists():
        raise EmbedderError(f"{p}: weights not found (a checkpoint directory, 'openai', .onnx or .engine)")
    raise EmbedderError(f"{p}: not a checkpoint directory, 'openai', an .onnx or an .engine file")


def _export_to_cache(weights: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    """Export a checkpoint (or "openai") to ONNX once, into the cache directory, keyed by its version."""
    from .onnx_export import export_onnx_cached

    return export_onnx_cached(weights, cache_dir)
