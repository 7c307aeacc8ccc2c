"""`clipmc calibrate`: fit the same-person probability of a checkpoint on validation identities.

The identities are the ones the training run held out for selection (read from the checkpoint's
training arguments: SYSU-MM01's exp/val_id.txt, or the seeded share of RegDB/LLCM training
identities), so the model never trained on them and no test identity is read. A checkpoint trained
on every identity (`--select last`) has no such identities: calibrating it on training identities would
overstate its confidence, so the command refuses unless told `--allow-trained-identities`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from clipmc.cli import CLIError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a same-person probability and a match threshold on validation identities (never test)",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (calibration.json is written into it)")
    p.add_argument("--dataset", required=True, help="sysu | regdb | llcm, or a dataset folder")
    p.add_argument("--data-root", help="the dataset's root folder")
    p.add_argument("--split", type=int, default=1, help="RegDB split the checkpoint was trained on")
    p.add_argument("--fmr", type=float, default=0.01, help="false-match rate of the threshold (default 0.01)")
    p.add_argument("--query-modality", choices=("infrared", "visible"), default="infrared",
                   help="the query side (default infrared: IR query against the visible gallery)")  # fmt: skip
    p.add_argument("--holdout", type=float, help="held-out share when the checkpoint does not record one")
    p.add_argument("--seed", type=int, help="hold-out seed when the checkpoint does not record one")
    p.add_argument("--allow-trained-identities", action="store_true",
                   help="calibrate a checkpoint that trained on every identity (its probabilities will be "
                        "optimistic; recorded in the file)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write calibration.json here instead of into the checkpoint")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from .calibration import CALIBRATION_FILE, fit_calibration, save_calibration
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .cli import _open_dataset, resolve_device
    from .data.records import MODALITY_NAMES
    from .data.selection import holdout_split
    from .features import extract_features

    if not 0 < args.fmr < 1:
        raise CLIError(f"--fmr must be in (0, 1), got {args.fmr}")
    config = read_checkpoint_config(args.checkpoint)
    training = (config.get("metadata") or {}).get("training_args") or {}
    trained_on_all = training.get("selection") == "last"
    if trained_on_all and not args.allow_trained_identities:
        raise CLIError(
            f"{args.checkpoint} was trained on every identity (--select last): no held-out identity is left to "
            "calibrate on; retrain with validation selection, or pass --allow-trained-identities"
        )
    holdout = args.holdout if args.holdout is not None else training.get("holdout", 0.1)
    seed = args.seed if args.seed is not None else training.get("seed", 0)
    dataset = _open_dataset(args.dataset, args.data_root, args.split)
    split = holdout_split(dataset, holdout, seed)
    val = split.validation
    query_code = 1 if args.query_modality == "infrared" else 0
    query = [r for r in (val.query_records + val.visible) if r.modality == query_code]
    gallery = [r for r in (val.query_records + val.visible) if r.modality != query_code]
    log.info("calibrating on %s: %d query and %d gallery crops", split.description, len(query), len(gallery))

    device = resolve_device(args.device)
    model = load_checkpoint(args.checkpoint).to(device)
    qf = extract_features(model, query, device=device, batch_size=args.batch_size, desc="query")
    gf = extract_features(model, gallery, device=device, batch_size=args.batch_size, desc="gallery")
    similarity = qf @ gf.T
    same = np.array([r.pid for r in query])[:, None] == np.array([r.pid for r in gallery])[None, :]
    calibration = fit_calibration(
        similarity.ravel(),
        same.ravel(),
        embedding_version=config["embedding_version"],
        target_fmr=args.fmr,
        fitted_on={
            "dataset": dataset.name,
            "identities": split.description,
            "num_identities": len(val.ids),
            "query_modality": MODALITY_NAMES[query_code],
            "gallery_modality": MODALITY_NAMES[1 - query_code],
            "trained_on_these_identities": trained_on_all,
        },
    )
    path = save_calibration(calibration, Path(args.out) if args.out else Path(args.checkpoint) / CALIBRATION_FILE)
    print(json.dumps({"written": str(path), **calibration.summary(), "fitted_on": calibration.fitted_on}, indent=2))
    print(
        f"threshold {calibration.threshold:.4f}: false-match rate {calibration.fmr_at_threshold:.2%} "
        f"(target {args.fmr:.2%}), true-match rate {calibration.tmr_at_threshold:.2%} on the validation pairs"
    )
    return 0
