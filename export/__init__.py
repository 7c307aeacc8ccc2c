"""Export and runtimes: one ONNX graph, TensorRT engines, and the `Embedder` interface (DESIGN.md section 6).

    from export import create_embedder
    emb = create_embedder("torch", "runs/sysu/best")   # or "onnxruntime" + model.onnx, "tensorrt" + ...
    vectors = emb.embed(crops_uint8, modality=1)        # float32 [N, D], L2-normalised

Heavy modules (torch, onnx, tensorrt) are imported lazily.
"""

from __future__ import annotations

from .embedder import BACKENDS, Embedder, EmbedderError, TorchEmbedder, create_embedder

__all__ = ["BACKENDS", "Embedder", "EmbedderError", "TorchEmbedder", "create_embedder"]
