"""The networks (CLIP-MC, CSDN: one registry, model.registry), their preprocessing contract,
checkpoints, data, training and evaluation.

    from clipmc.model import build_model, load_checkpoint, preprocess
    model = build_model("vit-b-16", pretrained="openai")   # zero-shot CLIP features until trained
    vectors = model.embed(images, modality)                 # [N, 1280], L2-normalised
    csdn = build_model("csdn-rn50", pretrained="openai")   # CSDN: [N, 3072]

Submodules that pull in torch are imported lazily, so `model.preprocess` stays light for the service.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .preprocess import CLIP_MEAN, CLIP_STD, ImageDecodeError, PreprocessConfig, preprocess, preprocess_batch

_LAZY = {
    "CLIPMC": ".clipmc",
    "CLIPMCOutput": ".clipmc",
    "EmbeddingGraph": ".clipmc",
    "ModelConfig": ".config",
    "get_config": ".config",
    "build_model": ".factory",
    "PretrainedWeightsError": ".factory",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "read_checkpoint_config": ".checkpoint",
    "CheckpointError": ".checkpoint",
    "ARCHITECTURES": ".registry",
    "get_architecture": ".registry",
    "resolve_config": ".registry",
}

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageDecodeError",
    "PreprocessConfig",
    "preprocess",
    "preprocess_batch",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'clipmc.model' has no attribute {name!r}")
