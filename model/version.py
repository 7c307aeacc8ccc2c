"""The embedding_version string: architecture + weights hash + preprocessing (DESIGN.md section 2)."""

from __future__ import annotations

import hashlib

import torch

from .config import ModelConfig
from .preprocess import PreprocessConfig


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): identifies the weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def preprocess_config(config: ModelConfig) -> PreprocessConfig:
    return PreprocessConfig(height=config.image_size[0], width=config.image_size[1])


def embedding_version(config: ModelConfig, digest: str) -> str:
    """e.g. "clipmc-vit-b-16.w3f2a9c1d0e4b.288x144-bicubic-clipnorm"."""
    return f"clipmc-{config.name}.w{digest[:12]}.{preprocess_config(config).tag}"


def compute_embedding_version(model: torch.nn.Module) -> str:
    return embedding_version(model.config, weights_digest(model))
