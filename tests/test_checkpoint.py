"""Checkpoint round trip and the clear errors of missing, truncated and mismatched files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clipmc.model import CheckpointError, load_checkpoint, read_checkpoint_config

from .conftest import random_images


def test_round_trip_gives_identical_vectors(tiny_checkpoint):
    a = load_checkpoint(tiny_checkpoint)
    b = load_checkpoint(tiny_checkpoint)
    x = random_images(5, seed=12)
    m = torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        assert torch.equal(a.embed(x, m), b.embed(x, m))
    cfg = read_checkpoint_config(tiny_checkpoint)
    assert cfg["embedding_version"] == a.embedding_version
    assert (
        cfg["embedding_version"].startswith("clipmc-tiny.r") and "288x144-bicubic-clipnorm" in cfg["embedding_version"]
    )
    assert cfg["metadata"]["note"] == "test fixture"
    assert a.mc.alpha.item() == pytest.approx(0.7)


def test_save_load_preserves_vectors_of_the_saved_model(tmp_path, tiny_model):
    from clipmc.model import save_checkpoint

    save_checkpoint(tiny_model, tmp_path / "c")
    loaded = load_checkpoint(tmp_path / "c")
    x = random_images(2, seed=13)
    m = torch.tensor([1, 0])
    with torch.no_grad():
        assert torch.equal(tiny_model.embed(x, m), loaded.embed(x, m))
    assert loaded.embedding_version == tiny_model.embedding_version


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_checkpoint(tmp_path / "empty")


def test_truncated_weights_name_the_file(tmp_path, tiny_checkpoint):
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert "model.safetensors" in str(info.value) and "truncated" in str(info.value)


def test_corrupt_config(tmp_path, tiny_checkpoint):
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)


def test_weights_of_another_architecture(tmp_path, tiny_checkpoint):
    """config.json says one architecture, the weights are another: a clear mismatch error."""
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architecture"]["n_queries"] = 6
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match the architecture"):
        load_checkpoint(ckpt)


def test_cli_info(tiny_checkpoint, capsys):
    from clipmc.cli import main

    assert main(["info", str(tiny_checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "tiny"
    assert info["embedding_dim"] == 80 and info["image_size"] == [288, 144]
    assert info["parameters"] > 0 and info["embedding_version"].startswith("clipmc-tiny")


def test_cli_info_missing_checkpoint_is_one_line(tmp_path, capsys):
    from clipmc.cli import main

    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "checkpoint not found" in err and "Traceback" not in err
