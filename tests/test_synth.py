"""The synthetic generator: real layouts, determinism, argument errors, the CLI, and its speed."""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipmc.model import cli_data
from clipmc.model.synth import SynthError, generate, make_identity, parse_size, render_image

log = logging.getLogger(__name__)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("layout", ["sysu", "regdb", "llcm"])
def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path, layout: str) -> None:
    a = generate(layout, tmp_path / "a", 6, seed=5, images_per_camera=2, workers=2, progress=False)
    b = generate(layout, tmp_path / "b", 6, seed=5, images_per_camera=2, workers=1, progress=False)
    generate(layout, tmp_path / "c", 6, seed=6, images_per_camera=2, workers=1, progress=False)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a.num_images == b.num_images > 0
    assert da == db  # byte-identical, whatever the number of workers
    images = [k for k in da if k.endswith(".jpg")]
    assert len(images) == a.num_images
    common = [k for k in images if k in dc]
    assert common and all(da[k] != dc[k] for k in common)


def test_sysu_layout(tmp_path: Path) -> None:
    s = generate("sysu", tmp_path, 12, seed=1, images_per_camera=3, size=(96, 48), progress=False)
    exp = tmp_path / "exp"
    lists = {n: (exp / f"{n}_id.txt").read_text().splitlines() for n in ("train", "val", "test")}
    ids = {n: [int(x) for x in lines[0].split(",")] for n, lines in lists.items()}
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(1, 13))
    assert len(ids["test"]) == 4 and len(ids["val"]) == 2
    assert sorted(ids["test"]) == s.test_ids
    for cam in range(1, 7):
        assert (tmp_path / f"cam{cam}").is_dir()
    files = sorted(tmp_path.glob("cam*/*/*.jpg"))
    assert len(files) == s.num_images
    for f in files:
        assert len(f.parent.name) == 4 and f.parent.name.isdigit()
        assert len(f.stem) == 4 and f.stem.isdigit()
    with Image.open(files[0]) as im:
        assert im.size == (48, 96) and im.mode == "RGB"
    # Every identity is seen by at least one visible and one infrared camera.
    for pid in range(1, 13):
        cams = {int(p.parent.parent.name[3:]) for p in files if p.parent.name == f"{pid:04d}"}
        assert cams & {1, 2, 4, 5} and cams & {3, 6}
    # Infrared images are grey (equal channels), visible ones are not.
    ir = np.asarray(Image.open(next(tmp_path.glob("cam3/*/*.jpg"))).convert("RGB")).astype(int)
    vis = np.asarray(Image.open(next(tmp_path.glob("cam1/*/*.jpg"))).convert("RGB")).astype(int)
    assert np.abs(ir[..., 0] - ir[..., 1]).mean() < 2 and np.abs(vis[..., 0] - vis[..., 1]).mean() > 5


def test_regdb_layout(tmp_path: Path) -> None:
    generate("regdb", tmp_path, 8, seed=2, images_per_camera=2, progress=False)
    idx = tmp_path / "idx"
    for split in range(1, 11):
        train = {}
        for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
            lines = (idx / f"train_{modality}_{split}.txt").read_text().splitlines()
            test = (idx / f"test_{modality}_{split}.txt").read_text().splitlines()
            assert len(lines) == len(test) == 8  # 4 identities x 2 images each side
            for line in lines + test:
                rel, label = line.split(" ")
                assert rel.startswith(folder + "/") and (tmp_path / rel).is_file()
                int(label)
            train[modality] = sorted({int(line.split(" ")[1]) for line in lines})
        assert train["visible"] == train["thermal"] == [0, 1, 2, 3]
    # The splits are different random partitions (8 ids choose 4: two may coincide by chance).
    assert len({(idx / f"test_visible_{k}.txt").read_text() for k in range(1, 11)}) >= 5


def test_llcm_layout(tmp_path: Path) -> None:
    s = generate("llcm", tmp_path, 9, seed=3, images_per_camera=2, progress=False)
    idx = tmp_path / "idx"
    test_ids = [int(x) for x in (idx / "test_id.txt").read_text().splitlines()[0].split(",")]
    assert test_ids == s.test_ids and len(test_ids) == 3
    for tag in ("vis", "nir"):
        lines = (idx / f"train_{tag}.txt").read_text().splitlines()
        assert lines
        for line in lines:
            rel, label = line.split(" ")
            assert rel.startswith(f"train_{tag}/cam") and (tmp_path / rel).is_file()
            assert int(rel.split("/")[2]) in s.train_ids and 0 <= int(label) < len(s.train_ids)
        test_files = list(tmp_path.glob(f"test_{tag}/cam*/*/*.jpg"))
        assert {int(p.parent.name) for p in test_files} == set(test_ids)
    # LLCM has no NIR camera 3.
    assert not list(tmp_path.glob("*_nir/cam3"))


def test_identities_differ_and_infrared_keeps_patterns() -> None:
    a, b = make_identity(0, 1), make_identity(0, 2)
    assert a != b and make_identity(0, 1) == a
    # The same person in the two modalities: the infrared image has no colour but still has structure.
    vis = render_image(0, "sysu", 1, 1, 0, 1, (128, 64)).astype(float)
    ir = render_image(0, "sysu", 1, 3, 1, 1, (128, 64)).astype(float)
    assert np.abs(ir[..., 0] - ir[..., 2]).max() == 0
    assert ir[..., 0].std() > 10 and vis.std() > 10


def test_argument_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(SynthError, match="not an empty folder"):
        generate("sysu", tmp_path / "full", 4, progress=False)
    with pytest.raises(SynthError, match="unknown layout"):
        generate("market", tmp_path / "m", 4, progress=False)
    with pytest.raises(SynthError, match="--ids"):
        generate("sysu", tmp_path / "n", 1, progress=False)
    with pytest.raises(SynthError, match="--test-ids"):
        generate("sysu", tmp_path / "t", 4, test_ids=4, progress=False)
    with pytest.raises(SynthError, match="HxW"):
        parse_size("128by64")
    assert parse_size("288x144") == (288, 144)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="clipmc")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["synth", "--layout", "sysu", "--out", str(tmp_path / "s"), "--ids", "5", "--images-per-camera", "1",
         "--size", "64x32", "--quiet"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "sysu images" in capsys.readouterr().out
    assert (tmp_path / "s" / "exp" / "test_id.txt").is_file()
    args = parser.parse_args(["synth", "--layout", "sysu", "--out", str(tmp_path / "s"), "--ids", "5", "--quiet"])
    assert args.func(args) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_speed_note(tmp_path: Path) -> None:
    """Measures throughput for the report (not asserted: the machine is shared)."""
    s = generate("sysu", tmp_path, 30, seed=0, images_per_camera=6, workers=2, progress=False)
    log.warning("synth speed: %d crops of 128x64 in %.2fs = %.0f crops/min", s.num_images, s.seconds,
                s.images_per_minute)  # fmt: skip
    assert s.num_images > 0
    # The summary counts what was written: every planned crop is a file on disk, and the rate follows from it.
    assert s.num_images == sum(1 for _ in tmp_path.glob("cam*/*/*.jpg"))
    assert s.images_per_minute == pytest.approx(s.num_images / s.seconds * 60)
