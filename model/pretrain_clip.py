"""Pretrain a small open_clip CLIP on captioned synthetic crops (DESIGN.md section 13).

Why: the OpenAI weights cannot be had here, and CLIP-MC's text-guided compensation means nothing with a
random text tower. A CLIP that has learned the synthetic world's words (colours, garments, patterns,
carried objects) from ``captions.jsonl`` is the closest honest proxy. Everything is open_clip's own:
the model is ``open_clip.CLIP`` built from the architecture's open_clip config, the tokenizer is the
CLIP BPE tokenizer shipped inside open_clip, the loss is ``open_clip.ClipLoss``, the schedule
``open_clip_train.scheduler.cosine_lr``; the optimiser is AdamW with open_clip's weight-decay groups.
The weights are written as an open_clip state dict, so ``build_model(arch, pretrained=FILE)`` loads them
with the same ``open_clip.load_checkpoint`` as the openai weights.

    --out runs/synthclip.safetensors   the CLIP weights
          runs/synthclip-zeroshot.json the held-out evaluation (also printed)
          runs/synthclip-run/          state.pt (resume), train_log.csv, tensorboard/

Identities are held out by a seeded draw (``holdout``): never trained on, they measure zero-shot
attribute accuracy per modality (with chance levels) and text-to-image recall.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from clipmc.contract import MODALITY_ALIASES, atomic_write

from .config import ModelConfig, get_config
from .factory import build_clip
from .preprocess import CLIP_MEAN, CLIP_STD, resize_crop
from .synth_captions import TEMPLATES, ZERO_SHOT_ATTRIBUTES, class_prompts, partial_caption, read_captions

log = logging.getLogger(__name__)

CAPTIONS = "captions.jsonl"
MODALITIES = ("visible", "infrared")


class PretrainError(ValueError):
    """Bad pretraining input (data folder, architecture, options); the message names it."""


@dataclass
class PretrainConfig:
    """Options of one pretraining run (all recorded in the metrics JSON and the resume state)."""

    arch: str = "synth-small"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    holdout: float = 0.1  # share of identities held out for the zero-shot evaluation
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps (short runs, tests)
    threads: int | None = None  # torch threads (None: leave torch's default)
    # Share of each batch whose caption names only a random part of the crop's attributes
    # (synth_captions.partial_caption), redrawn every epoch; 0 trains on the full captions only.
    partial_captions: float = 0.5

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise PretrainError("--epochs must be >= 1 and --batch-size >= 2 (a contrastive batch needs pairs)")
        if not 0.0 < self.holdout < 1.0:
            raise PretrainError(f"--holdout must be a share in (0, 1), got {self.holdout}")
        if not 0.0 <= self.partial_captions <= 1.0:
            raise PretrainError(f"--partial-captions must be a share in [0, 1], got {self.partial_captions}")
        if self.lr <= 0 or self.warmup_steps < 0 or (self.max_steps is not None and self.max_steps < 1):
            raise PretrainError("--lr must be > 0, --warmup-steps >= 0 and --max-steps >= 1")


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(weights file, metrics JSON, run folder) of ``--out FILE``."""
    out = Path(out)
    return out, out.with_name(out.stem + "-zeroshot.json"), out.with_name(out.stem + "-run")


# --------------------------------------------------------------------------------------------------
# Data


@dataclass
class CaptionedCrops:
    """Crops held in memory as uint8 [N, H, W, 3] (the set is small) with their rows."""

    images: np.ndarray
    rows: list[dict[str, Any]]

    def batch(self, idx: Sequence[int] | np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """CLIP-normalised float [B, 3, H, W] (the same numbers as `preprocess`), optionally mirrored."""
        x = torch.from_numpy(self.images[np.asarray(idx)]).permute(0, 3, 1, 2).float().div_(255.0)
        if flip is not None and flip.any():
            x[torch.from_numpy(flip)] = x[torch.from_numpy(flip)].flip(-1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std


def load_captioned(data: str | Path, image_size: tuple[int, int], progress: bool = True) -> CaptionedCrops:
    """Read ``captions.jsonl`` and its crops (resized as `preprocess` does to the model's size)."""
    data = Path(data)
    path = data / CAPTIONS
    if not path.is_file():
        raise PretrainError(f"{data}: no {CAPTIONS} (write a captioned set with `clipmc synth --layout captions`)")
    rows = read_captions(path)
    if not rows:
        raise PretrainError(f"{path}: no rows")
    h, w = image_size
    images = np.empty((len(rows), h, w, 3), np.uint8)
    for i, row in enumerate(tqdm(rows, desc="load crops", unit="img", disable=not progress)):
        try:
            images[i] = resize_crop(data / row["path"], (h, w))
        except (OSError, ValueError) as exc:
            raise PretrainError(f"{data / row['path']}: cannot read the crop ({exc})") from None
    return CaptionedCrops(images, rows)


def holdout_ids(rows: Sequence[dict[str, Any]], share: float, seed: int) -> set[int]:
    """A seeded draw of ``share`` of the identities (at least one, at most all but one)."""
    pids = sorted({int(r["pid"]) for r in rows})
    if len(pids) < 2:
        raise PretrainError("pretraining needs at least 2 identities (one is held out for evaluation)")
    n = min(len(pids) - 1, max(1, round(share * len(pids))))
    order = np.random.default_rng(np.random.SeedSequence([seed, 17])).permutation(len(pids))
    return {pids[i] for i in order[:n]}


# --------------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def build_pretrain_model(arch: str | ModelConfig) -> tuple[torch.nn.Module, ModelConfig, Any]:
    """(open_clip CLIP, its ModelConfig, the CLIP BPE tokenizer at the text tower's context length)."""
    try:
        config = get_config(arch)
    except ValueError as exc:
        raise PretrainError(str(exc)) from None
    clip = build_clip(config)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=int(config.clip["text_cfg"]["context_length"]))
    return clip, config, tokenizer


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with open_clip's groups: no weight decay on gains, biases, embeddings and logit_scale."""

    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The CLIP's state dict as safetensors, written atomically (open_clip.load_checkpoint reads it)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


# --------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def encode_images(model: torch.nn.Module, crops: CaptionedCrops, idx: Sequence[int], batch: int = 256) -> torch.Tensor:
    out = [model.encode_image(crops.batch(idx[i : i + batch]), normalize=True) for i in range(0, len(idx), batch)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch: int = 512) -> torch.Tensor:
    chunks = [list(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return torch.cat([model.encode_text(tokenizer(chunk), normalize=True) for chunk in chunks])


@torch.no_grad()
def evaluate_zero_shot(model: torch.nn.Module, tokenizer: Any, crops: CaptionedCrops, pids: set[int]) -> dict:
    """Zero-shot attribute accuracy and text-to-image recall on the crops of ``pids``, per modality.

    Attribute prompts: per class, the mean text feature over its prompts (``class_prompts``, one per
    value of the nuisance attributes) in the crop's modality wording. Accuracy, and balanced accuracy
    (the mean per-class recall, whose chance is 1/K for any class shares). Chance: 1/K and the majority
    class share of the evaluated crops. Recall: one crop per identity and modality, its caption as the
    query; a hit is a top-K crop whose caption is the query's (identical captions of two people are
    not told apart by any model).
    """
    model.eval()
    result: dict[str, Any] = {"zero_shot": {}, "text_to_image": {}}
    for modality in MODALITIES:
        idx = [i for i, r in enumerate(crops.rows) if int(r["pid"]) in pids and r["modality"] == modality]
        if not idx:
            continue
        feats = encode_images(model, crops, idx)
        per_attr = {}
        for attribute, (field, classes, _) in ZERO_SHOT_ATTRIBUTES.items():
            prompts = class_prompts(attribute, infrared=modality == "infrared")
            class_feats = torch.stack(
                [F.normalize(encode_texts(model, tokenizer, prompts[c]).mean(0), dim=-1) for c in classes]
            )
            pred = (feats @ class_feats.T).argmax(1).numpy()
            truth = np.array([classes.index(crops.rows[i]["attributes"][field]) for i in idx])
            counts = np.bincount(truth, minlength=len(classes))
            recall = {c: float((pred[truth == i] == i).mean()) for i, c in enumerate(classes) if counts[i]}
            per_attr[attribute] = {
                "accuracy": float((pred == truth).mean()),
                # Mean per-class recall: its chance is 1/K whatever the class shares (carried: 40% "none").
                "balanced_accuracy": float(np.mean(list(recall.values()))),
                "per_class_recall": recall,
                "chance_uniform": 1.0 / len(classes),
                "chance_majority": float(counts.max() / counts.sum()),
                "classes": len(classes),
                "n": len(idx),
            }
        result["zero_shot"][modality] = per_attr
        first: dict[int, int] = {}
        for i in idx:
            first.setdefault(int(crops.rows[i]["pid"]), i)
        one = list(first.values())
        captions = [crops.rows[i]["caption"] for i in one]
        sims = encode_texts(model, tokenizer, captions) @ encode_images(model, crops, one).T
        top = sims.topk(min(5, len(one)), dim=1).indices.numpy()
        hits = np.array([[captions[j] == captions[q] for j in top[q]] for q in range(len(one))])
        result["text_to_image"][modality] = {
            "R1": float(hits[:, :1].any(1).mean()),
            "R5": float(hits.any(1).mean()),
            "n": len(one),
        }
    return result


def format_report(metrics: dict[str, Any]) -> str:
    """The zero-shot table as text (what the command prints), then the ``--eval-data`` one if any."""
    lines = _report_lines(metrics)
    if "eval_data" in metrics:
        lines += [f"--eval-data {metrics['eval_data']['data']} (all {metrics['eval_data']['identities']} identities):"]
        lines += _report_lines(metrics["eval_data"])
    return "\n".join(lines)


def _report_lines(metrics: dict[str, Any]) -> list[str]:
    lines = [f"{'attribute':14s} {'modality':9s} {'accuracy':>9s} {'balanced':>9s} {'chance 1/K':>10s} "
             f"{'majority':>9s} {'n':>6s}"]  # fmt: skip
    for modality, attrs in metrics["zero_shot"].items():
        for attribute, m in attrs.items():
            lines.append(
                f"{attribute:14s} {modality:9s} {m['accuracy']:9.3f} {m['balanced_accuracy']:9.3f} "
                f"{m['chance_uniform']:10.3f} {m['chance_majority']:9.3f} {m['n']:6d}"
            )
    for modality, m in metrics["text_to_image"].items():
        lines.append(f"text->image {modality:9s} R@1 {m['R1']:.3f}  R@5 {m['R5']:.3f}  ({m['n']} identities)")
    return lines


# --------------------------------------------------------------------------------------------------
# Training


def pretrain(
    data: str | Path,
    out: str | Path,
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    eval_data: str | Path | None = None,
) -> dict[str, Any]:
    """Train, save the weights and the held-out evaluation; returns the metrics dict (also in the JSON).

    Args:
        data: folder with ``captions.jsonl`` and its crops.
        out: the weights file to write (the metrics JSON and run folder are named after it).
        cfg: the run's options.
        resume: continue the run of ``out`` from its last saved state.
        progress: show progress bars.
        eval_data: a second captioned folder (another seed's draw) whose identities are all evaluated
            as well, under ``"eval_data"``: held-out identities that no choice of options has seen.

    Returns:
        The metrics written to ``FILE-zeroshot.json``.
    """
    from open_clip_train.scheduler import cosine_lr
    from torch.utils.tensorboard import SummaryWriter

    from .trainer import append_csv_row

    cfg.validate()
    _check_eval_data(eval_data)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    weights_path, metrics_path, run_dir = output_paths(out)
    state_path = run_dir / "state.pt"
    if weights_path.exists() and not resume:
        raise PretrainError(f"{weights_path} exists; choose another --out or pass --resume to continue its run")
    if resume and not state_path.is_file():
        raise PretrainError(f"--resume: no run to continue ({state_path} is missing)")
    torch.manual_seed(cfg.seed)
    model, config, tokenizer = build_pretrain_model(cfg.arch)
    crops = load_captioned(data, config.image_size, progress)
    held = holdout_ids(crops.rows, cfg.holdout, cfg.seed)
    train_idx = np.array([i for i, r in enumerate(crops.rows) if int(r["pid"]) not in held])
    if len(train_idx) < cfg.batch_size:
        raise PretrainError(f"{len(train_idx)} training crops is fewer than one batch of {cfg.batch_size}")
    tokens = tokenizer([r["caption"] for r in crops.rows])  # [N, context] once; the captions repeat a lot
    steps_per_epoch = len(train_idx) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_lr(optimizer, cfg.lr, min(cfg.warmup_steps, max(total - 1, 0)), total)
    loss_fn = open_clip.ClipLoss()
    step, seconds = 0, 0.0
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if _run_options(state["config"]) != _run_options(asdict(cfg)):
            raise PretrainError(f"--resume: options differ from the run in {run_dir} ({state['config']})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = int(state["step"]), float(state["seconds"])
        log.info("resuming %s at step %d/%d", run_dir, step, total)
    run_dir.mkdir(parents=True, exist_ok=True)
    tb = SummaryWriter(str(run_dir / "tensorboard"))
    log.info(
        "pretraining %s on %d crops (%d held-out identities), %d steps of %d", config.name, len(train_idx),
        len(held), total, cfg.batch_size,
    )  # fmt: skip
    bar = tqdm(total=total, initial=step, desc="pretrain-clip", unit="step", disable=not progress)
    model.train()
    t0 = time.perf_counter()
    try:
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            # The order of an epoch and its flips are functions of (seed, epoch): resume repeats them.
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch]))
            order = train_idx[rng.permutation(len(train_idx))]
            flips = rng.random(len(order)) < 0.5
            partial = rng.random(len(order)) < cfg.partial_captions
            sl = slice(pos * cfg.batch_size, (pos + 1) * cfg.batch_size)
            lr = scheduler(step)
            image_features = model.encode_image(crops.batch(order[sl], flips[sl]), normalize=True)
            text = batch_tokens(crops, tokens, tokenizer, order[sl], partial[sl], (cfg.seed, epoch, pos))
            text_features = model.encode_text(text, normalize=True)
            loss = loss_fn(image_features, text_features, model.logit_scale.exp())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the contrastive loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # as open_clip's trainer: temperature at most 100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            tb.add_scalar("train/loss", loss.item(), step)
            tb.add_scalar("train/lr", lr, step)
            tb.add_scalar("train/logit_scale", model.logit_scale.exp().item(), step)
            if step % steps_per_epoch == 0 or step == total:
                elapsed = seconds + time.perf_counter() - t0
                row = {"step": step, "epoch": (step - 1) // steps_per_epoch + 1, "loss": loss.item(), "lr": lr}
                append_csv_row(run_dir / "train_log.csv", {**row, "seconds": round(elapsed, 1)})
                _save_state(state_path, model, optimizer, step, elapsed, cfg)
    finally:
        bar.close()
    seconds += time.perf_counter() - t0
    save_weights(model, weights_path)
    metrics = evaluate_zero_shot(model, tokenizer, crops, held)
    for modality, attrs in metrics["zero_shot"].items():
        for attribute, m in attrs.items():
            tb.add_scalar(f"zero_shot/{modality}/{attribute}", m["accuracy"], step)
    if eval_data is not None:
        metrics["eval_data"] = evaluate_all(model, tokenizer, eval_data, config.image_size, progress)
    tb.close()
    metrics.update(
        {
            "weights": str(weights_path),
            "architecture": config.name,
            "data": str(data),
            "train_crops": len(train_idx),
            "heldout_identities": len(held),
            "steps": step,
            "train_seconds": round(seconds, 1),
            "options": asdict(cfg),
            "machine": {
                "cpu": _cpu_model(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_average_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            },
        }
    )
    atomic_write(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _check_eval_data(eval_data: str | Path | None) -> None:
    if eval_data is not None and not (Path(eval_data) / CAPTIONS).is_file():
        raise PretrainError(f"--eval-data {eval_data}: no {CAPTIONS}")


def evaluate_all(model: torch.nn.Module, tokenizer: Any, data: str | Path, image_size: tuple[int, int],
                 progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """``evaluate_zero_shot`` on every identity of a captioned folder (a draw no option was chosen on)."""
    crops = load_captioned(data, image_size, progress)
    pids = {int(r["pid"]) for r in crops.rows}
    return {"data": str(data), "identities": len(pids), **evaluate_zero_shot(model, tokenizer, crops, pids)}


def evaluate_weights(data: str | Path, out: str | Path, cfg: PretrainConfig, *, eval_data: str | Path | None = None,
                     progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Evaluate the weights a run wrote (``out``) again, without training: the held-out identities of
    ``data`` and ``eval_data``; the run's own fields in the metrics JSON (steps, time, options) are kept,
    the evaluations replaced. The held-out draw is the run's: ``arch``, ``holdout`` and ``seed`` recorded
    in its metrics JSON win over ``cfg``'s (other values would evaluate on identities it trained on).

    Args:
        data: the run's captioned folder.
        out: the weights file the run wrote.
        cfg: ``arch``, ``holdout`` and ``seed`` where the run recorded none, and ``threads``.
        eval_data: a second captioned folder evaluated in full.
        progress: show progress bars.

    Returns:
        The metrics written to ``FILE-zeroshot.json``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path, metrics_path, _ = output_paths(out)
    if not weights_path.is_file():
        raise PretrainError(f"--evaluate-only: {weights_path} does not exist (train it first)")
    _check_eval_data(eval_data)
    previous: dict[str, Any] = {}
    if metrics_path.is_file():
        previous = {k: v for k, v in json.loads(metrics_path.read_text(encoding="utf-8")).items()
                    if k not in ("zero_shot", "text_to_image", "eval_data")}  # fmt: skip
    recorded = {k: v for k, v in previous.get("options", {}).items() if k in ("arch", "holdout", "seed")}
    if any(getattr(cfg, k) != v for k, v in recorded.items()):
        log.info("--evaluate-only: using the run's recorded %s", recorded)
    cfg = replace(cfg, **recorded)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, config, tokenizer = build_pretrain_model(cfg.arch)
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise PretrainError(f"{weights_path}: not {config.name} CLIP weights ({str(exc).splitlines()[0]})") from None
    crops = load_captioned(data, config.image_size, progress)
    held = holdout_ids(crops.rows, cfg.holdout, cfg.seed)
    metrics = {**previous, **evaluate_zero_shot(model, tokenizer, crops, held), "heldout_identities": len(held)}
    if eval_data is not None:
        metrics["eval_data"] = evaluate_all(model, tokenizer, eval_data, config.image_size, progress)
    atomic_write(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def batch_tokens(crops: CaptionedCrops, tokens: torch.Tensor, tokenizer: Any, idx: np.ndarray, partial: np.ndarray,
                 key: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
    """The batch's caption tokens: the full caption, or where ``partial`` a partial one drawn from ``key``
    (seed, epoch, position), so a resumed run draws the same words."""
    out = tokens[torch.from_numpy(idx)].clone()
    rows = np.flatnonzero(partial)
    if rows.size:
        rng = np.random.default_rng(np.random.SeedSequence([*key, 29]))
        texts = []
        for r in rows:
            row = crops.rows[int(idx[r])]
            modality = MODALITY_ALIASES[row["modality"]]
            texts.append(partial_caption(row["attributes"], modality, rng, int(rng.integers(len(TEMPLATES)))))
        out[torch.from_numpy(rows)] = tokenizer(texts)
    return out


def _save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, seconds: float,
                cfg: PretrainConfig) -> None:  # fmt: skip
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds,
             "config": asdict(cfg)}  # fmt: skip
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _run_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options a resumed run must share with its start (the thread count may change)."""
    return {k: v for k, v in options.items() if k != "threads"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
