"""MIP's metric losses: the soft-margin batch-hard triplet (TransReID with NO_MARGIN) and MSEL.

The identity losses are plain `F.cross_entropy`. MSEL is CSDN's (`model.csdn.losses.msel`): with the
8 x (4 + 4) sampler the released code's top-k means (k = 3 same-modality, 4 cross-modality positives)
are the means over all positives, which is what that function computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..csdn.losses import msel

__all__ = ["branch_mean", "msel", "soft_margin_triplet"]


def soft_margin_triplet(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch-hard triplet with a soft margin: mean log(1 + exp(d(a, hardest positive) - d(a, hardest
    negative))) on Euclidean distances of the (unnormalised) features."""
    x = features.float()
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_positive = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.softplus(hardest_positive - hardest_negative).mean()


def branch_mean(values: list[torch.Tensor]) -> torch.Tensor:
    """TransReID's weighting of the JPM branches: 0.5 x the global term + 0.5 x the mean of the locals."""
    return 0.5 * values[0] + 0.5 * torch.stack(values[1:]).mean()
