"""Build TensorRT 10 engines from the exported ONNX graph (DESIGN.md section 6).

TensorRT 10 API only: `builder.create_builder_config()`, `config.set_memory_pool_limit(WORKSPACE, ...)`,
`builder.build_serialized_network(...)`; nothing from the removed implicit-batch API.

FP16 with the numerically sensitive parts kept in fp32: the network is built weakly typed with
`BuilderFlag.FP16` and `OBEY_PRECISION_CONSTRAINTS`, and `layer.precision = float32` (plus fp32 output
types) on every normalisation (LayerNorm, parsed from ONNX `LayerNormalization` into an
INormalizationLayer), softmax and reduce layer, and on every floating layer after the last matrix
multiply: the compensation gate and the final L2 normalisation are a few elementwise ops, so fp32 there
costs nothing and keeps the vector's norm exact. A strongly typed network would instead follow the ONNX
types, which are all fp32 in this export, and so run nothing in fp16.

The engine goes through `engine_cache.cached_engine`: keyed by (ONNX sha256, TensorRT version, GPU name
and compute capability, precision, profile), built once under a file lock. The timing cache lives in the
same directory (`timing.cache`), so rebuilding for another profile or precision reuses kernel timings.
The GPU is named and selected through cuda-python (`cuda_rt`), so building imports no torch either.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipmc.contract import atomic_write, file_sha256

from .base import GPU_EXTRA, EmbedderError, default_cache_dir, normalize_batch_sizes
from .cuda_rt import CudaDevice, cuda_device, gpu_identity, on_device
from .engine_cache import EngineKey, batch_profile, cached_engine, make_key
from .graph import read_onnx_metadata

log = logging.getLogger(__name__)

TIMING_CACHE_FILE = "timing.cache"
DEFAULT_WORKSPACE_GB = 4.0


class TensorRTUnavailable(EmbedderError):
    """TensorRT or a CUDA GPU is missing; the message says what to install."""


def import_tensorrt() -> Any:
    """The `tensorrt` module (version >= 10), or a clear error naming the pip extra."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"the tensorrt back-end needs TensorRT 10 (import failed: {exc}); install it with {GPU_EXTRA}"
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old: the tensorrt back-end needs 10.x ({GPU_EXTRA})"
        )
    return trt


def engine_key_for(
    onnx_path: str | os.PathLike, precision: str, batch_sizes: Sequence[int], device: CudaDevice
) -> EngineKey:
    trt = import_tensorrt()
    name, capability = gpu_identity(device)
    return make_key(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=str(trt.__version__),
        gpu_name=name,
        compute_capability=capability,
        precision=precision,
        batch_sizes=batch_sizes,
    )


def build_engine(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precision: str = "fp16",
    batch_sizes: Sequence[int] = (1, 8, 32, 128),
    device: str = "cuda",
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
) -> Path:
    """The engine for this ONNX file, precision and batch sizes on this GPU: from the cache in `out_dir`,
    or built (once, under the cache's file lock) and stored there. Returns the `.engine` path."""
    if precision not in ("fp16", "fp32"):
        raise EmbedderError(f"unknown precision {precision!r}: use fp16 or fp32")
    sizes = normalize_batch_sizes(batch_sizes)
    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)  # ExportError is an EmbedderError
    trt = import_tensorrt()
    dev = cuda_device(device)
    key = engine_key_for(onnx_path, precision, sizes, dev)
    out = Path(out_dir)
    log.info(
        "TensorRT %s engine for %s: %s, %s, batch profile %s",
        precision,
        onnx_path.name,
        key.gpu_name,
        f"sm_{key.compute_capability}",
        key.profile[0],
    )

    def build() -> tuple[bytes, dict[str, Any]]:
        with on_device(dev):
            data = _build_serialized(trt, onnx_path, out / TIMING_CACHE_FILE, meta, precision, sizes, workspace_gb)
        fields = {
            "onnx_file": str(onnx_path),
            "embedding_version": meta["embedding_version"],
            "embedding_dim": meta["embedding_dim"],
            "image_size": list(meta["image_size"]),
            "architecture": meta.get("architecture"),
            "preprocessing": meta["preprocessing"],
            "input_names": list(meta["input_names"]),
            "architecture_config": meta["architecture_config"],
            "precision": precision,
            "batch_sizes": list(sizes),
            "profile": list(batch_profile(sizes)),
        }
        return data, fields

    return cached_engine(out, key, build)


def engine_from_weights(
    onnx_path: str | os.PathLike,
    engine_dir: str | os.PathLike | None,
    *,
    precision: str,
    batch_sizes: Sequence[int],
    device: str,
) -> Path:
    """What `create_embedder("tensorrt", ...)` calls: the cached engine, built on first use."""

    directory = Path(engine_dir) if engine_dir else default_cache_dir() / "engines"
    return build_engine(onnx_path, directory, precision=precision, batch_sizes=batch_sizes, device=device)


# -- the TensorRT build ------------------------------------------------------------------------------
def _build_serialized(
    trt: Any,
    onnx_path: Path,
    timing_cache_path: Path,
    meta: dict[str, Any],
    precision: str,
    batch_sizes: tuple[int, ...],
    workspace_gb: float,
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    log.info("[1/4] parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EmbedderError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    log.info("parsed %d layers in %.1fs", network.num_layers, time.perf_counter() - t0)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):  # deprecated in TensorRT 10, may be gone
            log.warning("this GPU has no fast fp16; the fp16 engine may be slower than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _keep_sensitive_layers_fp32(trt, network)
        log.info("[2/4] fp16 with %d layers pinned to fp32 (normalisation, softmax, reduce, output tail)", pinned)
    else:
        # fp32 means fp32: TensorRT allows TF32 by default, whose 10-bit mantissa breaks the 0.99999 gate.
        config.clear_flag(trt.BuilderFlag.TF32)
        log.info("[2/4] fp32 engine (TF32 off)")

    lo, opt, hi = batch_profile(batch_sizes)
    h, w = meta["image_size"]
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    for name in meta["input_names"][1:]:  # modality, and camera where the graph takes it
        profile.set_shape(name, (lo,), (opt,), (hi,))
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    log.info(
        "[3/4] building (profile min/opt/max batch %d/%d/%d, timing cache %s)",
        lo,
        opt,
        hi,
        "loaded" if cache_bytes else "new",
    )
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    t1 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EmbedderError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    log.info("[4/4] built in %.1fs; saving the timing cache %s", time.perf_counter() - t1, timing_cache_path)
    _write_timing_cache(config.get_timing_cache(), timing_cache_path)
    return bytes(memoryview(serialized))


def _keep_sensitive_layers_fp32(trt: Any, network: Any) -> int:
    """Pin normalisation / softmax / reduce layers and the post-matmul tail to fp32; returns the count."""
    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    floating = {trt.float32, trt.float16}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    last_matmul = max(
        (i for i, layer in enumerate(layers) if layer.type == trt.LayerType.MATRIX_MULTIPLY), default=len(layers)
    )
    pinned = 0
    for i, layer in enumerate(layers):
        if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype not in floating for t in outputs):
            continue
        if layer.type in sensitive or i > last_matmul:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.__class__ = trt.INormalizationLayer  # the Python binding's documented downcast
                layer.compute_precision = trt.float32
            pinned += 1
    return pinned


def _write_timing_cache(cache: Any, path: Path) -> None:
    data = bytes(memoryview(cache.serialize()))
    atomic_write(path, data)


def _progress_monitor(trt: Any) -> Any:
    """A logging IProgressMonitor (TensorRT >= 10.0 has the interface; None where it does not)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class LogProgress(base):  # type: ignore[misc, valid-type]
        """Logs each build phase and every ~10% of its steps; thread-safe as TensorRT requires."""

        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._steps: dict[str, int] = {}
            self._started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._steps[phase_name] = max(1, int(num_steps))
                self._started[phase_name] = time.perf_counter()
            log.info("  %s%s (%d steps)", f"{parent_phase} > " if parent_phase else "", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total = self._steps.get(phase_name, 1)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                log.info("  %s: %d/%d", phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                started = self._started.pop(phase_name, time.perf_counter())
            log.info("  %s done in %.1fs", phase_name, time.perf_counter() - started)

    return LogProgress()
