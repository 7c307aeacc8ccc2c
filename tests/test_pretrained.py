"""open_clip weight loading: local checkpoints, position-embedding interpolation, offline errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipmc.model import build_model
from clipmc.model.config import get_config
from clipmc.model.factory import PretrainedWeightsError


@pytest.fixture(scope="module")
def native_clip_file(tmp_path_factory):
    """A randomly initialised open_clip model of the tiny config at its native 64 x 64, saved to disk."""
    cfg = get_config("tiny")
    torch.manual_seed(11)
    clip = open_clip.CLIP(**cfg.clip).eval()
    path = tmp_path_factory.mktemp("openclip") / "tiny_open_clip.pt"
    torch.save(clip.state_dict(), path)
    return clip, path


def test_local_checkpoint_reproduces_open_clip_features(native_clip_file):
    clip, path = native_clip_file
    model = build_model("tiny", pretrained=str(path), image_size=(64, 64))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        _, f_img, _ = model.encode_image(x)
        reference = clip.encode_image(x)
    torch.testing.assert_close(f_img, reference, atol=1e-5, rtol=1e-5)


def test_position_embedding_interpolated_to_18x9(native_clip_file):
    clip, path = native_clip_file
    model = build_model("tiny", pretrained=str(path))
    visual = model.clip.visual
    assert tuple(visual.grid_size) == (18, 9)
    pos = visual.positional_embedding.detach()
    assert pos.shape == (1 + 18 * 9, model.config.vision_width)
    old = clip.visual.positional_embedding.detach()
    torch.testing.assert_close(pos[0], old[0])  # class token position kept
    grid = old[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(18, 9), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(18 * 9, -1))
    # Other weights are loaded unchanged.
    torch.testing.assert_close(model.clip.visual.conv1.weight, clip.visual.conv1.weight)
    # And the model runs at 288 x 144.
    with torch.no_grad():
        assert model.embed(torch.randn(1, 3, 288, 144), torch.tensor([1])).shape[1] == 80


def test_wrong_architecture_file_is_a_clear_error(tmp_path):
    other = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    )
    bad = tmp_path / "other.pt"
    torch.save(other.state_dict(), bad)
    with pytest.raises(PretrainedWeightsError, match="not an open_clip checkpoint of architecture 'tiny'"):
        build_model("tiny", pretrained=str(bad))


def test_offline_openai_without_cache_names_the_local_weights_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError) as info:
        build_model("vit-b-16", pretrained="openai", cache_dir=str(tmp_path / "empty-cache"))
    message = str(info.value)
    assert "CLIPMC_WEIGHTS" in message and "--weights" in message


def test_unknown_tag_and_tiny_without_weights_are_clear_errors():
    with pytest.raises(PretrainedWeightsError, match="neither a file nor an open_clip tag"):
        build_model("vit-b-16", pretrained="no-such-tag")
    with pytest.raises(PretrainedWeightsError, match="no published weights"):
        build_model("tiny", pretrained="openai")


def test_openai_weights_come_from_the_local_hub_cache_without_network(tmp_path, monkeypatch):
    """A connected machine's download is reused offline: the cached file is found, nothing is fetched."""
    from clipmc.model.factory import resolve_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    weights = snapshot / "open_clip_model.safetensors"
    weights.write_bytes(b"cached")
    assert resolve_pretrained(get_config("vit-b-16"), "openai", cache_dir=str(tmp_path)) == str(weights)
