"""Export and runtimes: one ONNX graph, TensorRT engines, and the `Embedder` interface (DESIGN.md section 6).

    from export import create_embedder
    emb = create_embedder("torch", "runs/sysu/best")   # or "onnxruntime" + model.onnx, "tensorrt" + ...
    emb.warmup()
    vectors = emb.embed(crops_uint8, modality=1)        # float32 [N, D], L2-normalised

Heavy modules (torch, onnx, onnxruntime, tensorrt) are imported lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .embedder import BACKENDS, Embedder, EmbedderError, TorchEmbedder, create_embedder

_LAZY = {
    "OnnxRuntimeEmbedder": ".runtime_ort",
    "TensorRTEmbedder": ".runtime_trt",
    "export_onnx": ".onnx_export",
    "read_onnx_metadata": ".onnx_export",
    "ExportError": ".onnx_export",
    "build_engine": ".tensorrt_build",
    "parity_report": ".verify",
}

__all__ = ["BACKENDS", "Embedder", "EmbedderError", "TorchEmbedder", "create_embedder", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
