"""One-stage CLIP-MC training (DESIGN.md section 4): sampler, augmentations, losses, optimiser groups,
warm-up and step schedule, mixed precision on CUDA, a checkpoint each epoch plus the best on the
validation identities, resume, a progress bar with the losses, CSV and TensorBoard logs.

`best/` is chosen on validation identities only (never the test set): the `evaluate` callable the CLI
passes scores a held-out set (SYSU-MM01 exp/val_id.txt; a seeded share of the RegDB/LLCM training
identities). Without it (`selection: "last"`) only `last/` is written.

    out/
      last/  best/            inference checkpoints (model.save_checkpoint); best/ records `selection`
      trainer_state.pt        optimiser, scheduler, heads, epoch, RNG states: what `--resume` restores
      train_log.csv           one row per epoch
      tensorboard/            per-step scalars
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipmc.contract import atomic_write

from .checkpoint import save_epoch_checkpoints
from .clipmc import CLIPMC, CLIPMCOutput
from .data.records import Record
from .heads import TrainingHeads
from .losses import (
    LabelSmoothingCE,
    batch_hard_triplet,
    compensation_loss,
    context_modality_loss,
    cross_modality_center_loss,
    identity_contrastive,
)
from .recipe_options import RecipeOptions
from .sampler import IdentityModalitySampler
from .transforms import TrainTransform

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"


@dataclass
class TrainConfig(RecipeOptions):
    """Training arguments; every field can come from a JSON file (`--config`) or the command line."""

    model: str = "vit-b-16"
    pretrained: str | None = "openai"
    image_size: tuple[int, int] | None = None
    epochs: int = 60
    warmup_epochs: int = 10
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    lr_encoder: float = 5e-6
    lr_heads: float = 3.5e-4
    weight_decay: float = 1e-4
    num_ids: int = 8
    num_per_modality: int = 4
    max_steps_per_epoch: int | None = None
    workers: int = 4
    amp: bool = True
    seed: int = 0
    deterministic: bool = False  # one CPU thread, deterministic algorithms, no cuDNN autotune / TF32
    ablate: tuple[str, ...] = ()  # modules removed from the architecture (config.ABLATIONS)
    alpha_init: float = 0.25  # MC alpha when training starts (0, the zero-shot init, gives MC no gradient)
    lr_alpha: float = 1e-3  # alpha's own learning rate (no weight decay)
    selection: str = "val"  # "val": best/ on validation identities; "last": train on all, keep last/
    holdout: float = 0.1  # RegDB/LLCM: share of training identities held out for selection (seeded)
    eval_every: int = 5
    eval_trials: int = 1
    label_smoothing: float = 0.1
    margin: float = 0.3
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {
            "id_cls": 0.25,
            "id_img": 0.25,
            "id_full": 0.5,
            "tri_cls": 1.0,
            "tri_img": 1.0,
            "tri_full": 1.0,
            "cross_modality": 0.5,
            "itc": 0.5,
            "compensation": 1.0,
            "modality": 0.1,
        }
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training config") -> TrainConfig:
        cfg = cls.construct(data, source)
        cfg.milestones = tuple(cfg.milestones)
        from .config import normalise_ablations

        cfg.ablate = normalise_ablations(cfg.ablate)
        if not 0 < cfg.holdout < 1:
            raise ValueError(f"{source}: holdout must be a fraction in (0, 1), got {cfg.holdout!r}")
        if "loss_weights" in data:
            cfg.loss_weights = {**cls().loss_weights, **data["loss_weights"]}
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ablate"] = list(self.ablate)
        return d


SELECTION_METRIC = "mAP"  # best/ maximises the validation mAP


def evaluation_due(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether the 0-based ``epoch`` ends with a validation: every ``eval_every`` epochs, and the last one."""
    return epoch + 1 == epochs or bool(eval_every and (epoch + 1) % eval_every == 0)


def save_and_select(model: Any, out: Path, meta: dict[str, Any], metrics: dict[str, float], best: dict[str, Any],
                    *, epoch: int, last: bool, validated: bool, selection_split: str) -> dict[str, Any]:  # fmt: skip
    """The end of an epoch of a recipe without resume state (CSDN, MIP): ``last/`` always; ``best/`` when the
    validation ``SELECTION_METRIC`` improved, or, without validation, at the last epoch (which ``last/``'s
    metadata then names as chosen too). Returns the updated best ({"epoch", **metrics})."""
    score = metrics.get(SELECTION_METRIC)
    improved = score is not None and score > best.get(SELECTION_METRIC, -math.inf)
    chosen = improved or (not validated and last)
    selection = {"split": selection_split, "metric": SELECTION_METRIC if improved else None,
                 "value": score if improved else None, "epoch": epoch}  # fmt: skip
    if not validated and last:
        meta = {**meta, "selection": selection}  # last/ is then the chosen checkpoint too
    save_epoch_checkpoints(model, out, meta, selection if chosen else None)
    return {"epoch": epoch, **metrics} if chosen else best


class TrainImages(Dataset):
    """Records -> (augmented tensor, label, modality)."""

    def __init__(self, records: Sequence[Record], transform: TrainTransform) -> None:
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        r = self.records[i]
        return self.transform(r.path, r.modality), r.pid, r.modality


def _reseed_worker(worker_id: int) -> None:
    # Each worker gets its own augmentation stream (torch seeds workers differently every epoch).
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.rng = np.random.default_rng(torch.initial_seed() % 2**32)


def lr_factor(epoch: int, warmup: int, milestones: Sequence[int], gamma: float) -> float:
    """Linear warm-up from 0.1 to 1 over `warmup` epochs, then x gamma at each milestone."""
    if epoch < warmup:
        return 0.1 + 0.9 * epoch / warmup
    return gamma ** sum(epoch >= m for m in milestones)


EvalFn = Callable[[CLIPMC], dict[str, float]]


class Trainer:
    def __init__(
        self,
        model: CLIPMC,
        train_records: Sequence[Record],
        num_classes: int,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        evaluate: EvalFn | None = None,
        dataset_info: dict[str, Any] | None = None,
        selection_split: str | None = None,
    ) -> None:
        """`evaluate` scores the model on validation identities (never the test set) and picks `best/`;
        `selection_split` names them in best/config.json's `selection` record."""
        self.model, self.cfg, self.out = model, cfg, Path(out_dir)
        self.device = torch.device(device)
        self.evaluate_fn, self.dataset_info = evaluate, dataset_info or {}
        self.selection_split = selection_split or ("validation" if evaluate else "none (last epoch)")
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        # Compensation that learns from step 0: alpha leaves its zero-shot 0 (kept if already trained).
        if model.start_training(cfg.alpha_init):
            log.info("MC alpha set to %g for training (zero-shot init is 0)", cfg.alpha_init)
        self.model.to(self.device)
        self.heads = TrainingHeads(
            model.config.vision_width, model.config.embed_dim, num_classes, model.config.text_width
        ).to(self.device)
        self.sampler = IdentityModalitySampler(train_records, cfg.num_ids, cfg.num_per_modality, seed=cfg.seed)
        transform = TrainTransform(model.config.image_size, seed=cfg.seed)
        self.loader = DataLoader(
            TrainImages(train_records, transform),
            batch_sampler=self.sampler,
            num_workers=cfg.workers,
            worker_init_fn=_reseed_worker if cfg.workers else None,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        alpha = [model.mc.alpha] if model.mc is not None else []
        heads = [p for p in [*model.head_parameters(), *self.heads.parameters()] if all(p is not a for a in alpha)]
        groups = [
            {"params": model.image_encoder_parameters(), "lr": cfg.lr_encoder, "name": "image_encoder"},
            {"params": heads, "lr": cfg.lr_heads, "name": "heads"},
        ]
        if alpha:  # its own learning rate, and no weight decay pulling it back to the inert 0
            groups.append({"params": alpha, "lr": cfg.lr_alpha, "weight_decay": 0.0, "name": "mc_alpha"})
        self.optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: lr_factor(e, cfg.warmup_epochs, cfg.milestones, cfg.gamma)
        )
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.id_loss = LabelSmoothingCE(cfg.label_smoothing)
        self.start_epoch = 0
        self.best: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.tb: Any = None  # TensorBoard writer while fit() runs

    # -- one step ---------------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch (and their weighted sum, "total")."""
        return self.forward_losses(images, labels, modality)[0]

    def forward_losses(
        self, images: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], CLIPMCOutput]:
        """Loss terms and the model output. Terms whose module is ablated are absent: no text encoder
        drops itc, compensation and modality; a shared context (no MCL) drops the context classifier."""
        cfg = self.cfg
        out = self.model(images, modality)
        h = self.heads
        terms = {
            "id_cls": self.id_loss(h.id_cls(out.f_cls), labels),
            "id_img": self.id_loss(h.id_img(out.f_img), labels),
            "id_full": self.id_loss(h.id_full(out.f_full), labels),
            "tri_cls": batch_hard_triplet(out.f_cls, labels, cfg.margin),
            "tri_img": batch_hard_triplet(out.f_img, labels, cfg.margin),
            "tri_full": batch_hard_triplet(out.f_full, labels, cfg.margin),
            "cross_modality": cross_modality_center_loss(out.f_full, labels, modality),
        }
        if out.t_orig is not None and out.t_comp is not None:
            terms["itc"] = identity_contrastive(out.f_img, out.t_orig, labels)
            terms["compensation"] = compensation_loss(out.t_comp, out.f_img, labels, modality)
        if out.contexts is not None and not self.model.config.ablated("mcl"):
            terms["modality"] = context_modality_loss(out.contexts, h.modality)
        weights = cfg.loss_weights
        terms["total"] = sum(weights.get(k, 0.0) * v for k, v in terms.items())
        return terms, out

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.heads.train()
        self.sampler.set_epoch(epoch)
        sums: dict[str, float] = defaultdict(float)
        steps = len(self.sampler)
        if self.cfg.max_steps_per_epoch:
            steps = min(steps, self.cfg.max_steps_per_epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
        n = 0
        for step, (images, labels, modality) in enumerate(self.loader):
            if step >= steps:
                break
            images = images.to(self.device, non_blocking=True)
            labels, modality = labels.to(self.device), modality.to(self.device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.use_amp):
                terms, out = self.forward_losses(images, labels, modality)
            if out.compensation is not None:  # MC's share of ||f_full||, logged per epoch
                with torch.no_grad():
                    share = out.compensation.float().norm(dim=1) / out.f_full.float().norm(dim=1).clamp_min(1e-12)
                    sums["comp_share"] += float(share.mean())
            loss = terms["total"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1} step {step}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            values = {k: v.item() for k, v in terms.items()}
            for k, v in values.items():
                sums[k] += v
            n += 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{sums['total'] / n:.3f}", id=f"{values['id_full']:.2f}", tri=f"{values['tri_full']:.2f}"
            )
            if self.tb is not None:
                for k, v in values.items():
                    self.tb.add_scalar(f"loss/{k}", v, epoch * steps + step)
        bar.close()
        return {k: v / max(n, 1) for k, v in sums.items()}

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.out / "tensorboard"))
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                t0 = time.time()
                row: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "lr_encoder": self.optimizer.param_groups[0]["lr"],
                    "lr_heads": self.optimizer.param_groups[1]["lr"],
                }
                row.update(self.train_epoch(epoch))
                self.scheduler.step()
                if self.model.mc is not None:  # the compensation's strength, every epoch
                    row["alpha"] = float(self.model.mc.alpha.detach())
                    self.tb.add_scalar("mc/alpha", row["alpha"], epoch + 1)
                    self.tb.add_scalar("mc/comp_share", row["comp_share"], epoch + 1)
                metrics: dict[str, float] = {}
                if self.evaluate_fn and evaluation_due(epoch, self.cfg.epochs, self.cfg.eval_every):
                    metrics = self.evaluate_fn(self.model)
                    row.update({f"eval_{k}": v for k, v in metrics.items()})
                    for k, v in metrics.items():
                        self.tb.add_scalar(f"eval/{k}", v, epoch + 1)
                row["seconds"] = round(time.time() - t0, 2)
                self.history.append(row)
                self._write_csv(row)
                self._save(epoch + 1, metrics)
                log.info("epoch %d/%d %s", epoch + 1, self.cfg.epochs, _fmt(row))
        finally:
            self.tb.close()
        return {"history": self.history, "best": self.best, "out": str(self.out)}

    # -- persistence ------------------------------------------------------------------------------
    def _metadata(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        # The metrics are the validation identities' (named by metrics_split), never the test set's.
        return {"epoch": epoch, "training_args": self.cfg.to_dict(), "dataset": self.dataset_info, "metrics": metrics,
                "metrics_split": self.selection_split if metrics else None}  # fmt: skip

    def _save(self, epoch: int, metrics: dict[str, float]) -> None:
        meta = self._metadata(epoch, metrics)
        if not self.evaluate_fn:
            meta["selection"] = self.selection_record(epoch, None)
        score = metrics.get(SELECTION_METRIC)
        improved = score is not None and score > self.best.get(SELECTION_METRIC, -math.inf)
        if improved:
            self.best = {"epoch": epoch, **metrics}
        # The weights are last/'s; best/'s config.json gains the record of how they were chosen.
        save_epoch_checkpoints(self.model, self.out, meta, self.selection_record(epoch, score) if improved else None)
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "heads": self.heads.state_dict(),
            "best": self.best,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "transform_rng": self.loader.dataset.transform.rng.bit_generator.state,
        }
        atomic_write(self.out / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def selection_record(self, epoch: int, value: float | None) -> dict[str, Any]:
        """How a checkpoint was chosen: {"split", "metric", "value", "epoch"} (metric None for last/)."""
        return {
            "split": self.selection_split,
            "metric": SELECTION_METRIC if value is not None else None,
            "value": value,
            "epoch": epoch,
        }

    def resume(self) -> int:
        """Restore optimiser, scheduler, heads, RNGs and epoch from `out/`; returns the next epoch."""
        from .checkpoint import load_checkpoint

        path = self.out / STATE_FILE
        if not path.is_file():
            raise ValueError(f"{path}: nothing to resume (no trainer state in {self.out})")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(load_checkpoint(self.out / "last").state_dict())
        self.model.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.heads.load_state_dict(state["heads"])
        torch.set_rng_state(state["torch_rng"])
        self.loader.dataset.transform.rng.bit_generator.state = state["transform_rng"]
        self.best, self.history = state["best"], state["history"]
        self.start_epoch = int(state["epoch"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)
        return self.start_epoch

    def _write_csv(self, row: dict[str, Any]) -> None:
        append_csv_row(self.out / "train_log.csv", row)


def append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row; when the row brings new columns (eval_* appear at the first evaluated epoch),
    rewrite the file with the widened header so every row stays aligned with it."""
    if not path.exists():
        rows, header = [], []
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    if header and all(k in header for k in row):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        return

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header + [k for k in row if k not in header])
            writer.writeheader()
            writer.writerows([*rows, row])

    atomic_write(path, write)


def _fmt(row: dict[str, Any]) -> str:
    keys = ("total", "id_full", "tri_full", "compensation", "alpha", "comp_share", "eval_R1", "eval_mAP", "seconds")
    return " ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)


# -- the registry's recipe entry point (model.registry) ---------------------------------------------
RecipeConfig = TrainConfig  # the recipe's options, as every registered recipe names them


def train(
    cfg: TrainConfig,
    train_records: Sequence[Record],
    num_classes: int,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    evaluate: EvalFn | None = None,
    dataset_info: dict[str, Any] | None = None,
    selection_split: str = "none: every training identity trained on, last epoch kept",
    resume: bool = False,
) -> dict[str, Any]:
    """CLIP-MC's one-stage recipe: build the model of `cfg` (call after seeding), then `Trainer.fit`.

    Returns {"history", "best", "out"}; `resume` continues the run in `out_dir` from its last epoch.
    """
    from .factory import build_model

    model = build_model(cfg.model, pretrained=cfg.pretrained, image_size=cfg.image_size, ablate=cfg.ablate)
    trainer = Trainer(model, train_records, num_classes, cfg, out_dir, device=device, evaluate=evaluate,
                      dataset_info=dataset_info, selection_split=selection_split)  # fmt: skip
    if resume:
        trainer.resume()
    return trainer.fit()
