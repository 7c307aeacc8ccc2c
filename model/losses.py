"""Losses of the one-stage CLIP-MC recipe (DESIGN.md section 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelSmoothingCE(nn.Module):
    """Identity loss with label smoothing (epsilon 0.1), as the ReID baselines use."""

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.epsilon)


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Hardest positive and hardest negative per anchor, Euclidean distance (Hermans et al.)."""
    x = features.float()
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (dist * same).max(dim=1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def cross_modality_center_loss(features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Mean distance between each identity's visible and infrared feature centres (L2-normalised)."""
    x = F.normalize(features.float(), dim=1)
    losses = []
    for pid in labels.unique():
        vis = x[(labels == pid) & (modality == 0)]
        ir = x[(labels == pid) & (modality == 1)]
        if len(vis) and len(ir):
            losses.append((vis.mean(0) - ir.mean(0)).norm())
    return torch.stack(losses).mean() if losses else x.sum() * 0


def identity_contrastive(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, logit_scale: float = 1 / 0.07
) -> torch.Tensor:
    """Bidirectional image-text contrastive loss in which every same-identity pair is a positive."""
    img = F.normalize(image.float(), dim=1)
    txt = F.normalize(text.float(), dim=1)
    logits = logit_scale * img @ txt.t()
    target = (labels[:, None] == labels[None, :]).float()
    target = target / target.sum(dim=1, keepdim=True)
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def compensation_loss(
    t_comp: torch.Tensor, f_img: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor
) -> torch.Tensor:
    """Pull each compensated text feature toward the mean real feature of the same identity in the other
    modality (detached target): t_comp must describe the person as the missing modality sees them."""
    t = F.normalize(t_comp.float(), dim=1)
    f = F.normalize(f_img.detach().float(), dim=1)
    same_id = labels[:, None] == labels[None, :]
    other = modality[:, None] != modality[None, :]
    mask = (same_id & other).float()
    has = mask.sum(1) > 0
    if not bool(has.any()):
        return t.sum() * 0
    target = F.normalize((mask @ f)[has] / mask.sum(1, keepdim=True)[has], dim=1)
    return (1 - (t[has] * target).sum(1)).mean()


def context_modality_loss(contexts: torch.Tensor, classifier: nn.Module) -> torch.Tensor:
    """Modality classification of the context tokens themselves: every token of the visible context
    [0] is labelled visible, every token of the infrared context [1] infrared. Unlike a classifier on
    t_orig (which also carries the instance tokens), it is met only by contexts that differ."""
    n_mod, n_ctx, width = contexts.shape
    logits = classifier(contexts.reshape(n_mod * n_ctx, width).float())
    labels = torch.arange(n_mod, device=contexts.device).repeat_interleave(n_ctx)
    return F.cross_entropy(logits, labels)
