"""The CUDA runtime for the TensorRT back-end, through cuda-python (`cuda.bindings.runtime`), not torch.

TensorRT 10's documented Python pattern: device memory from `cudaMalloc`, page-locked host staging from
`cudaMallocHost` (so that `cudaMemcpyAsync` is truly asynchronous), one stream from
`cudaStreamCreateWithFlags`, and the raw pointers handed to `context.set_tensor_address`. Keeping torch
out means a TensorRT deployment imports neither torch nor its CUDA libraries at run time (issue 10
item 2; tests/test_structure.py checks the import graph), and the GPU memory is what TensorRT asks
for rather than a caching allocator's pool.

Every cuda-python call returns ``(error, *values)``; `check` turns an error into an `EmbedderError`
naming the call, so a failure reads as "cudaMalloc failed: cudaErrorMemoryAllocation", never as a
tuple silently unpacked.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import GPU_EXTRA, EmbedderError, parse_device


class CudaUnavailable(EmbedderError):
    """cuda-python, the CUDA driver or a GPU is missing; the message says what to install or check."""


def import_cudart() -> Any:
    """`cuda.bindings.runtime`, or a clear error naming the pip extra."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise CudaUnavailable(
            f"the tensorrt back-end needs cuda-python (import failed: {exc}); install it with {GPU_EXTRA}"
        ) from exc
    return cudart


def check(result: Any, call: str) -> Any:
    """The values of a cuda-python call's ``(error, *values)`` result, or an EmbedderError naming ``call``."""
    cudart = import_cudart()
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        raise EmbedderError(f"{call} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class CudaDevice:
    """A CUDA GPU by ordinal; ``str()`` is the "cuda:N" spelling the rest of the project uses."""

    index: int

    def __str__(self) -> str:
        return f"cuda:{self.index}"


def device_count() -> int:
    """GPUs the driver reports; 0 when there is no usable driver or device."""
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def cuda_device(device: str = "cuda") -> CudaDevice:
    """The CUDA device for `device` ("cuda" or "cuda:N"), or a clear error when there is no such GPU."""
    kind, index = parse_device(device)
    if kind != "cuda":
        raise EmbedderError(f"the tensorrt back-end runs on a CUDA GPU, not device {device!r}: use device='cuda'")
    count = device_count()
    if count == 0:
        raise CudaUnavailable("the tensorrt back-end needs a CUDA GPU; the CUDA driver reports none on this machine")
    if index >= count:
        raise EmbedderError(f"device {device!r}: only {count} CUDA device(s) present")
    return CudaDevice(index)


def gpu_identity(device: CudaDevice) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor"): part of the engine key."""
    cudart = import_cudart()
    props = check(cudart.cudaGetDeviceProperties(device.index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}"


@contextlib.contextmanager
def on_device(device: CudaDevice) -> Iterator[None]:
    """Make ``device`` current for this thread, and restore the previous one afterwards."""
    cudart = import_cudart()
    previous = check(cudart.cudaGetDevice(), "cudaGetDevice")
    check(cudart.cudaSetDevice(device.index), "cudaSetDevice")
    try:
        yield
    finally:
        check(cudart.cudaSetDevice(previous), "cudaSetDevice")


class DeviceBuffer:
    """``nbytes`` of device memory (`cudaMalloc`), freed by `free`."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(check(import_cudart().cudaMalloc(max(1, self.nbytes)), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            check(import_cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedArray:
    """A NumPy array over page-locked host memory (`cudaMallocHost`), freed by `free`."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = int(check(import_cudart().cudaMallocHost(max(1, self.nbytes)), "cudaMallocHost"))
        raw = (ctypes.c_byte * max(1, self.nbytes)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=self.nbytes).view(self.dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None  # type: ignore[assignment]
            check(import_cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class Stream:
    """A non-blocking CUDA stream; ``handle`` is what `execute_async_v3` takes."""

    def __init__(self) -> None:
        cudart = import_cudart()
        stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._stream = stream
        self.handle = int(stream)

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedArray, nbytes: int) -> None:
        cudart = import_cudart()
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self._stream), "cudaMemcpyAsync (to device)")

    def copy_to_host(self, dst: PinnedArray, src: DeviceBuffer, nbytes: int) -> None:
        cudart = import_cudart()
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self._stream), "cudaMemcpyAsync (to host)")

    def synchronize(self) -> None:
        check(import_cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._stream is not None:
            check(import_cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None
