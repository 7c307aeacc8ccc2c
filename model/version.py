"""The embedding_version string: architecture + inference-code revision + weights hash + preprocessing
(DESIGN.md section 2).

`INFERENCE_REVISION` names the revision of the inference graph (`CLIPMC.embed` and everything it calls).
Bump it whenever a code change alters the vectors that given weights produce; tests/test_golden.py holds
a stored vector of the tiny model and fails when the vectors change while the revision does not.
"""

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


# r2: MC's compensation term factored out (same vectors), MCL's last layer near-zero instead of zero
# init, ablations in the architecture. Bump on any change that alters vectors for given weights.
INFERENCE_REVISION = 2


def preprocess_config(config: ModelConfig) -> PreprocessConfig:
    return PreprocessConfig(height=config.image_size[0], width=config.image_size[1])


def embedding_version(config: ModelConfig, digest: str) -> str:
    """e.g. "clipmc-vit-b-16.r2.w3f2a9c1d0e4b.288x144-bicubic-clipnorm"; an ablated architecture says so
    ("clipmc-tiny-no-mc.r2...")."""
    arch = config.name + (f"-no-{'-'.join(config.ablate)}" if config.ablate else "")
    return f"clipmc-{arch}.r{INFERENCE_REVISION}.w{digest[:12]}.{preprocess_config(config).tag}"


def compute_embedding_version(model: torch.nn.Module) -> str:
    return embedding_version(model.config, weights_digest(model))
