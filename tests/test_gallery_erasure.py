"""Erasure that reaches the disk, bulk erasure by filter, and snapshots that fail after a commit
(the FAISS gallery, real SQLite and FAISS files; the service's side is in test_service_hardening.py)."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import numpy as np
import pytest

from clipmc.cli import main
from clipmc.gallery import EraseFilter, GalleryError, Item, open_gallery
from clipmc.gallery.index import VectorIndex

VERSION = "erasure-test-v1"


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def files_holding(folder: Path, *needles: bytes) -> list[str]:
    """Every file under ``folder`` (recursively) that contains any of ``needles``."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path.relative_to(folder)))
    return found


def needles_of(vector: np.ndarray, marker: str) -> tuple[bytes, ...]:
    """The vector's bytes as stored (float32 LE) in full and as 32-byte pieces, and a metadata marker."""
    raw = np.asarray(vector, dtype="<f4").tobytes()
    return (raw, *(raw[i : i + 32] for i in range(0, len(raw) - 31, 32)), marker.encode())


def _items(vectors: np.ndarray, **labels: object) -> list[Item]:
    return [
        Item(
            vector,
            modality=i % 2,
            camera=str(1 + i % 3),
            external_id=f"crop-{i}",
            identity=f"p{i % 4}",
            track_id=f"t{i % 5}",
            timestamp=1_700_000_000.0 + i,
            metadata={"marker": f"MARKER-{i:05d}"},
            **labels,
        )
        for i, vector in enumerate(vectors)
    ]


@pytest.mark.parametrize("dim", [32, 1536])  # 1536 floats: the vector spills to SQLite overflow pages
def test_removed_vector_leaves_every_file_after_compact(tmp_path: Path, dim: int) -> None:
    vectors = unit_vectors(np.random.default_rng(dim), 30, dim)
    path = tmp_path / "g"
    with open_gallery(path, dim, VERSION, snapshot_every=10) as gallery:
        ids = gallery.add(_items(vectors)).ids
        gallery.snapshot()
        needles = needles_of(vectors[7], "MARKER-00007")
        assert files_holding(path, *needles)  # the test can see the bytes while they are stored
        assert gallery.remove([ids[7]]) == 1
        assert gallery.stats()["removed_since_compaction"] == 1
        result = gallery.compact()
        assert result["complete"] and result["removed"] == 1
        assert files_holding(path, *needles) == []
        assert gallery.stats()["removed_since_compaction"] == 0
        # the others are intact and searchable
        hits = gallery.search(vectors[8], top_k=1)[0]
        assert hits[0].id == ids[8] and hits[0].item.metadata == {"marker": "MARKER-00008"}
    assert files_holding(path, *needles) == []
    with open_gallery(path) as reopened:
        assert reopened.stats()["count"] == 29 and reopened.get(ids[7]) is None


def test_erase_by_filter_and_retention_age(tmp_path: Path) -> None:
    vectors = unit_vectors(np.random.default_rng(5), 40, 16)
    with open_gallery(tmp_path / "g", 16, VERSION) as gallery:
        items = _items(vectors)
        items[0].timestamp = None  # no capture time: retention goes by ingest time
        ids = gallery.add(items).ids
        by_id = dict(zip(ids, items, strict=True))
        erased = gallery.erase(EraseFilter(identity="p1"))
        assert erased and all(by_id[i].identity == "p1" for i in erased)
        assert len(erased) == sum(item.identity == "p1" for item in items)
        erased = gallery.erase(EraseFilter(track_id="t2", cameras=["3"]))
        assert all(by_id[i].track_id == "t2" and by_id[i].camera == "3" for i in erased)
        window = gallery.find_ids(EraseFilter(since=1_700_000_010.0, until=1_700_000_012.0))
        assert all(1_700_000_010.0 <= by_id[i].timestamp <= 1_700_000_012.0 for i in window)
        # retention: captured before the cutoff; the item without a capture time counts from its ingest
        old = gallery.find_ids(EraseFilter(older_than=1_700_000_005.0))
        assert old == sorted(i for i in ids[1:5] if gallery.get(i) is not None)
        assert ids[0] in gallery.find_ids(EraseFilter(older_than=time.time() + 60))
        assert ids[0] not in gallery.find_ids(EraseFilter(older_than=time.time() - 3600))
        with pytest.raises(GalleryError, match="at least one condition"):
            EraseFilter()


def test_failed_snapshot_after_a_committed_add_is_logged_and_retried(tmp_path: Path, monkeypatch, caplog) -> None:
    vectors = unit_vectors(np.random.default_rng(3), 12, 16)
    path = tmp_path / "g"
    real_save = VectorIndex.save

    def disk_full(self: VectorIndex, target: Path) -> None:
        Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with open_gallery(path, 16, VERSION, snapshot_every=1) as gallery:
        gallery.add(_items(vectors[:2]))
        monkeypatch.setattr(VectorIndex, "save", disk_full)
        with caplog.at_level("ERROR", logger="clipmc.gallery.faiss_backend"):
            result = gallery.add(_more(vectors[2:6]))
        assert result.created == 4  # the commit is the acknowledgement: no exception
        assert "snapshot failed" in caplog.text
        stats = gallery.stats()
        assert stats["count"] == 6 and "No space left" in stats["snapshot_error"]
        assert [p.name for p in path.iterdir() if p.name.endswith(".tmp")] == []
        monkeypatch.setattr(VectorIndex, "save", real_save)
        gallery.add(_more(vectors[6:7], start=100))  # the next write retries the snapshot
        stats = gallery.stats()
        assert stats["snapshot_error"] is None and stats["snapshot_seq"] == stats["seq"]
    with open_gallery(path) as reopened:
        assert reopened.stats()["count"] == 7


def _more(vectors: np.ndarray, start: int = 50) -> list[Item]:
    return [Item(v, modality=0, camera="1", external_id=f"more-{start + i}") for i, v in enumerate(vectors)]


def test_cli_compact_and_erase(tmp_path: Path, capsys) -> None:
    vectors = unit_vectors(np.random.default_rng(9), 20, 16)
    path = tmp_path / "g"
    with open_gallery(path, 16, VERSION) as gallery:
        ids = gallery.add(_items(vectors)).ids
    needles = needles_of(vectors[4], "MARKER-00004")  # identity p0
    assert main(["gallery", "erase", str(path), "--identity", "p0"]) == 1  # counts, asks for --yes
    assert "5 item(s) match" in capsys.readouterr().err
    assert main(["gallery", "erase", str(path), "--identity", "p0", "--yes"]) == 0
    assert "erased 5 item(s)" in capsys.readouterr().out
    assert files_holding(path, *needles) == []
    with open_gallery(path) as gallery:
        assert gallery.get(ids[4]) is None and gallery.stats()["count"] == 15
        gallery.remove([ids[5]])
    assert main(["gallery", "compact", "--vacuum", str(path)]) == 0
    assert "compacted" in capsys.readouterr().out
    assert files_holding(path, *needles_of(vectors[5], "MARKER-00005")) == []
    assert main(["gallery", "erase", str(path)]) == 2  # no condition: refused
    assert "at least one condition" in capsys.readouterr().err
    assert main(["gallery", "compact", str(tmp_path / "missing")]) == 2
    assert "no gallery" in capsys.readouterr().err


def test_kept_ids_above_2_53_are_refused(tmp_path: Path) -> None:
    """Issue 16 item 12: no back-end stores an id a JavaScript client would round."""
    vector = unit_vectors(np.random.default_rng(1), 1, 16)[0]
    with open_gallery(tmp_path / "g", 16, VERSION) as gallery:
        with pytest.raises(GalleryError, match="2\\*\\*53"):
            gallery.add([Item(vector, modality=0, id=2**53)], keep_ids=True)
        assert gallery.stats()["count"] == 0
