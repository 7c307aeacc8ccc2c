"""Training-only heads: BN-necks and identity classifiers (DESIGN.md section 3: "BN-necks on both
parts are used only by the ID losses during training"), plus the modality classifier on the contexts.
They are saved in the trainer state, never in the inference checkpoint."""

from __future__ import annotations

import torch
from torch import nn


class BNNeckClassifier(nn.Module):
    """BatchNorm (bias frozen at 0) then a bias-free linear classifier, as in BoT/CLIP-ReID."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn(x.float()))


class TrainingHeads(nn.Module):
    """BN-neck identity classifiers on f_cls, f_img, f_full and the modality classifier of the context
    tokens (token width `text_width`: it reads the MCL contexts themselves, not a text feature that also
    carries the instance tokens)."""

    def __init__(self, vision_width: int, embed_dim: int, num_classes: int, text_width: int | None = None) -> None:
        super().__init__()
        self.id_cls = BNNeckClassifier(vision_width, num_classes)
        self.id_img = BNNeckClassifier(embed_dim, num_classes)
        self.id_full = BNNeckClassifier(embed_dim, num_classes)
        self.modality = nn.Linear(text_width or embed_dim, 2)
