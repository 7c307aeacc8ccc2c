"""CSDN's training data: the two-view visible augmentation over the project's records and transforms.

Stage 3 sees every visible image twice: one view with the usual pad/crop, flip and random erasing,
and one that in addition copies a random colour channel to all three (CSDN's second visible view);
an infrared image gives one view with the adaptive grayscale of `model.transforms`. Stages 1 and 2
embed the training images once, without augmentation, through the contract's preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.records import VISIBLE, Record
from ..preprocess import PreprocessConfig, preprocess
from ..transforms import TrainTransform


class TwoViewTrainImages(Dataset):
    """Record -> (view 1, view 2, label, modality); for infrared records view 2 is view 1 (unused)."""

    def __init__(self, records: Sequence[Record], preprocessing: PreprocessConfig, seed: int = 0) -> None:
        size = (preprocessing.height, preprocessing.width)
        self.records = records
        # channel_p / gray_p only act on visible images; infrared ones always get the adaptive gray.
        self.plain = TrainTransform(size, channel_p=0.0, gray_p=0.0, seed=seed, preprocessing=preprocessing)
        self.channel = TrainTransform(size, channel_p=1.0, gray_p=0.0, seed=seed + 1, preprocessing=preprocessing)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        r = self.records[i]
        first = self.plain(r.path, r.modality)
        second = self.channel(r.path, r.modality) if r.modality == VISIBLE else first
        return first, second, r.pid, r.modality

    def reseed(self, seed: int) -> None:
        self.plain.rng = np.random.default_rng(seed)
        self.channel.rng = np.random.default_rng(seed + 1)


def reseed_worker(worker_id: int) -> None:
    """Each DataLoader worker gets its own augmentation streams."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**31)


class PlainImages(Dataset):
    """Record -> (preprocessed tensor, label, modality): the unaugmented view stages 1 and 2 embed."""

    def __init__(self, records: Sequence[Record], preprocessing: PreprocessConfig) -> None:
        self.records, self.cfg = records, preprocessing

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        r = self.records[i]
        return torch.from_numpy(preprocess(r.path, self.cfg)), r.pid, r.modality
