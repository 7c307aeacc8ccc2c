"""What a `weights` argument is, and how to load it into a model.

A deployment names its weights one way (`--weights`): a checkpoint directory, "openai" (zero-shot
CLIP), a local open_clip weights file, an exported `.onnx` file or a TensorRT `.engine`. This module
tells them apart without loading anything, and loads the first three into a torch model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .base import EmbedderError

if TYPE_CHECKING:
    from clipmc.model.registry import EmbeddingModel

OPEN_CLIP_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_model_weights(weights: str | os.PathLike) -> tuple[EmbeddingModel, str]:
    """(model, embedding_version) for a checkpoint directory (any registered architecture), "openai"
    (zero-shot CLIP ViT-B/16 from open_clip's cache or download) or a local open_clip ViT-B-16 weights
    file (zero-shot, offline)."""
    from clipmc.model.checkpoint import load_checkpoint, read_checkpoint_config

    if weights_kind(weights) == "zero-shot":
        from clipmc.model.factory import build_model

        model = build_model("vit-b-16", pretrained=str(weights))
        return model, model.embedding_version
    model = load_checkpoint(weights)
    return model, read_checkpoint_config(weights)["embedding_version"]


def weights_kind(weights: str | os.PathLike) -> str:
    """'zero-shot' ("openai" or an open_clip weights file), 'checkpoint', 'onnx' or 'engine'."""
    if str(weights) == "openai":
        return "zero-shot"
    p = Path(weights)
    if p.is_dir() or (p.is_file() and p.name in ("config.json", "model.safetensors")):
        return "checkpoint"
    if p.is_file() and p.suffix in OPEN_CLIP_WEIGHT_SUFFIXES:
        return "zero-shot"
    if p.suffix == ".onnx":
        if not p.is_file():
            raise EmbedderError(f"{p}: ONNX file not found")
        return "onnx"
    if p.suffix in (".engine", ".plan"):
        if not p.is_file():
            raise EmbedderError(f"{p}: TensorRT engine not found")
        return "engine"
    if not p.exists():
        raise EmbedderError(f"{p}: weights not found (a checkpoint directory, 'openai', .onnx or .engine)")
    raise EmbedderError(f"{p}: not a checkpoint directory, 'openai', an .onnx or an .engine file")
