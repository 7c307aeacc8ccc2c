"""clipmc: visible-infrared person re-identification, from training to a searchable gallery service.

One namespace, four packages in data-flow order (DESIGN.md section 12):

- ``clipmc.model``: architectures, checkpoints, data, training and evaluation;
- ``clipmc.export``: ONNX / TensorRT export and the runtimes behind one ``Embedder`` interface;
- ``clipmc.gallery``: durable vector storage and filtered search (knows nothing of models);
- ``clipmc.service``: the FastAPI service.

The public API, importable from the top::

    import clipmc
    model = clipmc.build_model("tiny")                          # or load_checkpoint("runs/x/best")
    extract = clipmc.FeatureExtractor("runs/x/best")            # extract(["a.jpg"], modality="infrared")
    embedder = clipmc.create_embedder("onnxruntime", "model.onnx")
    gallery = clipmc.open_gallery("data/gallery", dim=embedder.embedding_dim,
                                  embedding_version=embedder.embedding_version)

Everything here is imported lazily (PEP 562), so ``import clipmc.gallery`` does not pull in torch or
FastAPI through this file.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "build_model": "clipmc.model.factory",
    "load_checkpoint": "clipmc.model.checkpoint",
    "create_embedder": "clipmc.export.factory",
    "FeatureExtractor": "clipmc.export.extractor",
    "open_gallery": "clipmc.gallery",
    "create_app": "clipmc.service.app",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'clipmc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
