"""`clipmc pretrain-clip`: a small open_clip CLIP pretrained on captioned synthetic crops."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pretrain-clip` subcommand (torch and open_clip load inside the command)."""
    p = sub.add_parser(
        "pretrain-clip",
        help="pretrain a small open_clip CLIP on a captioned synthetic set (clipmc synth --layout captions)",
        description=(
            "Contrastive pretraining of an open_clip CLIP (the architecture's open_clip config, the CLIP BPE "
            "tokenizer, open_clip's ClipLoss, AdamW, cosine schedule) on captions.jsonl. Writes FILE (loadable "
            "with build_model(ARCH, pretrained=FILE) or clipmc train --pretrained FILE), FILE-zeroshot.json "
            "(zero-shot attribute accuracy and text-to-image recall on held-out identities) and FILE-run/."
        ),
    )
    p.add_argument("--data", required=True, help="folder with captions.jsonl and its crops")
    p.add_argument("--arch", default="synth-small", help="architecture name or JSON file (default synth-small)")
    p.add_argument("--out", required=True, help="weights file to write, e.g. runs/synthclip.safetensors")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--holdout", type=float, default=0.1, help="share of identities held out for evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partial-captions", type=float, default=0.5,
                   help="share of each batch whose caption names only a random part of the attributes, redrawn "
                        "every epoch (default 0.5; 0: full captions only)")  # fmt: skip
    p.add_argument("--eval-data", help="a second captioned folder (another seed) evaluated in full after training")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--resume", action="store_true", help="continue the run of --out from its last saved state")
    p.add_argument("--evaluate-only", action="store_true",
                   help="train nothing: evaluate the weights of --out again (held-out identities of --data, and "
                        "--eval-data) and rewrite its -zeroshot.json")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain_clip)


def cmd_pretrain_clip(args: argparse.Namespace) -> int:
    """Run the pretraining and print the held-out evaluation."""
    from .pretrain_clip import PretrainConfig, evaluate_weights, format_report, pretrain

    cfg = PretrainConfig(
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        holdout=args.holdout,
        seed=args.seed,
        max_steps=args.max_steps,
        threads=args.threads,
        partial_captions=args.partial_captions,
    )
    if args.evaluate_only:
        metrics = evaluate_weights(args.data, args.out, cfg, eval_data=args.eval_data, progress=not args.quiet)
        print(format_report(metrics))
        return 0
    metrics = pretrain(args.data, args.out, cfg, resume=args.resume, progress=not args.quiet, eval_data=args.eval_data)
    print(format_report(metrics))
    print(json.dumps({"weights": metrics["weights"], "steps": metrics["steps"], "seconds": metrics["train_seconds"]}))
    return 0
