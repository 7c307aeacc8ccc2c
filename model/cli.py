"""`clipmc info`: what a checkpoint is (model commands; training and evaluation add theirs)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="architecture, embedding_version, parameters and image size of a checkpoint"
    )
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .factory import count_parameters

    cfg = read_checkpoint_config(args.checkpoint)
    model = load_checkpoint(args.checkpoint)
    info = {
        "checkpoint": str(args.checkpoint),
        "architecture": model.config.name,
        "embedding_version": cfg["embedding_version"],
        "embedding_dim": model.embedding_dim,
        "image_size": list(model.config.image_size),
        "parameters": count_parameters(model),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "mc_alpha": float(model.mc.alpha.detach()),
        "metadata": cfg.get("metadata", {}),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0
