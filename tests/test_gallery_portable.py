"""Gallery export/import round trip and the ``clipmc gallery`` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from clipmc.gallery import Filters, GalleryError, Item, VersionMismatchError, open_gallery
from clipmc.gallery.cli import register
from clipmc.gallery.portable import ITEMS_NAME, MANIFEST_NAME, VECTORS_NAME, export_gallery, import_gallery
from tests.test_gallery import unit_vectors

DIM = 16
VERSION = "portable-test"


def make_items(n: int, seed: int = 0) -> list[Item]:
    x = unit_vectors(np.random.default_rng(seed), n, DIM)
    return [
        Item(
            x[i],
            i % 2,
            camera=f"cam{i % 4}",
            external_id=None if i % 5 == 0 else f"x{i}",
            timestamp=1_700_000_000.0 + i if i % 7 else None,
            track_id=i // 3,
            identity="zoë" if i % 6 == 0 else None,
            metadata={"i": i, "note": 'ünïcode "quoted"'},
        )
        for i in range(n)
    ]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source"
    with open_gallery(path, DIM, VERSION) as gallery:
        ids = gallery.add(make_items(120)).ids
        gallery.remove(ids[10:20])  # holes in the id sequence must survive the round trip
    return path


def snapshot_of(gallery) -> dict[int, tuple[dict, np.ndarray]]:
    out = {}
    for batch in gallery.iter_items(batch_size=32):
        for item in batch:
            out[item.id] = (item.to_dict(), item.vector)
    return out


def test_export_import_round_trip(tmp_path: Path, source: Path) -> None:
    with open_gallery(source) as gallery:
        manifest = export_gallery(gallery, tmp_path / "export", batch_size=25)
        original = snapshot_of(gallery)
        query = make_items(1, seed=5)[0].vector
        original_hits = gallery.search(query, 15, Filters(modality=1))[0]
    assert manifest["count"] == 110
    assert json.loads((tmp_path / "export" / MANIFEST_NAME).read_text())["dim"] == DIM

    with open_gallery(tmp_path / "copy", DIM, VERSION) as copy:
        result = import_gallery(copy, tmp_path / "export", batch_size=40)
        assert result == {"count": 110, "created": 110, "existing": 0, "kept_ids": True}
        restored = snapshot_of(copy)
        assert restored.keys() == original.keys()
        for item_id, (fields, vector) in original.items():
            assert restored[item_id][0] == fields
            np.testing.assert_array_equal(restored[item_id][1], vector)
        hits = copy.search(query, 15, Filters(modality=1))[0]
        assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in original_hits]
        again = import_gallery(copy, tmp_path / "export", keep_ids=True)  # a re-run stores nothing twice
        assert (again["created"], again["existing"]) == (0, 110)
        assert copy.stats()["count"] == 110

    with open_gallery(tmp_path / "other", DIM, VERSION) as other:
        other.add(make_items(3, seed=9))  # external ids x1 and x2 are also in the export
        result = import_gallery(other, tmp_path / "export")  # not empty: new ids
        assert result["kept_ids"] is False
        assert (result["created"], result["existing"]) == (108, 2)
        assert other.stats()["count"] == 111


def test_import_refuses_damaged_or_foreign_exports(tmp_path: Path, source: Path) -> None:
    with open_gallery(source) as gallery:
        export_gallery(gallery, tmp_path / "export")
        with pytest.raises(GalleryError, match="not an empty directory"):
            export_gallery(gallery, tmp_path / "export")
    with open_gallery(tmp_path / "wrong", DIM, "another-model") as wrong, pytest.raises(VersionMismatchError):
        import_gallery(wrong, tmp_path / "export")
    items = tmp_path / "export" / ITEMS_NAME
    items.write_text(items.read_text().replace("cam1", "cam9", 1))
    with open_gallery(tmp_path / "copy", DIM, VERSION) as copy:
        with pytest.raises(GalleryError, match="checksum"):
            import_gallery(copy, tmp_path / "export")
        vectors = tmp_path / "export" / VECTORS_NAME
        vectors.write_bytes(vectors.read_bytes()[:-4])
        with pytest.raises(GalleryError, match="float32"):
            import_gallery(copy, tmp_path / "export")
        with pytest.raises(GalleryError, match="not a gallery export"):
            import_gallery(copy, tmp_path)
        assert copy.stats()["count"] == 0


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="clipmc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_stats_export_import_rebuild(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("gallery", "stats", str(source), "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["count"], stats["dim"], stats["embedding_version"]) == (110, DIM, VERSION)

    assert run_cli("gallery", "stats", str(source)) == 0
    assert "embedding_version" in capsys.readouterr().out

    export_dir = tmp_path / "exported"
    assert run_cli("gallery", "export", str(source), str(export_dir)) == 0
    assert "exported 110 items" in capsys.readouterr().out

    target = tmp_path / "imported"
    assert run_cli("gallery", "import", str(export_dir), str(target)) == 0
    assert "110 created" in capsys.readouterr().out
    assert run_cli("gallery", "import", str(export_dir), str(target), "--ids", "keep") == 0
    assert "0 created, 110 already present" in capsys.readouterr().out

    assert run_cli("gallery", "rebuild", str(target), "--kind", "ivf", "--nlist", "2", "--nprobe", "2") == 0
    out = capsys.readouterr().out
    assert "rebuilt a ivf index of 110 vectors" in out and "recall@10 1.000" in out
    with open_gallery(target) as gallery:  # the rebuilt snapshot is what a plain open uses
        assert gallery.stats()["index"]["kind"] == "ivf"

    with open_gallery(source):  # stats and export work read-only while a writer holds the gallery
        assert run_cli("gallery", "stats", str(source), "--json") == 0
        assert json.loads(capsys.readouterr().out)["count"] == 110
        assert run_cli("gallery", "rebuild", str(source)) == 2
        assert "another process" in capsys.readouterr().err


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("gallery", "stats", str(tmp_path / "nothing")) == 2
    assert "error: no gallery at" in capsys.readouterr().err
    assert run_cli("gallery", "rebuild", str(tmp_path / "nothing")) == 2
    assert "error: no gallery at" in capsys.readouterr().err
    assert run_cli("gallery", "import", str(tmp_path), str(tmp_path / "g")) == 2
    assert "not a gallery export" in capsys.readouterr().err
    assert run_cli("gallery", "stats", str(tmp_path), "--collection", "x") == 2
    assert "--collection only applies" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("gallery", "export", str(tmp_path), str(tmp_path / "out"), "--batch-size", "0")


def test_ids_a_faiss_gallery_cannot_keep_are_refused_or_renumbered(tmp_path: Path, source: Path, monkeypatch) -> None:
    """A FAISS gallery's filters are arrays indexed by id: a kept id beyond its bound (an export from Milvus
    carries 53-bit ids) is refused with a clear error before anything is stored, instead of allocating the
    id space, and an automatic import into an empty gallery then assigns new ids."""
    from clipmc.gallery import GalleryError
    from clipmc.gallery.faiss_backend import MAX_KEPT_ID, FaissGallery

    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        assert gallery.max_kept_id() == MAX_KEPT_ID
        big = make_items(2, seed=3)
        big[0].id, big[1].id = 2**50, 2**50 + 1
        with pytest.raises(GalleryError, match="--ids new"):
            gallery.add(big, keep_ids=True)
        assert gallery.stats()["count"] == 0
        assert len(gallery.add(big).ids) == 2  # the same items with new ids are fine
    with open_gallery(source) as src:
        manifest = export_gallery(src, tmp_path / "export")
    assert manifest["max_id"] == 120
    monkeypatch.setattr(FaissGallery, "max_kept_id", lambda self: 100)  # the export's ids go to 120
    with open_gallery(tmp_path / "empty", DIM, VERSION) as empty:
        with pytest.raises(GalleryError, match="up to 120"):  # explicit keep: refused up front
            import_gallery(empty, tmp_path / "export", keep_ids=True, batch_size=40)
        assert empty.stats()["count"] == 0  # nothing stored halfway
        result = import_gallery(empty, tmp_path / "export", batch_size=40)
        assert result["kept_ids"] is False and result["created"] == 110
        assert max(item.id for batch in empty.iter_items() for item in batch) <= 110
