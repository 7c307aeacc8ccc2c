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

from .cameras import CameraMap
from .data.records import Record
from .preprocess import PreprocessConfig, preprocess
from .registry import EmbeddingModel, architecture_of

log = logging.getLogger(__name__)


class _EvalImages(Dataset):
    """Record -> (tensor, modality, camera index); the index is the model's for the record's camera
    number (model.cameras: an unknown camera gets the unknown index) and 0 for models without one."""

    def __init__(self, records: Sequence[Record], cfg: PreprocessConfig, cameras: CameraMap | None = None) -> None:
        self.records, self.cfg, self.cameras = records, cfg, cameras

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        r = self.records[i]
        camera = self.cameras.index(r.camid) if self.cameras is not None else 0
        return torch.from_numpy(preprocess(r.path, self.cfg)), r.modality, camera


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
    """[N, D] float32 features in record order; each record is embedded with its own modality (and its
    camera, for architectures whose inputs include it)."""
    needs_camera = "camera" in architecture_of(model).inputs
    cameras = CameraMap.from_architecture(model.config.to_dict()) if needs_camera else None
    dataset = _EvalImages(records, model.config.preprocessing(), cameras)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    was_training = model.training
    model.eval()
    out = []
    for images, modality, camera in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, modality = images.to(device), modality.to(device)
        inputs = (modality, camera.to(device)) if needs_camera else (modality,)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda"):
            e = model.embed(images, *inputs).float()
            if flip:
                e = torch.nn.functional.normalize(e + model.embed(images.flip(-1), *inputs).float(), dim=1)
        out.append(e.cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.embedding_dim), np.float32)
    return np.concatenate(out).astype(np.float32)
