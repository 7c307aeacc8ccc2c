"""The Embedder interface and its torch back-end (DESIGN.md section 6), tiny configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipmc.export import EmbedderError, create_embedder
from clipmc.export.base import Embedder
from clipmc.export.runtime_torch import TorchEmbedder
from clipmc.model.preprocess import normalize


def _crops(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    rng = rng or np.random.default_rng()
    return rng.integers(0, 256, (n, 288, 144, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def torch_embedder(tiny_checkpoint) -> Embedder:
    return create_embedder("torch", tiny_checkpoint, batch_sizes=(1, 4))


def test_attributes_follow_checkpoint(torch_embedder, tiny_checkpoint):
    from clipmc.model.checkpoint import read_checkpoint_config

    cfg = read_checkpoint_config(tiny_checkpoint)
    assert isinstance(torch_embedder, TorchEmbedder)
    assert torch_embedder.backend == "torch" and torch_embedder.device == "cpu"
    assert torch_embedder.embedding_dim == cfg["embedding_dim"] == 80
    assert torch_embedder.embedding_version == cfg["embedding_version"]
    assert torch_embedder.image_size == (288, 144)
    assert torch_embedder.batch_sizes == (1, 4)


def test_uint8_and_float32_inputs_give_the_same_vectors(torch_embedder):
    crops = _crops(3)
    a = torch_embedder.embed(crops, 1)
    b = torch_embedder.embed(normalize(crops), 1)
    assert a.dtype == np.float32 and a.shape == (3, 80)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_matches_model_embed_and_per_image_modality(torch_embedder, tiny_checkpoint):
    """Micro-batching (4) over 9 images with mixed modality equals one direct model call."""
    from clipmc.model import load_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    x = normalize(_crops(9))
    m = np.random.default_rng().integers(0, 2, 9)
    got = torch_embedder.embed(x, m)
    with torch.no_grad():
        ref = model.embed(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    # a scalar modality or a name is the same as an array of it
    np.testing.assert_array_equal(torch_embedder.embed(x[:2], "infrared"), torch_embedder.embed(x[:2], [1, 1]))
    assert not np.allclose(torch_embedder.embed(x[:2], 0), torch_embedder.embed(x[:2], 1), atol=1e-4)


def test_empty_batch_and_warmup(torch_embedder):
    out = torch_embedder.embed(np.zeros((0, 288, 144, 3), np.uint8), 0)
    assert out.shape == (0, 80) and out.dtype == np.float32
    torch_embedder.warmup()


@pytest.mark.parametrize(
    ("images", "modality", "match"),
    [
        (np.zeros((288, 144, 3), np.uint8), 0, "batch"),
        (np.zeros((1, 224, 224, 3), np.uint8), 0, r"\[N, 288, 144, 3\]"),
        (np.zeros((1, 288, 144, 3), np.float32), 0, r"\[N, 3, 288, 144\]"),
        (np.zeros((1, 3, 288, 144), np.int32), 0, "dtype"),
        (np.full((1, 3, 288, 144), np.nan, np.float32), 0, "NaN"),
        (np.zeros((2, 288, 144, 3), np.uint8), 2, "0 \\(visible\\) or 1"),
        (np.zeros((2, 288, 144, 3), np.uint8), [0, 1, 1], "shape"),
        (np.zeros((2, 288, 144, 3), np.uint8), "daylight", "accepted: "),
        (np.zeros((2, 288, 144, 3), np.uint8), 0.5, "int"),
        ([[0]], 0, "numpy array"),
    ],
)
def test_bad_input_is_a_clear_error(torch_embedder, images, modality, match):
    with pytest.raises(EmbedderError, match=match):
        torch_embedder.embed(images, modality)


def test_factory_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(EmbedderError, match="unknown embedder backend 'tflite'"):
        create_embedder("tflite", tiny_checkpoint)
    with pytest.raises(EmbedderError, match="precision"):
        create_embedder("torch", tiny_checkpoint, precision="int4")
    with pytest.raises(EmbedderError, match="batch_sizes"):
        create_embedder("torch", tiny_checkpoint, batch_sizes=(0, 8))
    with pytest.raises(EmbedderError, match="not found"):
        create_embedder("torch", tmp_path / "missing")
    with pytest.raises(EmbedderError, match="fp16 on CUDA only"):
        create_embedder("torch", tiny_checkpoint, precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(EmbedderError, match="no CUDA GPU"):
            create_embedder("torch", tiny_checkpoint, device="cuda")


def test_openai_offline_is_a_clear_error(monkeypatch):
    """Zero-shot weights offline: open_clip cannot download, the error says how to proceed."""
    from clipmc.model.factory import PretrainedWeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-clipmc-test-cache")
    with pytest.raises(PretrainedWeightsError, match="not cached and the Hugging Face Hub is not reachable"):
        create_embedder("torch", "openai")
