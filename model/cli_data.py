"""Data subcommands of the ``clipmc`` CLI: ``clipmc synth``."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data subcommands (heavy imports stay inside the command functions)."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic visible-infrared ReID dataset in the SYSU-MM01, RegDB or LLCM layout",
        description=(
            "Write procedurally drawn people seen by visible and infrared cameras, in the real folder layout "
            "of the chosen dataset, so that training and the evaluation protocols run without real data. "
            "Same arguments and seed give byte-identical files."
        ),
    )
    p.add_argument(
        "--layout",
        required=True,
        choices=("sysu", "regdb", "llcm", "captions"),
        help="dataset layout to write; 'captions' is a CLIP pretraining set (every identity in 4 visible and "
        "2 infrared cameras, no ReID split). Every layout also gets captions.jsonl (attributes + caption per crop)",
    )
    p.add_argument("--out", required=True, help="output folder (must be missing or empty)")
    p.add_argument("--ids", required=True, type=int, help="number of identities (2..9999)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--images-per-camera",
        type=int,
        default=None,
        help="images per (identity, camera); default 6 (sysu), 10 (regdb, per modality), 5 (llcm), 2 (captions)",
    )
    p.add_argument("--size", default="128x64", help="crop size HxW (default 128x64; the real sets are ~288x144)")
    p.add_argument(
        "--test-ids",
        type=int,
        default=None,
        help="test identities; default a third (sysu, llcm) or half per split (regdb)",
    )
    p.add_argument(
        "--ir-coupling",
        type=float,
        default=0.0,
        help="how much infrared brightness follows the visible colour of clothes and bags: 0 (default) "
        "independent, as in earlier versions; 1 a fixed function of luminance and hue family",
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes (default min(2, CPUs))")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from clipmc.model.synth import SynthError, generate, parse_size

    try:
        summary = generate(
            args.layout,
            args.out,
            args.ids,
            seed=args.seed,
            images_per_camera=args.images_per_camera,
            size=parse_size(args.size),
            test_ids=args.test_ids,
            workers=args.workers,
            progress=not args.quiet,
            ir_coupling=args.ir_coupling,
        )
    except SynthError as exc:
        print(f"clipmc synth: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary.num_images} {summary.layout} images ({len(summary.train_ids)} train, "
        f"{len(summary.test_ids)} test identities) to {summary.out} in {summary.seconds:.1f}s "
        f"({summary.images_per_minute:.0f} images/min)"
    )
    return 0
