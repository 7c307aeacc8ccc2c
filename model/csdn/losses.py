"""CSDN's losses: supervised contrastive (stages 1-2), weighted-regularisation triplet and MSEL (stage 3).

Written from the definitions; the identity CE and the image-to-text CE are plain `F.cross_entropy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon(anchors: torch.Tensor, others: torch.Tensor, anchor_labels: torch.Tensor, other_labels: torch.Tensor,
           temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Supervised contrastive loss of each anchor against `others`: the mean log-probability of its
    same-label entries under a softmax over all of `others` (features unnormalised, as published).

    CSDN uses it both ways (image -> text and text -> image) with temperature 1.
    """
    logits = anchors.float() @ others.float().t() / temperature
    positive = (anchor_labels[:, None] == other_labels[None, :]).float()
    log_prob = logits.log_softmax(dim=1)
    count = positive.sum(1)
    if bool((count == 0).any()):
        raise ValueError("every anchor needs at least one same-label entry among the others")
    return -((positive * log_prob).sum(1) / count).mean()


def weighted_triplet(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weighted-regularisation triplet (AGW): softmax-weighted positive and negative distances per
    anchor, soft-margin ranking loss log(1 + exp(d_ap - d_an)); no margin to tune."""
    x = features.float()
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    pos, neg = same.float(), (~same).float()
    d_ap = dist * pos
    d_an = dist * neg
    w_ap = _masked_softmax(d_ap, pos)
    w_an = _masked_softmax(-d_an, neg)
    furthest_positive = (d_ap * w_ap).sum(1)
    closest_negative = (d_an * w_an).sum(1)
    return F.softplus(furthest_positive - closest_negative).mean()


def _masked_softmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    top = (values * mask).max(dim=1, keepdim=True).values
    e = torch.exp(values - top) * mask
    return e / (e.sum(dim=1, keepdim=True) + 1e-6)


def msel(features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Modality-shared enhancement loss: for each sample, the mean distance to its identity's samples
    in the other modality should equal the mean distance to its other samples in its own modality:
    mean((cross - intra)^2) over both modalities' anchors (averaged per modality).

    Anchors without a same-identity sample in both places are left out.
    """
    x = features.float()
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same_id = labels[:, None] == labels[None, :]
    same_mod = modality[:, None] == modality[None, :]
    not_self = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    intra_mask = (same_id & same_mod & not_self).float()
    cross_mask = (same_id & ~same_mod).float()
    n_intra, n_cross = intra_mask.sum(1), cross_mask.sum(1)
    valid = (n_intra > 0) & (n_cross > 0)
    intra = (dist * intra_mask).sum(1) / n_intra.clamp_min(1)
    cross = (dist * cross_mask).sum(1) / n_cross.clamp_min(1)
    sq = (cross - intra) ** 2
    terms = [sq[valid & (modality == m)].mean() for m in (0, 1) if bool((valid & (modality == m)).any())]
    return torch.stack(terms).mean() if terms else x.sum() * 0
