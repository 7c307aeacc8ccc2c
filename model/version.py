"""The embedding_version string: architecture + inference-code revision + weights hash + preprocessing
(DESIGN.md section 2).

Each architecture's config names the revision of its inference graph (`version_stem()`): for CLIP-MC
`INFERENCE_REVISION` (`CLIPMC.embed` and everything it calls; defined in model/config.py, re-exported
here). Bump it whenever a code change alters the vectors that given weights produce;
tests/test_golden.py holds a stored vector of the tiny model and fails when the vectors change while
the revision does not.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

# CLIP-MC's revision lives with its config; each architecture's config carries its own.
from .config import INFERENCE_REVISION as INFERENCE_REVISION
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


def preprocess_config(config: Any) -> PreprocessConfig:
    """The architecture config's preprocessing contract (input size and normalisation)."""
    return config.preprocessing()


def embedding_version(config: Any, digest: str) -> str:
    """e.g. "clipmc-vit-b-16.r2.w3f2a9c1d0e4b.288x144-bicubic-clipnorm" (an ablated CLIP-MC says so:
    "clipmc-tiny-no-mc.r2...") or "csdn-rn50.r1.w0a1b2c3d4e5f.288x144-bicubic-imagenetnorm": the
    architecture and its inference-code revision (config.version_stem()), the weights, the preprocessing."""
    return f"{config.version_stem()}.w{digest[:12]}.{preprocess_config(config).tag}"


def compute_embedding_version(model: torch.nn.Module) -> str:
    return embedding_version(model.config, weights_digest(model))
