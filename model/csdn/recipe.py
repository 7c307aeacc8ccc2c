"""CSDN's three-stage training recipe (DESIGN.md section 10), on the project's datasets and sampler.

    stage 1  prompts   only the two prompt learners train: bidirectional SupCon between the frozen
                       image features (attention-pool projection, embedded once) and the text features
                       of each image's identity and modality; Adam 3e-4, wd 1e-4, cosine, 60 epochs
    stage 2  fusion    only the SII fusion trains: bidirectional SupCon between the fused text feature
                       of each identity and the frozen image features; same optimiser and schedule
    stage 3  encoder   the fused text features of all identities are computed once and frozen, with the
                       prompts, fusion and text tower; the stems, shared layers, attention pool, GeM,
                       BNs (Adam 3e-4) and classifiers (x2) train with, per batch of 8 ids x (4 + 4):
                       CE(both classifiers) + MSEL(both features) + 0.15 x WRT triplet(both)
                       + 0.05 x CE(visible proj @ T^T) + 0.10 x CE(infrared proj @ T^T);
                       wd 5e-4, linear warm-up from x0.01 over 10 epochs, x0.1 at 40 and 70, 120 epochs

    out/
      last/ best/       inference checkpoints; with selection "val" best/ is the stage-3 epoch with the
                        best mAP on identities held out of training (model.data.selection), with "last"
                        the final epoch: never a checkpoint chosen on test identities
      train_log.csv     one row per epoch of every stage (column `stage`)

`--resume` is not supported for this recipe (a run restarts from stage 1): it says so.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.records import INFRARED, VISIBLE, Record
from ..recipe_options import RecipeOptions
from ..registry import resolve_config
from ..sampler import IdentityModalitySampler
from ..trainer import append_csv_row, evaluation_due, save_and_select
from .config import CSDNConfig
from .data import PlainImages, TwoViewTrainImages, reseed_worker
from .losses import msel, supcon, weighted_triplet
from .network import CSDN

log = logging.getLogger(__name__)

EvalFn = Callable[[Any], dict[str, float]]


@dataclass
class CSDNTrainConfig(RecipeOptions):
    """Training options (JSON file or command line); defaults are the published ones."""

    model: str = "csdn-rn50"
    pretrained: str | None = "openai"
    image_size: tuple[int, int] | None = None
    sii: str | None = None  # "paper" (default of the config) or "code"
    seed: int = 0
    deterministic: bool = False  # one CPU thread, deterministic algorithms (model.seeding)
    selection: str = "val"  # "val": best/ on held-out training identities; "last": train on all, keep last/
    holdout: float = 0.1  # RegDB/LLCM: share of training identities held out for selection (seeded)
    workers: int = 4
    amp: bool = True
    num_ids: int = 8
    num_per_modality: int = 4
    feature_batch_size: int = 64  # stages 1-2: embedding the training images once
    # stages 1 and 2 (timm cosine schedule with linear warm-up, per epoch)
    stage1_epochs: int = 60
    stage2_epochs: int = 60
    stage1_batch_size: int = 32
    stage2_batch_size: int = 64
    stage1_lr: float = 3e-4
    stage2_lr: float = 3e-4
    stage12_weight_decay: float = 1e-4
    stage12_warmup_epochs: int = 5
    stage12_warmup_lr: float = 1e-5
    stage12_lr_min: float = 1e-6
    # stage 3
    epochs: int = 120
    lr: float = 3e-4
    classifier_lr_factor: float = 2.0
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: tuple[int, ...] = (40, 70)
    gamma: float = 0.1
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {
            "id": 1.0,
            "id_proj": 1.0,
            "msel": 1.0,
            "msel_proj": 1.0,
            "triplet": 0.15,
            "triplet_proj": 0.15,
            "i2t_visible": 0.05,
            "i2t_infrared": 0.10,
        }
    )
    max_steps_per_epoch: int | None = None
    eval_every: int = 5
    eval_trials: int = 1

    KIND = "CSDN training"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training config") -> CSDNTrainConfig:
        cfg = cls.construct(data, source)
        cfg.milestones = tuple(cfg.milestones)
        if "loss_weights" in data:
            extra = sorted(set(data["loss_weights"]) - set(cls().loss_weights))
            if extra:
                raise ValueError(f"{source}: unknown CSDN loss weight(s) {extra}")
            cfg.loss_weights = {**cls().loss_weights, **data["loss_weights"]}
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RecipeConfig = CSDNTrainConfig  # the registry's name for a recipe's options


def build_for_training(cfg: CSDNTrainConfig, num_classes: int) -> CSDN:
    """The network with classifiers and prompt learners for `num_classes` training identities."""
    arch, config = resolve_config(cfg.model, family="csdn", image_size=cfg.image_size, sii=cfg.sii,
                                  num_classes=num_classes)  # fmt: skip
    return arch.build(config, cfg.pretrained)


# -- what each stage trains -------------------------------------------------------------------------------
def trainable_groups(model: CSDN, stage: int) -> list[list[torch.nn.Parameter]]:
    """The parameter groups a stage optimises; every other parameter is frozen for that stage."""
    if stage == 1:
        return [model.prompt_parameters()]
    if stage == 2:
        return [model.fusion_parameters()]
    if stage == 3:
        return [model.image_encoder_parameters(), model.classifier_parameters()]
    raise ValueError(f"CSDN has stages 1, 2 and 3, not {stage}")


def set_stage(model: CSDN, stage: int) -> list[list[torch.nn.Parameter]]:
    """Freeze everything, then unfreeze the stage's groups (returned)."""
    groups = trainable_groups(model, stage)
    for p in model.parameters():
        p.requires_grad_(False)
    for group in groups:
        for p in group:
            p.requires_grad_(True)
    return groups


def stage12_optimizer(model: CSDN, stage: int, cfg: CSDNTrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam on the stage's group, with timm's cosine schedule and linear warm-up (stepped per epoch)."""
    from timm.scheduler import CosineLRScheduler

    (params,) = set_stage(model, stage)
    lr = cfg.stage1_lr if stage == 1 else cfg.stage2_lr
    epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=cfg.stage12_weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(epochs, 1),
        lr_min=cfg.stage12_lr_min,
        warmup_t=cfg.stage12_warmup_epochs,
        warmup_lr_init=cfg.stage12_warmup_lr,
        cycle_limit=1,
        t_in_epochs=True,
    )
    return optimizer, scheduler


def stage3_optimizer(model: CSDN, cfg: CSDNTrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam: image encoder at lr, classifiers at lr x 2; warm-up then step decay (per epoch)."""
    encoder, classifiers = set_stage(model, 3)
    optimizer = torch.optim.Adam(
        [
            {"params": encoder, "lr": cfg.lr, "name": "image_encoder"},
            {"params": classifiers, "lr": cfg.lr * cfg.classifier_lr_factor, "name": "classifiers"},
        ],
        weight_decay=cfg.weight_decay,
    )

    def factor(epoch: int) -> float:
        warm = 1.0
        if epoch < cfg.warmup_epochs:
            alpha = epoch / cfg.warmup_epochs
            warm = cfg.warmup_factor * (1 - alpha) + alpha
        return warm * cfg.gamma ** bisect.bisect_right(list(cfg.milestones), epoch)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- stages 1 and 2 ------------------------------------------------------------------------------------------
@torch.no_grad()
def image_features(model: CSDN, records: Sequence[Record], device: torch.device, batch_size: int = 64,
                   workers: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(attention-pool features [N, D], labels [N], modality [N]) of the unaugmented training images."""
    loader = DataLoader(PlainImages(records, model.config.preprocessing()), batch_size=batch_size,
                        num_workers=workers)  # fmt: skip
    was_training = model.training
    model.eval()
    feats, labels, mods = [], [], []
    for images, y, m in loader:
        feats.append(model.image_proj(images.to(device), m.to(device)).float())
        labels.append(y.to(device))
        mods.append(m.to(device))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels), torch.cat(mods)


def stage1_step(model: CSDN, feats: torch.Tensor, labels: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> dict[str, float]:  # fmt: skip
    """One prompt step on a batch of visible (`vis`) and infrared (`ir`) feature indices."""
    text = torch.cat([model.text_features(labels[vis], VISIBLE), model.text_features(labels[ir], INFRARED)])
    image = torch.cat([feats[vis], feats[ir]])
    target = torch.cat([labels[vis], labels[ir]])
    i2t, t2i = supcon(image, text, target, target), supcon(text, image, target, target)
    return _step(optimizer, {"i2t": i2t, "t2i": t2i})


def stage2_step(model: CSDN, feats: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> dict[str, float]:  # fmt: skip
    """One fusion step on a batch of feature indices (both modalities)."""
    text = model.fused_text_features(labels[idx])
    image, target = feats[idx], labels[idx]
    i2t, t2i = supcon(image, text, target, target), supcon(text, image, target, target)
    return _step(optimizer, {"i2t": i2t, "t2i": t2i})


def _step(optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    total = sum(terms.values())
    if not torch.isfinite(total):
        raise FloatingPointError(f"loss became {float(total)}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {**{k: float(v.detach()) for k, v in terms.items()}, "total": float(total.detach())}


# -- stage 3 ---------------------------------------------------------------------------------------------
@torch.no_grad()
def identity_text_features(model: CSDN, batch_size: int = 64) -> torch.Tensor:
    """The fused text feature of every training identity [num_classes, D], computed once (eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels = torch.arange(model.config.num_classes, device=device)
    out = torch.cat([model.fused_text_features(chunk) for chunk in labels.split(batch_size)])
    model.train(was_training)
    return out.float()


def stage3_batch(view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor,
                 modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:  # fmt: skip
    """The network's batch [visible view 1; visible view 2; infrared], its labels and modality, and
    the counts (n visible, n infrared)."""
    vis, ir = modality == VISIBLE, modality == INFRARED
    nv, ni = int(vis.sum()), int(ir.sum())
    images = torch.cat([view1[vis], view2[vis], view1[ir]])
    y = torch.cat([labels[vis], labels[vis], labels[ir]])
    m = torch.cat([modality[vis], modality[vis], modality[ir]])
    return images, y, m, nv, ni


def stage3_losses(model: CSDN, text: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                  modality: torch.Tensor, nv: int, ni: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """Every stage-3 loss term (unweighted) of one batch built by `stage3_batch`."""
    out = model(images, modality)
    one = torch.cat([torch.arange(nv), torch.arange(2 * nv, 2 * nv + ni)]).to(images.device)  # view 1 + IR
    proj = out.proj.float()
    return {
        "id": F.cross_entropy(out.logits.float(), labels),
        "id_proj": F.cross_entropy(out.logits_proj.float(), labels),
        "triplet": weighted_triplet(out.features, labels),
        "triplet_proj": weighted_triplet(out.proj, labels),
        "msel": msel(out.features[one], labels[one], modality[one]),
        "msel_proj": msel(out.proj[one], labels[one], modality[one]),
        "i2t_visible": F.cross_entropy(proj[:nv] @ text.t(), labels[:nv]),
        "i2t_infrared": F.cross_entropy(proj[2 * nv :] @ text.t(), labels[2 * nv :]),
    }


# -- the run ----------------------------------------------------------------------------------------------
def train(
    cfg: CSDNTrainConfig,
    train_records: Sequence[Record],
    num_classes: int,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    evaluate: EvalFn | None = None,
    dataset_info: dict[str, Any] | None = None,
    selection_split: str = "none: every training identity trained on, last epoch kept",
    resume: bool = False,
    model: CSDN | None = None,
) -> dict[str, Any]:
    """Run the three stages (the registry's recipe entry point); returns {"history", "out", "best"}.

    Args:
        cfg: the recipe's options.
        train_records: training records, labels 0..num_classes-1.
        num_classes: training identities (classifiers and prompt learners).
        out_dir: where last/, best/ and train_log.csv go.
        device: torch device.
        evaluate: model -> metrics on held-out identities (selection "val"), or None.
        dataset_info, selection_split: recorded in the checkpoints' metadata.
        resume: not supported by this recipe (ValueError).
        model: a CSDN with `num_classes` classifiers; by default built from cfg.model / cfg.pretrained.
    """
    if resume:
        raise ValueError("the CSDN recipe cannot resume a run (its stages 1-2 state is not saved): start it again")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_for_training(cfg, num_classes)
    if model.config.num_classes != num_classes:
        raise ValueError(f"the model has {model.config.num_classes} classes, the training set {num_classes}")
    model.to(dev)
    history: list[dict[str, Any]] = []

    def log_row(row: dict[str, Any]) -> None:
        history.append(row)
        append_csv_row(out / "train_log.csv", row)
        log.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    feats, labels, mods = image_features(model, train_records, dev, cfg.feature_batch_size, cfg.workers)
    vis_idx, ir_idx = (mods == VISIBLE).nonzero().squeeze(1), (mods == INFRARED).nonzero().squeeze(1)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    for stage, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
        optimizer, scheduler = stage12_optimizer(model, stage, cfg)
        model.train()
        batch = cfg.stage1_batch_size if stage == 1 else cfg.stage2_batch_size
        for epoch in range(epochs):
            t0 = time.time()
            scheduler.step(epoch)
            sums: dict[str, float] = defaultdict(float)
            if stage == 1:
                pv = vis_idx[torch.randperm(len(vis_idx), generator=gen).to(dev)]
                pi = ir_idx[torch.randperm(len(ir_idx), generator=gen).to(dev)]
                steps = max(1, min(len(pv), len(pi)) // batch)
            else:
                perm = torch.randperm(len(feats), generator=gen).to(dev)
                steps = max(1, len(perm) // batch)
            if cfg.max_steps_per_epoch:
                steps = min(steps, cfg.max_steps_per_epoch)
            for s in range(steps):
                window = slice(s * batch, (s + 1) * batch)
                if stage == 1:
                    terms = stage1_step(model, feats, labels, pv[window], pi[window], optimizer)
                else:
                    terms = stage2_step(model, feats, labels, perm[window], optimizer)
                for k, v in terms.items():
                    sums[k] += v
            row = {"stage": stage, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            row.update({k: v / steps for k, v in sums.items()})
            row["seconds"] = round(time.time() - t0, 2)
            log_row(row)

    text = identity_text_features(model).to(dev)
    optimizer, scheduler = stage3_optimizer(model, cfg)
    sampler = IdentityModalitySampler(train_records, cfg.num_ids, cfg.num_per_modality, seed=cfg.seed)
    loader = DataLoader(
        TwoViewTrainImages(train_records, model.config.preprocessing(), seed=cfg.seed),
        batch_sampler=sampler,
        num_workers=cfg.workers,
        worker_init_fn=reseed_worker if cfg.workers else None,
        pin_memory=dev.type == "cuda",
    )
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = cfg.loss_weights
    metrics: dict[str, float] = {}
    best: dict[str, Any] = {}
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.train()
        sampler.set_epoch(epoch)
        steps = len(sampler) if not cfg.max_steps_per_epoch else min(len(sampler), cfg.max_steps_per_epoch)
        sums = defaultdict(float)
        row = {"stage": 3, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        n = 0
        for step, (view1, view2, y, m) in enumerate(loader):
            if step >= steps:
                break
            images, y3, m3, nv, ni = stage3_batch(view1, view2, y, m)
            images, y3, m3 = images.to(dev, non_blocking=True), y3.to(dev), m3.to(dev)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                terms = stage3_losses(model, text, images, y3, m3, nv, ni)
            total = sum(weights[k] * v for k, v in terms.items())
            if not torch.isfinite(total):
                raise FloatingPointError(f"loss became {float(total)} at stage 3 epoch {epoch + 1} step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            for k, v in terms.items():
                sums[k] += float(v.detach())
            sums["total"] += float(total.detach())
            n += 1
        scheduler.step()
        row.update({k: v / max(n, 1) for k, v in sums.items()})
        last = epoch + 1 == cfg.epochs
        metrics = {}
        if evaluate and evaluation_due(epoch, cfg.epochs, cfg.eval_every):
            metrics = evaluate(model)
            row.update({f"eval_{k}": v for k, v in metrics.items()})
        row["seconds"] = round(time.time() - t0, 2)
        log_row(row)
        meta = {"epoch": epoch + 1, "training_args": cfg.to_dict(), "dataset": dataset_info or {}, "metrics": metrics,
                "recipe": "csdn three-stage"}  # fmt: skip
        best = save_and_select(model, out, meta, metrics, best, epoch=epoch + 1, last=last,
                               validated=evaluate is not None, selection_split=selection_split)  # fmt: skip
    model.eval()
    return {"history": history, "out": str(out), "best": best}


__all__ = [
    "CSDNConfig",
    "CSDNTrainConfig",
    "RecipeConfig",
    "build_for_training",
    "identity_text_features",
    "set_stage",
    "stage1_step",
    "stage2_step",
    "stage3_batch",
    "stage3_losses",
    "stage3_optimizer",
    "stage12_optimizer",
    "train",
]
