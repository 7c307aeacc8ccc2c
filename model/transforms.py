"""Training augmentations (DESIGN.md section 4), ending in the one normalisation of model.preprocess.

Test-time images go through `model.preprocess.preprocess` only; training adds, on the resized crop:
pad 10 + random crop, horizontal flip, random erasing; channel augmentation on visible images (copy a
random channel to all three, or grayscale) so that colour alone cannot carry identity; adaptive
grayscale (random contrast/gamma on the single IR channel) on infrared images.
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocess import PreprocessConfig, normalize, resize_crop


class TrainTransform:
    """PIL/bytes/path crop + modality -> normalised float32 tensor [3, H, W]."""

    def __init__(
        self,
        size: tuple[int, int],
        pad: int = 10,
        flip_p: float = 0.5,
        erase_p: float = 0.5,
        channel_p: float = 0.5,
        gray_p: float = 0.2,
        seed: int | None = None,
        preprocessing: PreprocessConfig | None = None,
    ) -> None:
        self.size, self.pad = size, pad
        self.flip_p, self.erase_p, self.channel_p, self.gray_p = flip_p, erase_p, channel_p, gray_p
        # The architecture's own normalisation (CLIP's by default; CSDN records ImageNet's).
        self.cfg = preprocessing or PreprocessConfig(height=size[0], width=size[1])
        self.rng = np.random.default_rng(seed)

    def __call__(self, image, modality: int) -> torch.Tensor:
        rng = self.rng
        crop = resize_crop(image, self.size)  # uint8 [H, W, 3]
        h, w = self.size
        if self.pad:
            padded = np.pad(crop, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
            y, x = rng.integers(0, 2 * self.pad + 1, size=2)
            crop = padded[y : y + h, x : x + w]
        if rng.random() < self.flip_p:
            crop = crop[:, ::-1]
        crop = self._visible_channels(crop) if modality == 0 else self._infrared_gray(crop)
        tensor = torch.from_numpy(normalize(np.ascontiguousarray(crop), self.cfg))
        if rng.random() < self.erase_p:
            tensor = self._erase(tensor)
        return tensor

    def _visible_channels(self, crop: np.ndarray) -> np.ndarray:
        r = self.rng.random()
        if r < self.channel_p:
            c = int(self.rng.integers(0, 3))
            return np.repeat(crop[:, :, c : c + 1], 3, axis=2)
        if r < self.channel_p + self.gray_p:
            gray = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            return np.repeat(gray[:, :, None], 3, axis=2).clip(0, 255).astype(np.uint8)
        return crop

    def _infrared_gray(self, crop: np.ndarray) -> np.ndarray:
        gray = crop.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
        gamma = float(np.exp(self.rng.uniform(-0.4, 0.4)))
        gain = float(self.rng.uniform(0.8, 1.2))
        gray = np.clip(gain * gray**gamma, 0, 1)
        return np.repeat((gray * 255).astype(np.uint8), 3, axis=2)

    def _erase(self, t: torch.Tensor) -> torch.Tensor:
        _, h, w = t.shape
        for _ in range(10):
            area = self.rng.uniform(0.02, 0.33) * h * w
            aspect = float(np.exp(self.rng.uniform(np.log(0.3), np.log(3.3))))
            eh, ew = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
            if 0 < eh < h and 0 < ew < w:
                y, x = int(self.rng.integers(0, h - eh)), int(self.rng.integers(0, w - ew))
                t = t.clone()
                t[:, y : y + eh, x : x + ew] = torch.from_numpy(
                    self.rng.standard_normal((3, eh, ew)).astype(np.float32)
                )
                return t
        return t
