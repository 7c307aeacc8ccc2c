"""`create_embedder`: the one place that knows every runtime (DESIGN.md section 6).

The service, the CLIs and the benchmarks call `create_embedder(backend, weights, ...)` and then
`embed(images, modality)`; which runtime answers is configuration.

    emb = create_embedder("auto", "runs/sysu/best", device="auto", precision="auto")  # fastest here
    emb = create_embedder("torch", "runs/sysu/best")             # checkpoint directory
    emb = create_embedder("onnxruntime", "model.onnx")           # version read from ONNX metadata
    emb = create_embedder("tensorrt", "runs/sysu/best", device="cuda", precision="fp16",
                          batch_sizes=(1, 8, 32), engine_dir="/var/cache/clipmc/engines")
    emb.warmup()
    vectors = emb.embed(crops_uint8, modality=1)                 # [N, H, W, 3] uint8 -> [N, D]

Runtimes are imported inside the function, so choosing ONNX Runtime never imports torch or TensorRT.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .base import BACKENDS, PRECISIONS, Embedder, EmbedderError, normalize_batch_sizes, parse_device
from .selection import REQUESTED_BACKENDS, REQUESTED_PRECISIONS, HostCapabilities, Selection, probe_host, select_runtime
from .weights import load_model_weights, weights_kind

log = logging.getLogger(__name__)


def create_embedder(
    backend: str,
    weights: str | os.PathLike,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    batch_sizes: Sequence[int] = (1, 8, 32),
    engine_dir: str | os.PathLike | None = None,
    host: HostCapabilities | None = None,
) -> Embedder:
    """Build the embedder the configuration names.

    backend: "torch", "onnxruntime", "tensorrt", or "auto" (the fastest runtime this host has:
    `selection.select_runtime`); device and precision may be "auto" too. The resolved choice is recorded
    in `embedder.selection` (and so in `describe()` and /readyz).
    weights: a checkpoint directory, "openai" (zero-shot CLIP ViT-B/16; or a local open_clip ViT-B-16
    weights file, e.g. `open_clip_model.safetensors`), an `.onnx` file (onnxruntime,
    or tensorrt which builds an engine from it) or an `.engine` file (tensorrt; its sidecar JSON holds
    the embedding_version). For backend "tensorrt" a checkpoint or ONNX file is exported / built into
    `engine_dir` through the engine cache, which is what a deployment does on first start; for
    onnxruntime a checkpoint is exported there once, and precision "int8" quantises that export once.
    host: the capabilities "auto" decides on (default: `selection.probe_host()`; tests inject them).

    Raises EmbedderError (a ValueError) for an unknown back-end, precision, device or file kind and for a
    missing package (naming the pip extra); the model's own errors pass through unchanged:
    `model.checkpoint.CheckpointError` (ValueError) for a bad checkpoint and
    `model.factory.PretrainedWeightsError` (RuntimeError) when "openai" weights cannot be obtained.
    """
    requested = (str(backend).strip().lower(), str(device).strip().lower(), str(precision).strip().lower())
    if requested[0] not in REQUESTED_BACKENDS:
        raise EmbedderError(f"unknown embedder backend {backend!r}: use one of {', '.join(REQUESTED_BACKENDS)}")
    if requested[2] not in REQUESTED_PRECISIONS:
        raise EmbedderError(f"unknown precision {precision!r}: use one of {', '.join(REQUESTED_PRECISIONS)}")
    kind = weights_kind(weights)
    if "auto" in requested:
        choice = select_runtime(*requested, kind, host if host is not None else probe_host())
        if requested[0] == "auto":
            log.info("backend auto: %s on %s, %s (%s)", choice.backend, choice.device, choice.precision, choice.reason)
    else:
        choice = Selection(*requested, reason=f"{requested[0]} as configured")
    embedder = _create(choice.backend, weights, kind, choice.device, choice.precision, batch_sizes, engine_dir)
    embedder.selection = {**choice.as_dict(), "requested": "/".join(requested)}
    return embedder


def _create(
    backend: str,
    weights: str | os.PathLike,
    kind: str,
    device: str,
    precision: str,
    batch_sizes: Sequence[int],
    engine_dir: str | os.PathLike | None,
) -> Embedder:
    if backend not in BACKENDS:
        raise EmbedderError(f"unknown embedder backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EmbedderError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    sizes = normalize_batch_sizes(batch_sizes)
    if backend == "torch":
        if kind not in ("checkpoint", "zero-shot"):
            raise EmbedderError(
                f"the torch back-end needs a checkpoint directory or 'openai', got the {kind} file {weights}"
            )
        if parse_device(device)[0] != "cuda" and precision == "fp16":  # fail before loading weights
            raise EmbedderError("the torch back-end runs fp16 on CUDA only: use device='cuda' or precision='fp32'")
        if precision == "int8":
            raise EmbedderError("int8 runs in ONNX Runtime (backend onnxruntime or auto), not in torch")
        model, version = load_model_weights(weights)
        from .runtime_torch import TorchEmbedder

        return TorchEmbedder(model, device=device, precision=precision, batch_sizes=sizes, embedding_version=version)
    if backend == "onnxruntime":
        from .runtime_ort import OnnxRuntimeEmbedder

        if kind == "engine":
            raise EmbedderError(f"{weights}: a TensorRT engine runs on the tensorrt back-end, not onnxruntime")
        onnx_path = Path(weights) if kind == "onnx" else _export_to_cache(weights, engine_dir)
        if precision == "int8":
            from .quantize import quantize_int8_cached

            onnx_path = quantize_int8_cached(onnx_path, engine_dir)
        return OnnxRuntimeEmbedder(
            onnx_path, device=device, precision=precision, batch_sizes=sizes, cache_dir=engine_dir
        )
    if precision not in ("fp16", "fp32"):
        raise EmbedderError(f"the tensorrt back-end builds fp16 or fp32 engines, not {precision}")
    from .runtime_trt import TensorRTEmbedder, engine_from_weights
    from .tensorrt_build import cuda_device, import_tensorrt

    import_tensorrt()  # first the errors that say what to install, then those about the files
    cuda_device(device)
    if kind == "engine":
        return TensorRTEmbedder(Path(weights), device=device, batch_sizes=sizes)
    onnx_path = Path(weights) if kind == "onnx" else _export_to_cache(weights, engine_dir)
    engine_path = engine_from_weights(onnx_path, engine_dir, precision=precision, batch_sizes=sizes, device=device)
    return TensorRTEmbedder(engine_path, device=device, batch_sizes=sizes)


def _export_to_cache(weights: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    """Export a checkpoint (or "openai") to ONNX once, into the cache directory, keyed by its version."""
    from .onnx_export import export_onnx_cached

    return export_onnx_cached(weights, cache_dir)
