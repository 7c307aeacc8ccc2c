"""Checkpoints of every registered architecture: safetensors weights plus a JSON config (DESIGN.md
sections 2, 4 and 12).

A checkpoint is a directory:

    config.json          family (model.registry; "clipmc" when absent), architecture, image size,
                         embedding dimension, preprocessing, embedding_version, metadata
    model.safetensors    the weights; config.json records their sha256

The `embedding_version` (architecture + weights hash + preprocessing) travels with the vectors into
ONNX metadata, engine cache keys and galleries: vectors of two versions must never be mixed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipmc.contract import atomic_write, file_sha256

from .registry import DEFAULT_FAMILY, EmbeddingModel, architecture_of, get_architecture
from .version import compute_embedding_version, preprocess_config

log = logging.getLogger(__name__)

FORMAT = "clipmc-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or does not match its config."""


def save_checkpoint(model: EmbeddingModel, path: str | os.PathLike, **metadata: Any) -> Path:
    """Write the checkpoint directory atomically (files written to temp names, then renamed).

    Any registered architecture; the embedding contract (dimension, input size, normalisation and the
    inference inputs) is written next to the weights so that runtimes read it without building the model.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    version = compute_embedding_version(model)
    pre = preprocess_config(model.config)
    weights_sha256: list[str] = []

    def write_weights(tmp: Path) -> None:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        weights_sha256.append(file_sha256(tmp))

    # Weights first, then the config that vouches for them: a crash in between leaves a config whose
    # sha256 no longer matches, which load_checkpoint reports, never a silently mixed checkpoint.
    atomic_write(out / WEIGHTS_FILE, write_weights)
    arch = architecture_of(model)
    config = {
        "format": FORMAT,
        "family": arch.family,
        "inputs": list(arch.inputs),
        "architecture": model.config.to_dict(),
        "image_size": list(model.config.image_size),
        "embedding_dim": model.config.embedding_dim,
        "preprocessing": pre.to_dict(),
        "embedding_version": version,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": weights_sha256[0],
        "metadata": metadata,
    }
    atomic_write(out / CONFIG_FILE, json.dumps(config, indent=2, default=str))
    log.info("saved checkpoint %s (%s)", out, config["embedding_version"])
    return out


def save_epoch_checkpoints(
    model: Any, out_dir: str | os.PathLike, metadata: dict[str, Any], best_selection: dict[str, Any] | None = None
) -> None:
    """The end of a training epoch, for every recipe: `last/` always; with `best_selection` (the record
    of how these weights were chosen), the same weights also become `best/`, whose config.json gains
    that record. best/ is assembled beside the old one and swapped in, so a crash leaves one or the other.
    """
    out = Path(out_dir)
    save_checkpoint(model, out / "last", **metadata)
    if best_selection is None:
        return
    tmp = out / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / "last", tmp)
    cfg_path = tmp / CONFIG_FILE
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    config["metadata"]["selection"] = best_selection
    atomic_write(cfg_path, json.dumps(config, indent=2, default=str))
    shutil.rmtree(out / "best", ignore_errors=True)
    tmp.rename(out / "best")


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json, validated; `path` is the directory or a file inside it."""
    directory = _checkpoint_dir(path)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a clipmc checkpoint config (format != {FORMAT!r})")
    for key in ("architecture", "embedding_version", "weights_sha256"):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: missing field {key!r}")
    return cfg


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the model of any registered architecture from a checkpoint directory; every failure
    names the file and the problem."""
    directory = _checkpoint_dir(path)
    cfg = read_checkpoint_config(directory)
    weights = directory / cfg.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file")
    actual = file_sha256(weights)
    if actual != cfg["weights_sha256"]:
        raise CheckpointError(
            f"{weights}: sha256 {actual[:12]}... does not match config.json ({cfg['weights_sha256'][:12]}...): "
            "the file is truncated, corrupt or from another checkpoint"
        )
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    try:
        arch = get_architecture(str(cfg.get("family", DEFAULT_FAMILY)))
        config = arch.config_from_dict(cfg["architecture"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: bad architecture ({exc})") from exc
    model = arch.build(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights}: weights do not match the architecture {config.name!r} in config.json: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    # The file's sha256 matched config.json, so the embedding_version recorded when these exact weights
    # were saved still holds; it is not recomputed (a second full hash per load).
    model.eval()
    return model


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_FILE, WEIGHTS_FILE):
        return p.parent
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint directory (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    return p
