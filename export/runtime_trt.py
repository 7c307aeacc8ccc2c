"""TensorRT back-end of the `Embedder` interface (DESIGN.md section 6).

One deserialised engine, one execution context, one CUDA stream, and device buffers allocated once for
the largest batch of the engine's profile, with page-locked host staging buffers of the same size: all
through cuda-python (`cuda_rt`: cudaMalloc, cudaMallocHost, cudaMemcpyAsync, streams), TensorRT 10's
documented Python pattern, so this runtime imports no torch. The device pointers are bound with
`context.set_tensor_address` once, and each call copies the batch in, sets the input shapes, runs
`execute_async_v3` on the stream and copies the vectors out. Batches are split at the profile's maximum
and padded up to its minimum; the execution context is not thread-safe, so calls are serialised by a
lock (the service batches requests upstream).
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
from .cuda_rt import DeviceBuffer, PinnedArray, Stream, cuda_device, on_device
from .engine_cache import read_sidecar
from .graph import INPUT_NAMES, OUTPUT_NAME
from .tensorrt_build import engine_from_weights, import_tensorrt

log = logging.getLogger(__name__)

__all__ = ["TensorRTEmbedder", "engine_from_weights"]


class TensorRTEmbedder(Embedder):
    """A serialised TensorRT engine (with its sidecar JSON) behind the Embedder interface."""

    backend = "tensorrt"

    def __init__(
        self, engine_path: str | os.PathLike, *, device: str = "cuda", batch_sizes: Sequence[int] | None = None
    ) -> None:
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
            inputs=meta.get("input_names", INPUT_NAMES),
            architecture_config=meta.get("architecture_config"),
        )
        self.engine_path = path
        self.metadata = meta
        self._profile = (lo, hi)
        self._dev = dev
        self._lock = threading.Lock()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._device_buffers: dict[str, DeviceBuffer] = {}
        self._host_buffers: dict[str, PinnedArray] = {}
        self._stream: Stream | None = None
        with on_device(dev):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EmbedderError(f"{path}: TensorRT could not deserialise the engine (see the log above)")
            names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
            if names != {*self.inputs, OUTPUT_NAME}:
                raise EmbedderError(f"{path}: engine tensors {sorted(names)} are not {[*self.inputs, OUTPUT_NAME]}")
            self.context = self.engine.create_execution_context()
            h, w = self.image_size
            max_batch = max(sizes)  # embed() never passes more than this (sizes lie inside the profile)
            shapes = {
                "image": (max_batch, 3, h, w),
                **{name: (max_batch,) for name in self.inputs[1:]},  # modality (and camera)
                OUTPUT_NAME: (max_batch, self.embedding_dim),
            }
            try:
                self._stream = Stream()
                for name, shape in shapes.items():
                    dtype = self._dtype(trt, name)
                    # Pinned host staging: host<->device copies are then truly asynchronous on the stream.
                    self._host_buffers[name] = PinnedArray(shape, dtype)
                    self._device_buffers[name] = DeviceBuffer(self._host_buffers[name].nbytes)
                    if not self.context.set_tensor_address(name, self._device_buffers[name].ptr):
                        raise EmbedderError(f"{path}: TensorRT refused the device buffer for {name!r}")
            except BaseException:
                self._free()
                raise
        log.info("TensorRT engine %s on %s (%s, profile %s)", path.name, dev, self.precision, self._profile)

    def _dtype(self, trt: Any, name: str) -> np.dtype:
        dtype = self.engine.get_tensor_dtype(name)
        if dtype not in (trt.float32, trt.float16, trt.int64, trt.int32):
            raise EmbedderError(f"{self.engine_path}: unsupported dtype {dtype} for tensor {name!r}")
        return np.dtype(trt.nptype(dtype))

    def _run(self, images: np.ndarray, modality: np.ndarray, camera: np.ndarray | None) -> np.ndarray:
        n = images.shape[0]
        padded = max(n, self._profile[0])  # below the profile minimum: pad with zeros, drop the extra rows
        h, w = self.image_size
        with self._lock, on_device(self._dev):
            stream = self._stream
            if stream is None:
                raise EmbedderError(f"{self.engine_path}: the embedder is closed")
            host, device = self._host_buffers, self._device_buffers
            values = {"image": images, "modality": modality, "camera": camera}
            for name in self.inputs:
                host[name].array[:n] = values[name]
                if padded > n:  # padding rows: zeros (a valid index for modality and camera)
                    host[name].array[n:padded] = 0
            for name in self.inputs:
                row = host[name].nbytes // host[name].array.shape[0]
                stream.copy_to_device(device[name], host[name], padded * row)
            if not (
                self.context.set_input_shape("image", (padded, 3, h, w))
                and all(self.context.set_input_shape(name, (padded,)) for name in self.inputs[1:])
            ):
                raise EmbedderError(f"{self.engine_path}: batch {padded} is outside the engine's profile")
            if not self.context.execute_async_v3(stream.handle):
                raise EmbedderError(f"{self.engine_path}: TensorRT execution failed (batch {padded})")
            out = host[OUTPUT_NAME]
            stream.copy_to_host(out, device[OUTPUT_NAME], n * (out.nbytes // out.array.shape[0]))
            stream.synchronize()
            return out.array[:n].astype(np.float32, copy=True)

    def _free(self) -> None:
        for buffer in (*self._device_buffers.values(), *self._host_buffers.values()):
            buffer.free()
        self._device_buffers, self._host_buffers = {}, {}
        if self._stream is not None:
            self._stream.destroy()
            self._stream = None

    def close(self) -> None:
        with self._lock:
            self.context = None
            self.engine = None
            with on_device(self._dev):
                self._free()
