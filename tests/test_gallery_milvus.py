"""The Milvus back-end against Milvus Lite (<3.0: Milvus's C++ core), behind the same interface."""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import numpy as np
import pytest


def _milvus_lite_problem() -> str | None:
    try:
        version = importlib.metadata.version("milvus-lite")
    except importlib.metadata.PackageNotFoundError:
        return "milvus-lite is not installed (pip install 'clipmc[milvus]')"
    if int(version.split(".")[0]) >= 3:
        return f"milvus-lite {version} is the pure-Python 3.x line, not Milvus's C++ core; pin <3"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # milvus-lite 2.5 imports the deprecated pkg_resources
            import milvus_lite  # noqa: F401
            import pymilvus  # noqa: F401
    except ImportError as exc:
        return f"pymilvus / milvus-lite cannot be imported: {exc}"
    return None


PROBLEM = _milvus_lite_problem()
pytestmark = [
    pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

from clipmc.gallery import (  # noqa: E402
    DimensionMismatchError,
    Filters,
    GalleryError,
    Item,
    VersionMismatchError,
    open_gallery,
)
from clipmc.gallery.milvus_backend import filter_expression  # noqa: E402
from clipmc.gallery.portable import export_gallery, import_gallery  # noqa: E402
from tests.test_gallery import unit_vectors  # noqa: E402

DIM = 16
VERSION = "milvus-test"


def make_items(n: int, seed: int) -> list[Item]:
    x = unit_vectors(np.random.default_rng(seed), n, DIM)
    return [
        Item(
            x[i],
            i % 2,
            camera=f'cam"{i % 4}',  # a quote, to exercise expression escaping
            external_id=f"m{seed}-{i}",
            timestamp=None if i % 9 == 0 else float(i * 10),
            identity="ann" if i % 4 == 0 else None,
            metadata={"i": i},
        )
        for i in range(n)
    ]


def brute_force(items: dict[int, Item], query: np.ndarray, top_k: int, filters: Filters) -> list[int]:
    ids = [i for i, item in items.items() if filters.matches(item)]
    scores = np.array([float(items[i].vector @ query) for i in ids])
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:top_k]]


MILVUS_FILTERS = [
    Filters(),
    Filters(modality="visible"),
    Filters(cameras=['cam"1', 'cam"2']),
    Filters(exclude_cameras=['cam"0']),
    Filters(since=100.0, until=400.0),
    Filters(has_identity=True, modality=0),
    Filters(cameras=[]),
]


def test_filter_expression() -> None:
    assert filter_expression(Filters()) == ""
    expression = filter_expression(Filters(modality=1, cameras=['a"b', 3], since=5, has_identity=False))
    assert expression == (
        'modality == 1 and camera in ["a\\"b", "3"] and (has_timestamp == true and timestamp >= 5.0)'
        " and has_identity == false"
    )


def test_milvus_gallery_matches_brute_force_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "milvus"
    reference: dict[int, Item] = {}
    queries = unit_vectors(np.random.default_rng(1), 3, DIM)
    with open_gallery(path, DIM, VERSION, backend="milvus") as gallery:
        assert gallery.backend == "milvus"
        items = make_items(60, seed=1)
        result = gallery.add(items)
        assert (result.created, result.existing) == (60, 0)
        assert len(set(result.ids)) == 60
        reference.update(zip(result.ids, items, strict=True))
        again = gallery.add(items[:10])  # idempotent on external_id
        assert (again.ids, again.created, again.existing) == (result.ids[:10], 0, 10)
        twice = make_items(1, seed=2)
        duplicate = gallery.add([twice[0], twice[0]])  # the same external id twice in one batch
        assert (duplicate.ids[0], duplicate.created, duplicate.existing) == (duplicate.ids[1], 1, 1)
        with pytest.raises(GalleryError, match="positive id to be kept"):
            gallery.add(make_items(1, seed=4), keep_ids=True)
        with pytest.raises(GalleryError, match="filters"):
            gallery.search(queries[0], filters={"modality": 0})  # type: ignore[arg-type]
        assert gallery.remove([duplicate.ids[0]]) == 1
        assert gallery.remove([*result.ids[:5], 123]) == 5
        for item_id in result.ids[:5]:
            del reference[item_id]
        assert gallery.get(result.ids[0]) is None
        updated = gallery.update(result.ids[7], identity="bea", metadata={"x": 1})
        assert updated.id == result.ids[7]
        reference[result.ids[7]].identity = "bea"
        assert gallery.stats()["count"] == 55
        for filters in MILVUS_FILTERS:
            for query, hits in zip(queries, gallery.search(queries, 12, filters), strict=True):
                assert [h.id for h in hits] == brute_force(reference, query, 12, filters), filters
                for hit in hits:
                    assert hit.score == pytest.approx(float(reference[hit.id].vector @ query), abs=1e-5)
                    assert filters.matches(hit.item)
        with pytest.raises(DimensionMismatchError):
            gallery.add([Item(np.ones(8, np.float32) / np.sqrt(8), 0)])
        with pytest.raises(VersionMismatchError):
            gallery.search(queries[0], embedding_version="other")
        gallery.snapshot()

    with open_gallery(path, backend="milvus") as reopened:
        assert (reopened.dim, reopened.embedding_version) == (DIM, VERSION)
        assert reopened.stats()["count"] == 55
        stored = reopened.get(result.ids[7])
        assert (stored.identity, stored.metadata, stored.camera) == ("bea", {"x": 1}, 'cam"3')
        np.testing.assert_allclose(stored.vector, items[7].vector)
        hits = reopened.search(queries[0], 5, Filters(has_identity=True))[0]
        assert [h.id for h in hits] == brute_force(reference, queries[0], 5, Filters(has_identity=True))
    with pytest.raises(VersionMismatchError):
        open_gallery(path, DIM, "other", backend="milvus")
    with pytest.raises(GalleryError, match="needs dim"):
        open_gallery(tmp_path / "empty", backend="milvus")
    with pytest.raises(GalleryError, match="non-empty string"):
        open_gallery(tmp_path / "blank", DIM, "", backend="milvus")


def test_export_from_faiss_import_into_milvus(tmp_path: Path) -> None:
    items = make_items(40, seed=3)
    with open_gallery(tmp_path / "faiss", DIM, VERSION) as source:
        ids = source.add(items).ids
        export_gallery(source, tmp_path / "export")
        query = items[0].vector
        want = [h.id for h in source.search(query, 10, Filters(modality=0))[0]]
    with open_gallery(tmp_path / "milvus", DIM, VERSION, backend="milvus") as target:
        result = import_gallery(target, tmp_path / "export")
        assert (result["created"], result["kept_ids"]) == (40, True)
        assert [h.id for h in target.search(query, 10, Filters(modality=0))[0]] == want
        exported = {item.id: item for batch in target.iter_items(batch_size=16) for item in batch}
        assert sorted(exported) == sorted(ids)
        assert exported[ids[3]].to_dict() == {**items[3].to_dict(), "id": ids[3]}


def test_milvus_ids_stay_below_2_53_and_unique(tmp_path: Path) -> None:
    """Issue 16 item 12: ids travel as JSON numbers into the web page; a JavaScript number holds 2**53-1."""
    from clipmc.gallery.items import MAX_ITEM_ID
    from clipmc.gallery.milvus_backend import _IdGenerator

    generator = _IdGenerator()
    ids = generator.take(5000)  # more than one tick's 1024: waits for the next tick
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert max(ids) <= MAX_ITEM_ID and float(max(ids)) == max(ids)  # exact as a double
    with open_gallery(tmp_path / "milvus", DIM, VERSION, backend="milvus") as gallery:
        stored = gallery.add(make_items(20, seed=12)).ids
        assert all(0 < i <= MAX_ITEM_ID for i in stored)


def test_milvus_erase_by_filter(tmp_path: Path) -> None:
    from clipmc.gallery import EraseFilter

    with open_gallery(tmp_path / "milvus", DIM, VERSION, backend="milvus") as gallery:
        items = make_items(12, seed=13)
        for i, item in enumerate(items):
            item.identity = f"p{i % 3}"
        ids = gallery.add(items).ids
        erased = gallery.erase(EraseFilter(identity="p1"))
        assert sorted(erased) == sorted(ids[i] for i in range(12) if i % 3 == 1)
        assert gallery.stats()["count"] == 8
        assert gallery.find_ids(EraseFilter(cameras=['cam"0'])) == sorted(ids[i] for i in (0, 8))  # 4 is erased
