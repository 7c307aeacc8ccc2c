"""Dataset readers on synthetic trees in the three real layouts, and their errors on broken trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipmc.model.data import DatasetError, LLCMDataset, RegDBDataset, SYSUDataset, detect_layout, load_dataset
from clipmc.model.data.records import camera_from_path


def _copy(synth_trees: dict[str, Path], layout: str, tmp_path: Path) -> Path:
    dst = tmp_path / layout
    shutil.copytree(synth_trees[layout], dst)
    return dst


def test_sysu_reader(synth_trees: dict[str, Path]) -> None:
    root = synth_trees["sysu"]
    ds = load_dataset("sysu", root)
    assert isinstance(ds, SYSUDataset)
    exp = root / "exp"
    trainval = sorted(
        int(x) for n in ("train", "val") for x in (exp / f"{n}_id.txt").read_text().splitlines()[0].split(",")
    )
    files = [p for pid in trainval for p in root.glob(f"cam*/{pid:04d}/*.jpg")]
    assert len(ds.train) == len(files)
    assert ds.label_to_pid == trainval and ds.num_classes == len(trainval)
    assert {r.pid for r in ds.train} == set(range(ds.num_classes))
    for r in ds.train:
        assert ds.label_to_pid[r.pid] == int(Path(r.path).parent.name)
        assert r.modality == (1 if r.camid in (3, 6) else 0)
        assert r.camid == int(Path(r.path).parent.parent.name[3:])
    assert set(ds.settings) == {"all", "indoor"}
    assert ds.settings["all"].trials == tuple(range(10)) and ds.settings["all"].rule == "sysu"


def test_regdb_reader(synth_trees: dict[str, Path]) -> None:
    root = synth_trees["regdb"]
    ds = load_dataset("regdb", root, split=3)
    assert isinstance(ds, RegDBDataset)
    lines = (root / "idx" / "train_visible_3.txt").read_text().splitlines()
    assert sum(r.modality == 0 for r in ds.train) == len(lines)
    assert ds.num_classes == 5 and {r.pid for r in ds.train} == set(range(5))
    q, g = ds.query_gallery("visible_to_thermal", 3)
    assert {r.modality for r in q} == {0} and {r.modality for r in g} == {1}
    assert {r.camid for r in q} == {1} and {r.camid for r in g} == {2}
    test_lines = (root / "idx" / "test_visible_3.txt").read_text().splitlines()
    assert [r.path for r in q] == [str(root / line.split(" ")[0]) for line in test_lines]
    q2, g2 = ds.query_gallery("thermal_to_visible", 3)
    assert q2 == g and g2 == q
    assert ds.settings["visible_to_thermal"].trials == (3,)
    with pytest.raises(DatasetError, match=r"split 3 is loaded.*split=4"):
        ds.query_gallery("visible_to_thermal", 4)
    with pytest.raises(DatasetError, match=r"1\.\.10"):
        load_dataset("regdb", root, split=11)


def test_llcm_reader(synth_trees: dict[str, Path]) -> None:
    root = synth_trees["llcm"]
    ds = load_dataset("llcm", root)
    assert isinstance(ds, LLCMDataset)
    n_vis = len((root / "idx" / "train_vis.txt").read_text().splitlines())
    n_nir = len((root / "idx" / "train_nir.txt").read_text().splitlines())
    assert len(ds.train) == n_vis + n_nir
    assert ds.num_classes == 8
    for r in ds.train:
        assert r.camid == int(Path(r.path).parent.parent.name[3:])
        assert ("train_nir" in r.path) == (r.modality == 1)
    assert set(ds.settings) == {"ir_to_visible", "visible_to_ir"}


def test_load_dataset_by_folder_and_errors(synth_trees: dict[str, Path], tmp_path: Path) -> None:
    for layout, root in synth_trees.items():
        assert detect_layout(root) == layout
        assert load_dataset(str(root)).name == layout
    with pytest.raises(DatasetError, match="unknown dataset 'market'"):
        load_dataset("market")
    with pytest.raises(DatasetError, match="needs its root"):
        load_dataset("sysu")
    with pytest.raises(DatasetError, match=r"does not take option\(s\) \['split'\]"):
        load_dataset("sysu", synth_trees["sysu"], split=2)
    with pytest.raises(DatasetError, match="not a known dataset layout"):
        load_dataset(tmp_path)
    ds = load_dataset("sysu", synth_trees["sysu"])
    with pytest.raises(DatasetError, match="unknown evaluation setting 'outdoor'"):
        ds.query_gallery("outdoor", 0)
    with pytest.raises(DatasetError, match="non-negative"):
        ds.query_gallery("all", -1)


def test_missing_folder_is_named(synth_trees: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(synth_trees, "sysu", tmp_path)
    shutil.rmtree(root / "cam4")
    with pytest.raises(DatasetError, match=rf"folder {root / 'cam4'} does not exist"):
        load_dataset("sysu", root)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("sysu", tmp_path / "nowhere")
    llcm = _copy(synth_trees, "llcm", tmp_path)
    shutil.rmtree(llcm / "test_nir")
    with pytest.raises(DatasetError, match=rf"{llcm / 'test_nir'} does not exist"):
        load_dataset("llcm", llcm)
    regdb = _copy(synth_trees, "regdb", tmp_path)
    (regdb / "idx" / "test_thermal_2.txt").unlink()
    with pytest.raises(DatasetError, match=rf"{regdb / 'idx' / 'test_thermal_2.txt'} does not exist"):
        load_dataset("regdb", regdb, split=2)


def test_malformed_index_line_names_file_and_line(synth_trees: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(synth_trees, "regdb", tmp_path)
    index = root / "idx" / "train_thermal_1.txt"
    lines = index.read_text().splitlines()
    lines[2] = lines[2].split(" ")[0] + " seven"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{index} line 3: expected '<relative path> <integer label>'"):
        load_dataset("regdb", root, split=1)
    llcm = _copy(synth_trees, "llcm", tmp_path)
    index = llcm / "idx" / "train_vis.txt"
    lines = index.read_text().splitlines()
    lines[0] = "train_vis/cam1/9999/missing.jpg 0"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{index} line 1: listed image .*missing.jpg does not exist"):
        load_dataset("llcm", llcm)


def test_malformed_id_list_and_stray_file(synth_trees: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(synth_trees, "sysu", tmp_path)
    test_ids = root / "exp" / "test_id.txt"
    original = test_ids.read_text()
    test_ids.write_text(original.replace(",", ",x", 1))
    with pytest.raises(DatasetError, match=rf"{test_ids}: malformed identity list: 'x\d+'"):
        load_dataset("sysu", root)
    test_ids.write_text("")
    with pytest.raises(DatasetError, match=rf"{test_ids}: empty identity list"):
        load_dataset("sysu", root)
    test_ids.write_text(original)
    first = int(original.split(",")[0])
    folder = next(p for p in root.glob(f"cam[36]/{first:04d}") if p.is_dir())
    (folder / "notes.txt").write_text("stray")
    ds = load_dataset("sysu", root)
    with pytest.raises(DatasetError, match=r"notes.txt is not an image file"):
        ds.query_gallery("all", 0)


def test_camera_from_path() -> None:
    assert camera_from_path("/d/test_vis/cam7/0001/a.jpg") == 7
    assert camera_from_path("/d/nir/0001/0001_c06_s1_f2_nir.jpg") == 6
    assert camera_from_path("/d/Visible/0001/x.bmp") == 0
