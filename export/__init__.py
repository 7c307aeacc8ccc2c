"""Export and runtimes: one ONNX graph, TensorRT engines, and the `Embedder` interface (DESIGN.md section 6).

    from clipmc.export import create_embedder
    emb = create_embedder("torch", "runs/sysu/best")   # or "onnxruntime" + model.onnx, "tensorrt" + ...
    emb.warmup()
    vectors = emb.embed(crops_uint8, modality=1)        # float32 [N, D], L2-normalised

Heavy modules (torch, onnx, onnxruntime, tensorrt) are imported lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .base import BACKENDS, Embedder, EmbedderError, ExportError
from .factory import create_embedder

_LAZY = {
    "FeatureExtractor": ".extractor",
    "TorchEmbedder": ".runtime_torch",
    "OnnxRuntimeEmbedder": ".runtime_ort",
    "TensorRTEmbedder": ".runtime_trt",
    "export_onnx": ".onnx_export",
    "read_onnx_metadata": ".graph",
    "build_engine": ".tensorrt_build",
    "parity_report": ".verify",
}

__all__ = ["BACKENDS", "Embedder", "EmbedderError", "ExportError", "create_embedder", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'clipmc.export' has no attribute {name!r}")
