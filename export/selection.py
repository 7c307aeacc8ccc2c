"""`--backend auto`: which runtime, device and precision this host should run (issue 15).

The fastest runtime the host has, so that nobody has to know the options to get a fast service:

- a CUDA host with TensorRT 10: the TensorRT engine (fp16, built once into the engine cache);
- a CUDA host without TensorRT: ONNX Runtime on its CUDA execution provider when that is installed
  (onnxruntime-gpu), else torch on CUDA;
- a CPU host: ONNX Runtime fp32 (about twice torch eager's throughput on ViT-B/16, benchmarks/embed.py),
  the ONNX graph exported once into the export cache. INT8 (`precision="int8"`, ONNX Runtime dynamic
  quantisation) and bf16 (`precision="bf16"`, torch autocast) are opt-ins: their vectors differ more
  from fp32, so a user turns them on after `clipmc verify` passes on their own crops.

The decision is a pure function of the request and of `HostCapabilities`, so every branch is tested
by injecting capabilities (tests/test_backend_selection.py) rather than by needing the hardware.
`probe_host` finds the real capabilities without importing torch, TensorRT or onnxruntime's session
machinery where it can: TensorRT's presence is `importlib.util.find_spec`, the GPU count comes from
cuda-python's runtime API (torch only when cuda-python is not installed).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass

from .base import BACKENDS, PRECISIONS, EmbedderError, parse_device

log = logging.getLogger(__name__)

#: What a user may ask for: a back-end or "auto"; a device or "auto"; a precision or "auto".
REQUESTED_BACKENDS = ("auto", *BACKENDS)
REQUESTED_PRECISIONS = ("auto", *PRECISIONS)


@dataclass(frozen=True)
class HostCapabilities:
    """What the host offers the runtimes.

    tensorrt: the `tensorrt` module is installed. cuda_devices: CUDA GPUs the driver reports (0 on a CPU
    host or without a working driver). ort_providers: onnxruntime's available execution providers (empty
    when onnxruntime is not installed)."""

    tensorrt: bool
    cuda_devices: int
    ort_providers: tuple[str, ...]

    @property
    def onnxruntime(self) -> bool:
        return "CPUExecutionProvider" in self.ort_providers

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers


@dataclass(frozen=True)
class Selection:
    """The resolved choice and why: what /readyz shows under embedder.selection."""

    backend: str
    device: str
    precision: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def cuda_device_count() -> int:
    """CUDA GPUs visible to this process: cuda-python's `cudaGetDeviceCount`, torch when it is absent.

    Any driver error (no driver, too old a driver, no device) counts as no GPU."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        try:
            err, count = cudart.cudaGetDeviceCount()
        except Exception as exc:  # a missing libcudart surfaces as RuntimeError/OSError from the loader
            log.debug("cudaGetDeviceCount failed: %r", exc)
            return 0
        return int(count) if err == cudart.cudaError_t.cudaSuccess else 0
    import torch  # a core dependency; only reached when cuda-python is missing

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def probe_host() -> HostCapabilities:
    """The capabilities of this machine (see the module docstring for how each is found)."""
    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except ImportError:
        providers = ()
    return HostCapabilities(
        tensorrt=importlib.util.find_spec("tensorrt") is not None,
        cuda_devices=cuda_device_count(),
        ort_providers=providers,
    )


def select_runtime(
    backend: str,
    device: str,
    precision: str,
    weights_kind: str,
    host: HostCapabilities,
) -> Selection:
    """Resolve "auto" in `backend`, `device` and `precision` for this host; explicit values are kept.

    weights_kind: `weights.weights_kind` of the weights ("checkpoint", "zero-shot", "onnx", "engine").
    Raises EmbedderError for a request the host cannot serve (a CUDA device without a GPU, fp16 on a CPU,
    an engine file without TensorRT).
    """
    backend = str(backend).strip().lower()
    device = str(device).strip().lower()
    precision = str(precision).strip().lower()
    if backend not in REQUESTED_BACKENDS:
        raise EmbedderError(f"unknown embedder backend {backend!r}: use one of {', '.join(REQUESTED_BACKENDS)}")
    if precision not in REQUESTED_PRECISIONS:
        raise EmbedderError(f"unknown precision {precision!r}: use one of {', '.join(REQUESTED_PRECISIONS)}")
    gpu = host.cuda_devices > 0
    device_was_auto = device == "auto"
    if device == "auto":
        device = "cuda" if gpu and backend != "onnxruntime" else "cpu"
        if backend == "onnxruntime" and gpu and host.ort_cuda:
            device = "cuda"
        if backend == "tensorrt":  # TensorRT runs on a GPU or not at all: its own error says what is missing
            device = "cuda"
    elif backend == "auto" and not device.startswith("tensorrt"):
        kind, index = parse_device(device)
        if kind == "cuda" and index >= host.cuda_devices:
            raise EmbedderError(
                f"device {device!r} requested but this host has {host.cuda_devices} CUDA GPU(s) "
                "(no driver, or no GPU): use device 'cpu' or 'auto'"
            )
    if backend != "auto":
        if precision == "auto":
            precision = "fp16" if backend == "tensorrt" else "fp32"
        return Selection(backend, device, precision, f"{backend} as configured")
    return _auto(device, precision, weights_kind, host, device_was_auto)


def _auto(device: str, precision: str, weights_kind: str, host: HostCapabilities, device_was_auto: bool) -> Selection:
    torch_ok = weights_kind in ("checkpoint", "zero-shot")  # torch cannot run an exported file
    if weights_kind == "engine":
        if not host.tensorrt or host.cuda_devices == 0:
            raise EmbedderError("a TensorRT engine file needs TensorRT and a CUDA GPU; export ONNX for this host")
        return Selection("tensorrt", "cuda" if device == "cpu" else device, "fp16", "an engine file: TensorRT")
    if device.startswith("cuda"):
        if host.tensorrt and precision in ("auto", "fp16", "fp32"):
            return Selection(
                "tensorrt", device, "fp16" if precision == "auto" else precision, "CUDA host with TensorRT"
            )
        if host.ort_cuda and precision in ("auto", "fp32"):
            return Selection("onnxruntime", device, "fp32", "CUDA host without TensorRT: ONNX Runtime CUDA provider")
        if torch_ok and precision != "int8":
            chosen = "fp16" if precision == "auto" else precision
            return Selection("torch", device, chosen, "CUDA host without TensorRT or onnxruntime-gpu: torch on CUDA")
        if not device_was_auto:
            raise EmbedderError(
                f"no runtime on this CUDA host serves {weights_kind} weights at precision {precision}: "
                "install the gpu extra (pip install 'clipmc[gpu]') or use device 'cpu'"
            )
        device = "cpu"  # nothing here runs these weights on the GPU: the CPU path below
    # CPU host (or device "cpu" asked for on a GPU host)
    if precision == "fp16":
        raise EmbedderError("fp16 runs on a CUDA GPU only: on the CPU use precision fp32 (default), bf16 or int8")
    if precision == "bf16":
        if not torch_ok:
            raise EmbedderError("bf16 on the CPU runs in torch (autocast): give a checkpoint or 'openai' weights")
        return Selection("torch", "cpu", "bf16", "CPU host, bf16 asked for: torch autocast")
    if host.onnxruntime:
        chosen = "int8" if precision == "int8" else "fp32"
        return Selection("onnxruntime", "cpu", chosen, f"CPU host: ONNX Runtime {chosen}")
    if precision == "int8":
        raise EmbedderError("int8 runs in ONNX Runtime, which is not installed: pip install onnxruntime")
    if not torch_ok:
        raise EmbedderError("an ONNX file needs onnxruntime, which is not installed: pip install onnxruntime")
    return Selection("torch", "cpu", "fp32", "CPU host without onnxruntime: torch")
