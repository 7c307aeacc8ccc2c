"""TensorRT back-end of the `Embedder` interface (DESIGN.md section 6).

One deserialised engine, one execution context, one CUDA stream, and device buffers allocated once for
the largest batch of the engine's profile. Device memory is held as torch tensors (torch is always
installed, and its caching allocator and streams are well kept): their `data_ptr()`s are bound with
`context.set_tensor_address` once, and each call sets the input shapes and runs `execute_async_v3` on the
torch stream. Batches are split at the profile's maximum and padded up to its minimum; the execution
context is not thread-safe, so calls are serialised by a lock (the service batches requests upstream).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.model.preprocess import PreprocessConfig

from .base import Embedder, EmbedderError, normalize_batch_sizes
from .engine_cache import read_sidecar
from .graph import INPUT_NAMES, OUTPUT_NAME
from .tensorrt_build import cuda_device, engine_from_weights, import_tensorrt

log = logging.getLogger(__name__)

__all__ = ["TensorRTEmbedder", "engine_from_weights"]


class TensorRTEmbedder(Embedder):
    """A serialised TensorRT engine (with its sidecar JSON) behind the Embedder interface."""

    backend = "tensorrt"

    def __init__(
        self, engine_path: str | os.PathLike, *, device: str = "cuda", batch_sizes: Sequence[int] | None = None
    ) -> None:
        import torch

        trt = import_tensorrt()
        dev = cuda_device(device)
        path = Path(engine_path)
        meta = read_sidecar(path)  # EngineCacheError is an EmbedderError
        lo, _, hi = (int(b) for b in meta["profile"])
        sizes = normalize_batch_sizes(batch_sizes or meta["batch_sizes"])
        outside = [b for b in sizes if not lo <= b <= hi]
        if outside:
            raise EmbedderError(
                f"{path}: batch sizes {outside} are outside the engine's profile [{lo}, {hi}]; rebuild it with "
                f"clipmc export tensorrt --batch-sizes {','.join(map(str, sizes))}"
            )
        built_for = meta.get("key", {})
        if built_for.get("tensorrt_version") not in (None, str(trt.__version__)):
            raise EmbedderError(
                f"{path}: built with TensorRT {built_for['tensorrt_version']}, this is {trt.__version__}; rebuild it"
            )
        super().__init__(
            embedding_dim=meta["embedding_dim"],
            embedding_version=meta["embedding_version"],
            image_size=tuple(meta["image_size"]),
            batch_sizes=sizes,
            device=str(dev),
            precision=meta["precision"],
            preprocessing=PreprocessConfig.from_dict(meta["preprocessing"]) if "preprocessing" in meta else None,
        )
        self.engine_path = path
        self.metadata = meta
        self._profile = (lo, hi)
        self._dev = dev
        self._lock = threading.Lock()
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(dev):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EmbedderError(f"{path}: TensorRT could not deserialise the engine (see the log above)")
            names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
            if names != {*INPUT_NAMES, OUTPUT_NAME}:
                raise EmbedderError(f"{path}: engine tensors {sorted(names)} are not image/modality/embedding")
            self.context = self.engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=dev)
            h, w = self.image_size
            max_batch = max(sizes)  # embed() never passes more than this (sizes lie inside the profile)
            self._image = torch.empty((max_batch, 3, h, w), dtype=self._torch_dtype(trt, "image"), device=dev)
            self._modality = torch.zeros((max_batch,), dtype=self._torch_dtype(trt, "modality"), device=dev)
            self._output = torch.empty(
                (max_batch, self.embedding_dim), dtype=self._torch_dtype(trt, OUTPUT_NAME), device=dev
            )
            # Pinned host staging: host<->device copies are then truly asynchronous on the stream.
            self._host_image = torch.empty(self._image.shape, dtype=self._image.dtype).pin_memory()
            self._host_modality = torch.empty(self._modality.shape, dtype=self._modality.dtype).pin_memory()
            self._host_output = torch.empty(self._output.shape, dtype=torch.float32).pin_memory()
            for name, buf in (("image", self._image), ("modality", self._modality), (OUTPUT_NAME, self._output)):
                if not self.context.set_tensor_address(name, buf.data_ptr()):
                    raise EmbedderError(f"{path}: TensorRT refused the device buffer for {name!r}")
        log.info("TensorRT engine %s on %s (%s, profile %s)", path.name, dev, self.precision, self._profile)

    def _torch_dtype(self, trt: Any, name: str) -> Any:
        import torch

        mapping = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int64: torch.int64,
            trt.int32: torch.int32,
        }
        dtype = self.engine.get_tensor_dtype(name)
        if dtype not in mapping:
            raise EmbedderError(f"{self.engine_path}: unsupported dtype {dtype} for tensor {name!r}")
        return mapping[dtype]

    def _run(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        import torch

        n = images.shape[0]
        padded = max(n, self._profile[0])  # below the profile minimum: pad with zeros, drop the extra rows
        h, w = self.image_size
        with self._lock, torch.cuda.device(self._dev), torch.cuda.stream(self._stream):
            self._host_image[:n].copy_(torch.from_numpy(images))
            self._host_modality[:n].copy_(torch.from_numpy(modality))
            if padded > n:
                self._host_image[n:padded].zero_()
                self._host_modality[n:padded].zero_()
            self._image[:padded].copy_(self._host_image[:padded], non_blocking=True)
            self._modality[:padded].copy_(self._host_modality[:padded], non_blocking=True)
            if not (
                self.context.set_input_shape("image", (padded, 3, h, w))
                and self.context.set_input_shape("modality", (padded,))
            ):
                raise EmbedderError(f"{self.engine_path}: batch {padded} is outside the engine's profile")
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise EmbedderError(f"{self.engine_path}: TensorRT execution failed (batch {padded})")
            self._host_output[:n].copy_(self._output[:n], non_blocking=True)
            self._stream.synchronize()
            return self._host_output[:n].numpy().copy()

    def close(self) -> None:
        with self._lock:
            self.context = None
            self.engine = None
            self._image = self._modality = self._output = None
