"""MIP's training recipe (DESIGN.md section 11), on the project's datasets, sampler and augmentation.

One stage; every parameter of the network trains except the BN necks' biases (frozen, BNNeck):

    loss   = ID + triplet + [epoch >= 10] 0.5 x MSEL + [iael] 0.5 x IAEL
      ID       0.5 x CE(global) + 0.5 x mean_j CE(local_j)       (classifiers on the BN-necked features)
      triplet  the same weighting of the soft-margin batch-hard triplet on the features before the necks
      MSEL     the same weighting of the modality-shared enhancement loss, from epoch `msel_epoch`
      IAEL     mean over prompted layers of CE(classifier_l(BN(mean of that layer's instance prompts)))
    SGD momentum 0.9, lr 0.01, weight decay 1e-4; learning-rate multipliers by parameter group
      (MIP.parameter_group): prompt generator (and its seed tokens) x15, modality prompt embeddings x5,
      biases x2, the rest x1
    "cosine-refine": timm's CosineLRScheduler, cycles of 30 epochs each peaking at 0.1 x the previous,
      5 warm-up epochs from 0.01 x lr, floor 1e-5 x lr, stepped per epoch; 80 epochs
    batches of 8 identities x (4 visible + 4 infrared); augmentation: pad 10 + crop, flip, random
      grayscale 0.5 on visible crops (infrared crops are grey already), random erasing 0.5
    camera: the SIE index of each crop's camera; with probability `unknown_camera_p` it is replaced by
      the unknown-camera index, so that row is learned for crops without a (known) camera

iael: True (the paper, default) or False (the released train.sh, MODEL.IPIL False). Differences from
the release stated, not hidden: MIP's colour jitter / blur is not reproduced (the project's
TrainTransform has none), and the camera dropout to the unknown index is ours (the release has no
unknown camera).

    out/
      last/ best/       inference checkpoints; with evaluate (selection "val") best/ is the epoch with the
                        best mAP on identities held out of training, else the last epoch
      train_log.csv     one row per epoch
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.records import Record
from ..recipe_options import RecipeOptions
from ..registry import resolve_config
from ..sampler import IdentityModalitySampler
from ..trainer import append_csv_row, evaluation_due, save_and_select
from ..transforms import TrainTransform
from .config import MIPConfig
from .losses import branch_mean, msel, soft_margin_triplet
from .network import MIP

log = logging.getLogger(__name__)

EvalFn = Callable[[Any], dict[str, float]]
LR_GROUPS = ("base", "bias", "generator", "prompts")


@dataclass
class MIPTrainConfig(RecipeOptions):
    """Training options (JSON file or command line); defaults are the published ones."""

    model: str = "mip-vit-b-16"
    pretrained: str | None = "timm"
    image_size: tuple[int, int] | None = None
    mode: str | None = None  # "paper" (the config's default) or "code"
    seed: int = 0
    deterministic: bool = False
    selection: str = "val"
    holdout: float = 0.1
    workers: int = 4
    amp: bool = True
    num_ids: int = 8
    num_per_modality: int = 4
    epochs: int = 80
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    generator_lr_factor: float = 15.0
    prompt_lr_factor: float = 5.0
    cosine_epochs: int = 30
    cycle_decay: float = 0.1
    warmup_epochs: int = 5
    warmup_factor: float = 0.01
    min_lr_factor: float = 1e-5
    msel_epoch: int = 10
    msel_weight: float = 0.5
    iael: bool = True
    iael_weight: float = 0.5
    unknown_camera_p: float = 0.1
    gray_p: float = 0.5
    erase_p: float = 0.5
    max_steps_per_epoch: int | None = None
    eval_every: int = 5
    eval_trials: int = 1

    KIND = "MIP training"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training config") -> MIPTrainConfig:
        cfg = cls.construct(data, source)
        if not 0 <= cfg.unknown_camera_p < 1:
            raise ValueError(f"{source}: unknown_camera_p must be in [0, 1), got {cfg.unknown_camera_p}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RecipeConfig = MIPTrainConfig  # the registry's name for a recipe's options


def camera_names(records: Sequence[Record]) -> tuple[str, ...]:
    """The training cameras' names, ordered by camera number: the checkpoint's camera map."""
    return tuple(str(c) for c in sorted({r.camid for r in records}))


def build_for_training(cfg: MIPTrainConfig, num_classes: int, cameras: Sequence[str]) -> MIP:
    """The network with classifiers for `num_classes` identities and an SIE row per camera (+ unknown)."""
    arch, config = resolve_config(cfg.model, family="mip", image_size=cfg.image_size, mode=cfg.mode,
                                  num_classes=num_classes, cameras=tuple(cameras), unknown_camera=True)  # fmt: skip
    return arch.build(config, cfg.pretrained)


# -- what trains, at which learning rate ----------------------------------------------------------------------
def parameter_groups(model: MIP) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """{group: [(name, parameter)]} of the trainable parameters (the necks' biases are frozen)."""
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {g: [] for g in LR_GROUPS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[model.parameter_group(name)].append((name, p))
    return groups


def make_optimizer(model: MIP, cfg: MIPTrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """SGD over the four learning-rate groups and the cosine-refine schedule (stepped per epoch)."""
    from timm.scheduler import CosineLRScheduler

    factor = {"base": 1.0, "bias": cfg.bias_lr_factor, "generator": cfg.generator_lr_factor,
              "prompts": cfg.prompt_lr_factor}  # fmt: skip
    groups = parameter_groups(model)
    optimizer = torch.optim.SGD(
        [{"params": [p for _, p in groups[g]], "lr": cfg.lr * factor[g], "name": g} for g in LR_GROUPS if groups[g]],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(cfg.cosine_epochs, 1),
        lr_min=cfg.min_lr_factor * cfg.lr,
        cycle_decay=cfg.cycle_decay,
        cycle_limit=max(1, -(-cfg.epochs // max(cfg.cosine_epochs, 1))),
        warmup_t=cfg.warmup_epochs,
        warmup_lr_init=cfg.warmup_factor * cfg.lr,
        t_in_epochs=True,
    )
    return optimizer, scheduler


# -- data ------------------------------------------------------------------------------------------------------
class TrainImages(Dataset):
    """Record -> (augmented tensor, label, modality, camera index)."""

    def __init__(self, records: Sequence[Record], config: MIPConfig, cfg: MIPTrainConfig) -> None:
        self.records = records
        self.cameras = config.camera_map
        pre = config.preprocessing()
        self.transform = TrainTransform((pre.height, pre.width), channel_p=0.0, gray_p=cfg.gray_p,
                                        erase_p=cfg.erase_p, seed=cfg.seed, preprocessing=pre)  # fmt: skip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        r = self.records[i]
        return self.transform(r.path, r.modality), r.pid, r.modality, self.cameras.index(r.camid)

    def reseed(self, seed: int) -> None:
        self.transform.rng = np.random.default_rng(seed)


def _reseed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**31)


def drop_cameras(camera: torch.Tensor, unknown: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each crop's camera index replaced by the unknown index with probability p."""
    if p <= 0:
        return camera
    mask = torch.rand(camera.shape, generator=generator) < p
    return torch.where(mask.to(camera.device), torch.full_like(camera, unknown), camera)


def losses(model: MIP, images: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, camera: torch.Tensor,
           *, use_msel: bool, use_iael: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """The unweighted loss terms of one batch."""
    out = model(images, modality, camera)
    if out.logits is None or out.instance_logits is None:
        raise ValueError("the MIP model has no classifiers (num_classes = 0)")
    terms = {
        "id": branch_mean([F.cross_entropy(s.float(), labels) for s in out.logits]),
        "triplet": branch_mean([soft_margin_triplet(f, labels) for f in out.features]),
    }
    if use_msel:
        terms["msel"] = branch_mean([msel(f, labels, modality) for f in out.features])
    if use_iael:
        terms["iael"] = torch.stack([F.cross_entropy(s.float(), labels) for s in out.instance_logits]).mean()
    return terms


# -- the run ---------------------------------------------------------------------------------------------------
def train(
    cfg: MIPTrainConfig,
    train_records: Sequence[Record],
    num_classes: int,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    evaluate: EvalFn | None = None,
    dataset_info: dict[str, Any] | None = None,
    selection_split: str = "none: every training identity trained on, last epoch kept",
    resume: bool = False,
    model: MIP | None = None,
) -> dict[str, Any]:
    """Train MIP (the registry's recipe entry point); returns {"history", "out", "best"}.

    Args:
        cfg: the recipe's options.
        train_records: training records, labels 0..num_classes-1; their camera numbers name the SIE rows.
        num_classes: training identities.
        out_dir: where last/, best/ and train_log.csv go.
        device: torch device.
        evaluate: model -> metrics on held-out identities (selection "val"), or None.
        dataset_info, selection_split: recorded in the checkpoints' metadata.
        resume: not supported by this recipe (ValueError).
        model: a MIP with `num_classes` classifiers; by default built from cfg with the records' cameras.
    """
    if resume:
        raise ValueError("the MIP recipe cannot resume a run (no optimiser state is saved): start it again")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_for_training(cfg, num_classes, camera_names(train_records))
    if model.config.num_classes != num_classes:
        raise ValueError(f"the model has {model.config.num_classes} classes, the training set {num_classes}")
    model.to(dev)
    optimizer, scheduler = make_optimizer(model, cfg)
    sampler = IdentityModalitySampler(train_records, cfg.num_ids, cfg.num_per_modality, seed=cfg.seed)
    loader = DataLoader(
        TrainImages(train_records, model.config, cfg),
        batch_sampler=sampler,
        num_workers=cfg.workers,
        worker_init_fn=_reseed_worker if cfg.workers else None,
        pin_memory=dev.type == "cuda",
    )
    unknown = model.config.camera_map.unknown_index
    gen = torch.Generator().manual_seed(cfg.seed)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = {"id": 1.0, "triplet": 1.0, "msel": cfg.msel_weight, "iael": cfg.iael_weight}
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    for epoch in range(cfg.epochs):
        t0 = time.time()
        scheduler.step(epoch)
        model.train()
        sampler.set_epoch(epoch)
        steps = len(sampler) if not cfg.max_steps_per_epoch else min(len(sampler), cfg.max_steps_per_epoch)
        sums: dict[str, float] = defaultdict(float)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        n = 0
        for step, (images, y, m, cam) in enumerate(loader):
            if step >= steps:
                break
            if unknown is not None:
                cam = drop_cameras(cam, unknown, cfg.unknown_camera_p, gen)
            images, y, m, cam = images.to(dev, non_blocking=True), y.to(dev), m.to(dev), cam.to(dev)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                terms = losses(model, images, y, m, cam, use_msel=epoch >= cfg.msel_epoch, use_iael=cfg.iael)
            total = sum(weights[k] * v for k, v in terms.items())
            if not torch.isfinite(total):
                raise FloatingPointError(f"loss became {float(total)} at epoch {epoch + 1} step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            for k, v in terms.items():
                sums[k] += float(v.detach())
            sums["total"] += float(total.detach())
            n += 1
        row.update({k: v / max(n, 1) for k, v in sums.items()})
        last = epoch + 1 == cfg.epochs
        metrics: dict[str, float] = {}
        if evaluate and evaluation_due(epoch, cfg.epochs, cfg.eval_every):
            metrics = evaluate(model)
            row.update({f"eval_{k}": v for k, v in metrics.items()})
        row["seconds"] = round(time.time() - t0, 2)
        history.append(row)
        append_csv_row(out / "train_log.csv", row)
        log.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        meta = {"epoch": epoch + 1, "training_args": cfg.to_dict(), "dataset": dataset_info or {}, "metrics": metrics,
                "recipe": "mip" + ("" if cfg.iael else " (iael off)")}  # fmt: skip
        best = save_and_select(model, out, meta, metrics, best, epoch=epoch + 1, last=last,
                               validated=evaluate is not None, selection_split=selection_split)  # fmt: skip
    model.eval()
    return {"history": history, "out": str(out), "best": best}


__all__ = ["MIPConfig", "MIPTrainConfig", "RecipeConfig", "build_for_training", "camera_names", "drop_cameras",
           "losses", "make_optimizer", "parameter_groups", "train"]  # fmt: skip
