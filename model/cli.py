"""Model commands: `clipmc info`, `clipmc train`, `clipmc evaluate`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from clipmc.cli import CLIError

log = logging.getLogger(__name__)

ABLATION_CHOICES = ("mc", "itpg", "mcl", "text")  # config.ABLATIONS (not imported: keeps `clipmc --help` fast)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="architecture, embedding_version, parameters and image size of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a registered architecture (CLIP-MC, CSDN, MIP) on SYSU-MM01, RegDB, "
                       "LLCM or a folder in one of their layouts")  # fmt: skip
    p.add_argument("--dataset", required=True, help="sysu | regdb | llcm, or a dataset folder")
    p.add_argument("--data-root", help="the dataset's root folder (not needed when --dataset is a folder)")
    p.add_argument("--split", type=int, default=1, help="RegDB split 1..10 (one model per split)")
    p.add_argument("--config", help="JSON file of training options (the recipe's RecipeConfig: model/trainer.py "
                   "TrainConfig for CLIP-MC, model/csdn/recipe.py CSDNTrainConfig, model/mip/recipe.py "
                        "MIPTrainConfig)")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder: last/, best/, train_log.csv, tensorboard/")
    p.add_argument("--model", help="architecture: vit-b-16 (default), tiny, synth-small, csdn-rn50, csdn-tiny, "
                                   "mip-vit-b-16, mip-tiny, mip-synth-small, or a JSON file")  # fmt: skip
    p.add_argument("--pretrained", help="'openai', a local open_clip checkpoint file (MIP: 'timm', a timm ViT file "
                                        "or an open_clip CLIP file), or 'none'")  # fmt: skip
    p.add_argument("--image-size", help="H,W (default 288,144)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--seed", type=int, help="seeds python, numpy and torch before the model is built")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="bit-reproducible run: one CPU thread, deterministic algorithms (CUDA: cuDNN "
                        "deterministic, no TF32)")  # fmt: skip
    p.add_argument("--ablate", action="append", choices=ABLATION_CHOICES,
                   help="remove a module (repeatable): mc (f_full = f_img), itpg (shared instance tokens), mcl "
                        "(one context for both modalities), text (no text encoder: image-only baseline)")  # fmt: skip
    p.add_argument("--select", dest="selection", choices=("val", "last"),
                   help="val (default): best/ chosen on validation identities (SYSU exp/val_id.txt; RegDB/LLCM a "
                        "held-out share of the training ids); last: train on all training ids, keep last/")  # fmt: skip
    p.add_argument("--holdout", type=float, help="RegDB/LLCM: share of training identities held out (default 0.1)")
    p.add_argument("--eval-every", type=int, help="validate (and maybe update best/) every N epochs")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="standard protocols (../shared/PROTOCOLS.md): R1/5/10/20, mAP, mINP")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder, or 'openai' for zero-shot CLIP; for RegDB --split all a pattern "
                        "with {split}")  # fmt: skip
    p.add_argument("--dataset", required=True, help="sysu | regdb | llcm, or a dataset folder")
    p.add_argument("--data-root", help="the dataset's root folder")
    p.add_argument("--mode", help="SYSU: all | indoor (default both); RegDB: visible_to_thermal | "
                                  "thermal_to_visible; LLCM: ir_to_visible | visible_to_ir (default both)")  # fmt: skip
    p.add_argument("--split", default=1, type=_split_arg, help="RegDB split 1..10 or 'all'")
    p.add_argument("--trials", type=_trials_arg, help="comma-separated trials (default: the protocol's 10)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped crop")
    p.add_argument("--llcm-vis2ir", choices=("sampled", "transposed"), default="sampled",
                   help="LLCM VIS->IR: sampled (PROTOCOLS.md: visible queries, sampled NIR gallery) or transposed "
                        "(the IR->VIS matrix transposed, as the LLCM authors' script does)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="results/eval", help="folder for results.json and cmc.png")
    p.add_argument("--rerank", choices=["k-reciprocal", "aqe"],
                   help="re-rank (k-reciprocal: k1 20, k2 6, lambda 0.3; aqe: average query expansion, k 5); "
                        "written to results-reranked.json / cmc-reranked.png and labelled re-ranked")  # fmt: skip
    p.add_argument("--visualize", type=int, default=0, metavar="N",
                   help="write ranked-list PNGs (top 10, true matches green, false red) of N queries per "
                        "setting into OUT/ranked/")  # fmt: skip
    p.set_defaults(func=cmd_evaluate)


def _split_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a RegDB split 1..10 or 'all', got {text!r}") from None


def _trials_arg(text: str) -> list[int]:
    try:
        trials = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated trial numbers such as 0,1,2, got {text!r}"
        ) from None
    if any(t < 0 for t in trials):
        raise argparse.ArgumentTypeError(f"trial numbers are non-negative, got {text!r}")
    return trials


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .factory import count_parameters

    cfg = read_checkpoint_config(args.checkpoint)
    model = load_checkpoint(args.checkpoint)
    info = {
        "checkpoint": str(args.checkpoint),
        "family": cfg.get("family", "clipmc"),
        "architecture": model.config.name,
        "embedding_version": cfg["embedding_version"],
        "embedding_dim": model.embedding_dim,
        "image_size": list(model.config.image_size),
        "parameters": count_parameters(model),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "normalization": model.config.preprocessing().normalization,
        # CLIP-MC's compensation weight and ablations (None / [] for architectures without them)
        "mc_alpha": float(model.mc.alpha.detach()) if getattr(model, "mc", None) is not None else None,
        "ablate": list(getattr(model.config, "ablate", ())),
        "metadata": cfg.get("metadata", {}),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available on this machine")
    return name


def _open_dataset(dataset: str, root: str | None, split: int | None = None, vis2ir: str | None = None):
    from .data import load_dataset

    layout = _layout(dataset, root)
    kw: dict[str, object] = {"split": split} if split is not None and layout == "regdb" else {}
    if vis2ir is not None and layout == "llcm":
        kw["vis2ir"] = vis2ir
    return load_dataset(dataset, root, **kw)


def _layout(dataset: str, root: str | None) -> str:
    from .data import DATASETS, detect_layout

    return dataset.lower() if dataset.lower() in DATASETS else detect_layout(dataset)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--image-size {text!r}: expected H,W such as 288,144") from None
    return h, w


def cmd_train(args: argparse.Namespace) -> int:
    """Train any registered architecture with its own recipe (model.registry): the family comes from
    --model or the config file's "model" (CLIP-MC's vit-b-16 by default)."""
    from .data.selection import holdout_split
    from .registry import family_of_name, get_architecture
    from .seeding import deterministic_mode, seed_everything

    file_options = _read_json_options(args.config) if args.config else {}
    recipe = get_architecture(family_of_name(args.model or file_options.get("model"))).recipe
    overrides = {
        "model": args.model,
        "pretrained": args.pretrained,
        "image_size": _parse_size(args.image_size),
        "epochs": args.epochs,
        "workers": args.workers,
        "seed": args.seed,
        "deterministic": args.deterministic,
        "ablate": args.ablate,
        "selection": args.selection,
        "holdout": args.holdout,
        "eval_every": args.eval_every,
    }
    cfg = (
        recipe.RecipeConfig.from_file(args.config, **overrides)
        if args.config
        else recipe.RecipeConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    )
    if cfg.pretrained in ("none", ""):
        cfg.pretrained = None
    device = resolve_device(args.device)
    dataset = _open_dataset(args.dataset, args.data_root, args.split)
    log.info("%s", dataset.summary())
    if cfg.selection == "val":
        # best/ is chosen on identities held out of training, never on the test identities.
        split = holdout_split(dataset, cfg.holdout, cfg.seed, trials=max(1, cfg.eval_trials))
        train, num_classes, description = split.train, split.num_classes, split.description
        validation = split.validation
        log.info("selection on %s; training on %d identities", description, num_classes)
    else:
        train, num_classes, validation = dataset.train, dataset.num_classes, None
        description = "none: every training identity trained on, last epoch kept"
    evaluate = None
    if validation is not None:
        val = validation

        def evaluate(m) -> dict[str, float]:
            results = evaluate_model(m, val, device=device, workers=0, progress=False)
            return results.settings["val"].mean

    info = {"name": dataset.name, "root": str(dataset.root), "num_classes": num_classes,
            "selection_split": description}  # fmt: skip
    with deterministic_mode(cfg.deterministic):
        seed_everything(cfg.seed)  # before the model is built: it fixes the initial weights
        result = recipe.train(cfg, train, num_classes, args.out, device=device, evaluate=evaluate,
                              dataset_info=info, selection_split=description, resume=args.resume)  # fmt: skip
    print(json.dumps({"out": result["out"], "best": result["best"]}, indent=2))
    return 0


def _read_json_options(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: training config not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config is a JSON object of options")
    return data


def evaluate_model(model, dataset, settings=None, trials=None, *, device="cpu", flip=False, batch_size=64,
                   workers=0, progress=True, rerank=None, on_ranked=None):  # fmt: skip
    """Run the dataset's protocol settings with the model's `embed` as the feature extractor."""
    from .features import extract_features
    from .protocols import evaluate

    model.to(device)

    def extract(records):
        return extract_features(model, records, device=device, batch_size=batch_size, workers=workers, flip=flip,
                                progress=progress)  # fmt: skip

    return evaluate(
        dataset, extract, settings=settings, trials=trials, progress=progress, rerank=rerank, on_ranked=on_ranked
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, read_checkpoint_config
    from .factory import build_model
    from .protocols import merge_results, plot_cmc, write_results_json
    from .rerank import RerankConfig
    from .visualize import RankedListWriter

    device = resolve_device(args.device)
    if args.visualize < 0:
        raise CLIError("--visualize N needs N >= 0")
    rerank = RerankConfig(kind=args.rerank) if args.rerank else None
    out = Path(args.out)
    writer = None
    trials = args.trials
    layout = _layout(args.dataset, args.data_root)
    splits: list[int | None] = [None]
    if layout == "regdb":
        splits = list(range(1, 11)) if args.split == "all" else [args.split]
    runs = []
    versions: dict[int | None, str] = {}
    checkpoints: dict[int | None, dict] = {}
    loaded = None
    for split in splits:
        ckpt = args.checkpoint.format(split=split) if split is not None else args.checkpoint
        if ckpt != loaded:  # a checkpoint without {split} (or "openai") serves every split: load it once
            if ckpt == "openai":
                model = build_model("vit-b-16", pretrained="openai")
                version = model.embedding_version
                record = {"path": "openai", "selection": "zero-shot CLIP weights, nothing selected"}
            else:
                model = load_checkpoint(ckpt)
                ckpt_cfg = read_checkpoint_config(ckpt)
                version = ckpt_cfg["embedding_version"]  # verified by load_checkpoint
                meta = ckpt_cfg.get("metadata", {})
                record = {"path": str(Path(ckpt).resolve()), "epoch": meta.get("epoch"),
                          "selection": meta.get("selection"), "ablate": list(getattr(model.config, "ablate", ())),
                          "weights_sha256": ckpt_cfg["weights_sha256"]}  # fmt: skip
            loaded = ckpt
        versions[split] = version
        checkpoints[split] = record
        dataset = _open_dataset(args.dataset, args.data_root, split, args.llcm_vis2ir)
        settings = [args.mode] if args.mode else None
        if args.visualize and writer is None:
            rules = {name: dataset.setting(name).rule for name in dataset.settings}
            writer = RankedListWriter(out / "ranked", args.visualize, rules)
        run = evaluate_model(
            model,
            dataset,
            settings,
            trials,
            device=device,
            flip=args.flip,
            batch_size=args.batch_size,
            workers=args.workers,
            rerank=rerank,
            on_ranked=writer,
        )
        runs.append(run)
    results = merge_results(runs) if len(runs) > 1 else runs[0]
    # One version, or (one model per RegDB split) the version of each split's model.
    distinct = set(versions.values())
    embedding_version = distinct.pop() if len(distinct) == 1 else {str(k): v for k, v in versions.items()}
    # The checkpoint(s) evaluated, with how each was chosen (best/ records its validation selection).
    evaluated = checkpoints[splits[0]] if len(splits) == 1 else {str(k): v for k, v in checkpoints.items()}
    extra = {"checkpoint": args.checkpoint, "checkpoint_info": evaluated, "flip": args.flip,
             "embedding_version": embedding_version}  # fmt: skip
    if layout == "llcm":
        extra["llcm_vis2ir"] = args.llcm_vis2ir
    # Re-ranked numbers get their own files: they are never set beside plain ones (PROTOCOLS.md).
    suffix = "-reranked" if rerank else ""
    write_results_json(results, out / f"results{suffix}.json", extra)
    plot_cmc(results, out / f"cmc{suffix}.png")
    print(results.table())
    print(f"\nwrote {out / f'results{suffix}.json'} and {out / f'cmc{suffix}.png'}")
    if writer is not None:
        print(f"wrote {len(writer.written)} ranked-list pictures under {out / 'ranked'}")
    return 0
