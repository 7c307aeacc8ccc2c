"""Feature extraction for evaluation: records -> L2-normalised retrieval vectors, through the one
preprocessing function (with the model's own normalisation) and the model's `embed`, any registered
architecture (optionally averaged with the horizontally flipped crop)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data.records import Record
from .preprocess import PreprocessConfig, preprocess
from .registry import EmbeddingModel

log = logging.getLogger(__name__)


class _EvalImages(Dataset):
    def __init__(self, records: Sequence[Record], cfg: PreprocessConfig) -> None:
        self.records, self.cfg = records, cfg

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.records[i]
        return torch.from_numpy(preprocess(r.path, self.cfg)), r.modality


@torch.no_grad()
def extract_features(
    model: EmbeddingModel,
    records: Sequence[Record],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    flip: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """[N, D] float32 features in record order; each record is embedded with its own modality."""
    loader = DataLoader(_EvalImages(records, model.config.preprocessing()), batch_size=batch_size, num_workers=workers)
    was_training = model.training
    model.eval()
    out = []
    for images, modality in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, modality = images.to(device), modality.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda"):
            e = model.embed(images, modality).float()
            if flip:
                e = torch.nn.functional.normalize(e + model.embed(images.flip(-1), modality).float(), dim=1)
        out.append(e.cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.embedding_dim), np.float32)
    return np.concatenate(out).astype(np.float32)
