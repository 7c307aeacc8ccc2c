"""The one preprocessing function (DESIGN.md section 2) on every image mode, and EXIF orientation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipmc.model.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ImageDecodeError,
    normalize,
    preprocess,
    preprocess_batch,
    resize_crop,
    to_rgb,
)


def _unnormalise(x: np.ndarray) -> np.ndarray:
    return x * np.asarray(CLIP_STD, np.float32)[:, None, None] + np.asarray(CLIP_MEAN, np.float32)[:, None, None]


def _image(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        arr = rng.integers(7000, 9000, size=(100, 50), dtype=np.uint16)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
        return img
    base = Image.fromarray(rng.integers(0, 255, size=(100, 50, 3), dtype=np.uint8), "RGB")
    return base.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "I;16"])
def test_every_mode_gives_the_contract_tensor(mode):
    x = preprocess(_image(mode))
    assert x.shape == (3, 288, 144) and x.dtype == np.float32
    rgb = _unnormalise(x)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5
    if mode in ("L", "LA", "I;16"):
        # single-channel images are replicated to 3 channels
        np.testing.assert_allclose(rgb[0], rgb[1], atol=1e-6)
        np.testing.assert_allclose(rgb[1], rgb[2], atol=1e-6)


def test_sixteen_bit_ir_is_stretched_not_clipped():
    arr = np.linspace(7000, 9000, 100 * 50).reshape(100, 50).astype(np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(arr)))
    assert rgb.min() == 0 and rgb.max() == 255


def test_normalisation_values():
    crop = np.full((288, 144, 3), 255, np.uint8)
    x = normalize(crop)
    np.testing.assert_allclose(x[:, 0, 0], (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), rtol=1e-6)


def test_bicubic_resize_of_any_size():
    img = Image.new("RGB", (31, 77), (10, 200, 30))
    crop = resize_crop(img)
    assert crop.shape == (288, 144, 3)
    assert tuple(crop[100, 70]) == (10, 200, 30)


def _gradient(h: int = 97, w: int = 61) -> Image.Image:
    """A smooth two-way colour gradient: where resampling filters differ, it shows."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (xx + yy) * 255 / (w + h - 2)], -1)
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def test_resize_equals_torchvision_bicubic_on_a_gradient():
    """The contract's resize is torchvision's Resize(BICUBIC) on a PIL image exactly (both are PIL's filter),
    and within 2/255 of torchvision's antialiased tensor bicubic, the training pipeline's other path."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    img = _gradient()
    ours = resize_crop(img, (288, 144))
    pil = np.asarray(tvf.resize(img, [288, 144], interpolation=InterpolationMode.BICUBIC))
    np.testing.assert_array_equal(ours, pil)
    tensor = tvf.pil_to_tensor(img).float()
    tv = tvf.resize(tensor, [288, 144], interpolation=InterpolationMode.BICUBIC, antialias=True)
    tv = tv.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(ours.astype(int) - tv.astype(int)).max() <= 2


def test_normalise_equals_torchvision_to_tensor_and_normalize():
    import torch
    from torchvision.transforms import functional as tvf

    crop = resize_crop(_gradient(), (288, 144))
    ref = tvf.normalize(tvf.to_tensor(crop.copy()), CLIP_MEAN, CLIP_STD)
    torch.testing.assert_close(torch.from_numpy(normalize(crop)), ref, rtol=0, atol=1e-6)


def test_exif_orientation_is_applied():
    # Stored 60 wide x 30 high: left half red, right half blue. Orientation 6 = rotate 90 CW to display.
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif, quality=95)
    shown = np.asarray(to_rgb(buf.getvalue()))
    assert shown.shape[:2] == (60, 30)  # now portrait
    top, bottom = shown[5, 15], shown[-5, 15]
    assert top[0] > 200 and top[2] < 60  # red on top after a clockwise rotation
    assert bottom[2] > 200 and bottom[0] < 60


def test_bytes_arrays_and_batches():
    img = _image("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    from_bytes = preprocess(buf.getvalue())
    from_array = preprocess(np.asarray(img))
    np.testing.assert_array_equal(from_bytes, from_array)
    batch = preprocess_batch([img, img.convert("L")])
    assert batch.shape == (2, 3, 288, 144)


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_undecodable_input_is_a_clear_error(payload):
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        preprocess(payload)
