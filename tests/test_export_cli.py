"""`clipmc export onnx|tensorrt` and `clipmc verify`, end to end through the main entry point."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipmc.cli import main


@pytest.fixture(scope="module")
def cli_onnx(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    assert main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--int8"]) == 0
    return out


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """Another tiny checkpoint (different weights): its vectors must not pass for the first one's."""
    from clipmc.model import build_model, save_checkpoint

    torch.manual_seed(7)
    model = build_model("tiny")
    with torch.no_grad():
        model.mc.alpha.fill_(0.7)
    return save_checkpoint(model, tmp_path_factory.mktemp("other") / "tiny")


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # Log lines (INFO and up, to stderr) may come first; the error itself is one line of its own.
    (line,) = [line for line in err.splitlines() if line.startswith(f"clipmc {command}: error:")]
    return line


def test_export_then_verify_passes(cli_onnx, tiny_checkpoint, tmp_path, capsys):
    assert cli_onnx.is_file()
    report_path = tmp_path / "report.json"
    args = ["verify", "--checkpoint", str(tiny_checkpoint), "--onnx", str(cli_onnx), "--n", "12"]
    code = main([*args, "--json", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "onnxruntime/cpu" in out and "parity: PASS" in out
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["rows"][0]["min_cosine"] >= 0.99999
    assert report["rows"][0]["topk_identical"]


def test_int8_model_keeps_the_contract_and_passes_its_gate(cli_onnx, tiny_checkpoint, capsys):
    """--int8 wrote a dynamically quantised copy: same version and interface, precision int8, parity
    measured against torch with the INT8 gate (cosine >= 0.99)."""
    from clipmc.export import create_embedder
    from clipmc.export.graph import read_onnx_metadata

    int8 = cli_onnx.with_suffix(".int8.onnx")
    meta, fp32_meta = read_onnx_metadata(int8), read_onnx_metadata(cli_onnx)
    assert meta["precision"] == "int8" and meta["embedding_version"] == fp32_meta["embedding_version"]
    assert int8.stat().st_size < cli_onnx.stat().st_size
    assert create_embedder("onnxruntime", int8).precision == "int8"
    code = main(["verify", "--checkpoint", str(tiny_checkpoint), "--onnx", str(int8), "--n", "12", "--json", "-"])
    out = capsys.readouterr().out
    assert code == 0, out
    row = json.loads(out[out.index("{") :])["rows"][0]
    assert row["threshold"] == 0.99 and row["min_cosine"] >= 0.99


def test_verify_on_a_folder_of_crops(cli_onnx, tiny_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng()
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(5):  # odd sizes, RGB and single-channel IR: they go through the contract's preprocessing
        size = (int(rng.integers(40, 120)), int(rng.integers(80, 300)))
        if i % 2:
            Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").save(folder / f"{i}.png")
        else:
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    args = ["verify", "--checkpoint", str(tiny_checkpoint), "--onnx", str(cli_onnx), "--n", "8"]
    code = main([*args, "--images", str(folder), "--json", "-"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "images (crops)" in out
    report = json.loads(out[out.index("{") :])
    rows = {r["inputs"]: r for r in report["rows"]}
    assert rows["images (crops)"]["n"] == 10  # each crop as both modalities


def test_verify_fails_for_another_checkpoint(cli_onnx, other_checkpoint, capsys):
    code = main(["verify", "--checkpoint", str(other_checkpoint), "--onnx", str(cli_onnx), "--n", "8"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "embedding_version" in out
    assert "parity: FAIL" in out


def test_verify_needs_something_to_verify(tiny_checkpoint, capsys):
    assert main(["verify", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "nothing to verify" in _one_line_error(capsys, "verify")


def test_export_openai_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    code = main(["export", "onnx", "--checkpoint", "openai", "--out", str(tmp_path / "o.onnx")])
    assert code == 2
    assert "openai" in _one_line_error(capsys, "export")
    assert not (tmp_path / "o.onnx").exists()


def test_export_from_a_wrong_open_clip_file_is_one_line(tmp_path, capsys):
    """A local open_clip weights file of another architecture: named, one line, no traceback."""
    from safetensors.torch import save_file

    bad = tmp_path / "open_clip_model.safetensors"
    save_file({"visual.proj": torch.zeros(4, 4)}, str(bad))
    assert main(["export", "onnx", "--checkpoint", str(bad), "--out", str(tmp_path / "o.onnx")]) == 2
    assert str(bad) in _one_line_error(capsys, "export")


def test_export_onnx_bad_arguments(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "onnx", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o.onnx")]) == 2
    assert "not found" in _one_line_error(capsys, "export")
    assert main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o.bin")]) == 2
    assert ".onnx" in _one_line_error(capsys, "export")


def test_export_onnx_checks_out_before_loading_weights(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import clipmc.export.weights

    def no_load(weights):
        raise AssertionError("a bad --out must be refused before the weights are loaded")

    monkeypatch.setattr(clipmc.export.weights, "load_model_weights", no_load)
    assert main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o.bin")]) == 2
    assert ".onnx" in _one_line_error(capsys, "export")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_export_tensorrt_without_tensorrt_is_one_line(cli_onnx, tmp_path, capsys):
    code = main(["export", "tensorrt", "--onnx", str(cli_onnx), "--out", str(tmp_path / "eng"), "--fp16"])
    assert code == 2
    assert "clipmc[gpu]" in _one_line_error(capsys, "export")
    bad = ["export", "tensorrt", "--onnx", str(cli_onnx), "--out", str(tmp_path), "--batch-sizes", "1,x"]
    assert main(bad) == 2
    assert "--batch-sizes" in _one_line_error(capsys, "export")
