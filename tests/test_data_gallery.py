"""The SYSU-MM01 and LLCM gallery samplers pick the files that the PROTOCOLS.md procedure picks.

The expected draws are re-derived here with the procedure as written: Python's global random seeded
with the trial, ids in sorted order, cameras in the protocol order, one random.choice over each existing
folder's sorted os.listdir, missing folders skipped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from clipmc.model.data import load_dataset
from clipmc.model.synth import generate


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sysu")
    generate("sysu", root, 24, seed=11, images_per_camera=4, size=(32, 16), progress=False)
    return root


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llcm")
    generate("llcm", root, 15, seed=12, images_per_camera=3, size=(32, 16), progress=False)
    return root


def _procedure(root: Path, id_file: str, camera_dirs: list[str], trial: int) -> list[str]:
    with open(root / id_file) as f:
        ids = ["%04d" % int(x) for x in f.read().splitlines()[0].split(",")]  # noqa: UP031
    random.seed(trial)
    picked = []
    for pid in sorted(ids):
        for cam in camera_dirs:
            folder = os.path.join(root, cam, pid)
            if os.path.isdir(folder):
                picked.append(random.choice(sorted(os.path.join(folder, n) for n in os.listdir(folder))))
    return picked


@pytest.mark.parametrize(("mode", "cams"), [("all", ["cam1", "cam2", "cam4", "cam5"]), ("indoor", ["cam1", "cam2"])])
@pytest.mark.parametrize("trial", [0, 1, 7])
def test_sysu_gallery_matches_procedure(sysu_root: Path, mode: str, cams: list[str], trial: int) -> None:
    ds = load_dataset("sysu", sysu_root)
    state = random.getstate()
    _, gallery = ds.query_gallery(mode, trial)
    assert random.getstate() == state  # the sampler leaves the global generator alone
    expected = _procedure(sysu_root, "exp/test_id.txt", cams, trial)
    assert [r.path for r in gallery] == expected
    # Some (identity, camera) folders are missing in the synthetic tree, so the skipping is exercised.
    test_ids = {int(x) for x in (sysu_root / "exp/test_id.txt").read_text().split(",")}
    assert len(gallery) < len(test_ids) * len(cams)
    for r in gallery:
        assert r.camid == int(Path(r.path).parent.parent.name[3:]) and r.pid == int(Path(r.path).parent.name)
        assert r.modality == 0


def test_sysu_trials_differ_and_indoor_is_not_a_subset(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    all0 = [r.path for r in ds.query_gallery("all", 0)[1]]
    all1 = [r.path for r in ds.query_gallery("all", 1)[1]]
    indoor0 = [r.path for r in ds.query_gallery("indoor", 0)[1]]
    assert all0 != all1
    assert not set(indoor0) <= set(all0)  # the draw order differs between modes


def test_sysu_query_is_every_cam3_cam6_test_image(sysu_root: Path) -> None:
    ds = load_dataset("sysu", sysu_root)
    q0, _ = ds.query_gallery("all", 0)
    q1, _ = ds.query_gallery("indoor", 5)
    assert [r.path for r in q0] == [r.path for r in q1]
    test_ids = sorted(int(x) for x in (sysu_root / "exp/test_id.txt").read_text().split(","))
    expected = []
    for pid in test_ids:
        for cam in ("cam3", "cam6"):
            folder = sysu_root / cam / f"{pid:04d}"
            if folder.is_dir():
                expected += sorted(str(p) for p in folder.iterdir())
    assert [r.path for r in q0] == expected
    assert {r.camid for r in q0} <= {3, 6} and all(r.modality == 1 for r in q0)


@pytest.mark.parametrize(
    ("setting", "gallery_dirs", "query_glob"),
    [
        ("ir_to_visible", [f"test_vis/cam{c}" for c in range(1, 10)], "test_nir/cam*/*/*"),
        ("visible_to_ir", [f"test_nir/cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)], "test_vis/cam*/*/*"),
    ],
)
@pytest.mark.parametrize("trial", [0, 3])
def test_llcm_gallery_matches_procedure(
    llcm_root: Path, setting: str, gallery_dirs: list[str], query_glob: str, trial: int
) -> None:
    ds = load_dataset("llcm", llcm_root)
    query, gallery = ds.query_gallery(setting, trial)
    assert [r.path for r in gallery] == _procedure(llcm_root, "idx/test_id.txt", gallery_dirs, trial)
    assert {r.path for r in query} == {str(p) for p in llcm_root.glob(query_glob)}
    assert {r.modality for r in query} == {1 if setting == "ir_to_visible" else 0}
    assert {r.modality for r in gallery} == {0 if setting == "ir_to_visible" else 1}
