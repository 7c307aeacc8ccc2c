"""Gallery (FAISS back-end): results against NumPy brute force, durability, errors, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from clipmc.gallery import (
    AddResult,
    DimensionMismatchError,
    ExternalIdConflictError,
    FaissGallery,
    Filters,
    GalleryError,
    GalleryStateError,
    IndexConfig,
    Item,
    ItemNotFoundError,
    SearchHit,
    VersionMismatchError,
    open_gallery,
)
from clipmc.gallery.faiss_backend import INDEX_META_NAME, INDEX_NAME
from clipmc.gallery.index import gpu_available

DIM = 32
VERSION = "test-model@abc123"


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_items(rng: np.random.Generator, n: int, prefix: str = "e", dim: int = DIM) -> list[Item]:
    vectors = unit_vectors(rng, n, dim)
    items = []
    for i in range(n):
        items.append(
            Item(
                vector=vectors[i],
                modality=int(rng.integers(0, 2)),
                camera=int(rng.integers(1, 7)),
                external_id=f"{prefix}{i}",
                timestamp=None if i % 11 == 0 else float(rng.uniform(0, 1000)),
                track_id=f"t{i // 4}",
                identity=f"person{i % 13}" if i % 3 == 0 else None,
                metadata={"i": i},
            )
        )
    return items


class Reference:
    """What the gallery should hold, searched by brute force with Filters.matches."""

    def __init__(self) -> None:
        self.items: dict[int, Item] = {}

    def add(self, ids: list[int], items: list[Item]) -> None:
        for item_id, item in zip(ids, items, strict=True):
            self.items.setdefault(item_id, item)

    def remove(self, ids: list[int]) -> None:
        for item_id in ids:
            self.items.pop(item_id, None)

    def search(self, query: np.ndarray, top_k: int, filters: Filters) -> tuple[list[int], np.ndarray]:
        ids = [i for i, item in self.items.items() if filters.matches(item)]
        if not ids:
            return [], np.zeros(0)
        matrix = np.stack([self.items[i].vector for i in ids])
        scores = matrix @ query
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [ids[j] for j in order], scores[order]


FILTERS = [
    Filters(),
    Filters(modality=0),
    Filters(modality="infrared"),
    Filters(cameras=[1, "2"]),
    Filters(exclude_cameras=[3, 4, 5]),
    Filters(since=200.0, until=700.0),
    Filters(since=900.0),
    Filters(has_identity=True),
    Filters(has_identity=False, modality=1, exclude_cameras=["6"]),
    Filters(cameras=["5"], since=100.0, has_identity=True),
    Filters(cameras=[]),
    Filters(cameras=["no-such-camera"]),
]


def assert_matches_reference(gallery, reference: Reference, queries: np.ndarray, top_k: int) -> None:
    for filters in FILTERS:
        results = gallery.search(queries, top_k=top_k, filters=filters)
        assert len(results) == len(queries)
        for query, hits in zip(queries, results, strict=True):
            want_ids, want_scores = reference.search(query, top_k, filters)
            assert [h.id for h in hits] == want_ids, filters
            np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
            for hit in hits:
                assert isinstance(hit, SearchHit)
                assert filters.matches(hit.item)
                assert hit.item.id == hit.id
                assert hit.item.external_id == reference.items[hit.id].external_id


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_add_search_remove_and_filters_agree_with_brute_force(tmp_path: Path, rng: np.random.Generator) -> None:
    reference = Reference()
    queries = unit_vectors(rng, 4)
    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        for batch in range(3):
            items = random_items(rng, 150, prefix=f"b{batch}-")
            result = gallery.add(items)
            assert isinstance(result, AddResult)
            assert (result.created, result.existing) == (150, 0)
            reference.add(result.ids, items)
        assert gallery.stats()["count"] == 450
        for top_k in (1, 10, 200):
            assert_matches_reference(gallery, reference, queries, top_k)

        doomed = [int(i) for i in rng.choice(sorted(reference.items), size=120, replace=False)]
        assert gallery.remove([*doomed, 10_000_000]) == 120
        assert gallery.remove(doomed) == 0
        reference.remove(doomed)
        assert gallery.get(doomed[0]) is None
        assert gallery.stats()["count"] == 330
        assert_matches_reference(gallery, reference, queries, 10)

    with open_gallery(tmp_path / "g", DIM, VERSION) as reopened:
        assert reopened.stats()["count"] == 330
        assert_matches_reference(reopened, reference, queries, 10)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filter_still_returns_top_k_when_enough_items_match(
    tmp_path: Path, rng: np.random.Generator, kind: str
) -> None:
    items = random_items(rng, 600)
    for i, item in enumerate(items):
        item.camera = "rare" if i % 50 == 0 else "common"  # 12 items on the rare camera
    config = IndexConfig(kind=kind, nlist=16, nprobe=1)
    with open_gallery(tmp_path / "g", DIM, VERSION, index=config) as gallery:
        gallery.add(items)
        assert gallery.stats()["index"]["kind"] == kind
        queries = unit_vectors(rng, 8)
        for hits in gallery.search(queries, top_k=10, filters=Filters(cameras=["rare"])):
            assert len(hits) == 10
            assert {hit.item.camera for hit in hits} == {"rare"}
        for hits in gallery.search(queries, top_k=50, filters=Filters(cameras=["rare"])):
            assert len(hits) == 12  # all that match, no more
        for hits in gallery.search(queries, top_k=600):
            assert len(hits) == 600


def test_ivf_recall_is_measured_and_auto_switch(tmp_path: Path, rng: np.random.Generator) -> None:
    reference = Reference()
    config = IndexConfig(kind="auto", ivf_threshold=500, nlist=8, nprobe=8)
    queries = unit_vectors(rng, 4)
    with open_gallery(tmp_path / "g", DIM, VERSION, index=config) as gallery:
        items = random_items(rng, 400)
        reference.add(gallery.add(items).ids, items)
        assert gallery.stats()["index"]["kind"] == "flat"
        items = random_items(rng, 200, prefix="more")
        reference.add(gallery.add(items).ids, items)
        index = gallery.stats()["index"]
        assert index["kind"] == "ivf"
        assert index["nlist"] == 8
        assert index["recall_at_10"] == pytest.approx(1.0)  # nprobe == nlist scans everything
        assert_matches_reference(gallery, reference, queries, 10)
    with open_gallery(tmp_path / "g", DIM, VERSION, index=config) as reopened:
        assert reopened.stats()["index"]["kind"] == "ivf"
        assert reopened.stats()["index"]["recall_at_10"] == pytest.approx(1.0)
        assert_matches_reference(reopened, reference, queries, 10)
    fewer_probes = IndexConfig(kind="auto", ivf_threshold=500, nlist=8, nprobe=2)
    with open_gallery(tmp_path / "g", DIM, VERSION, index=fewer_probes) as reopened:
        index = reopened.stats()["index"]
        assert (index["kind"], index["nprobe"]) == ("ivf", 2)
        assert index["recall_at_10"] is None  # measured at another nprobe: not reported as this one's
        for filters in FILTERS:  # fewer probes, yet filtered searches still fill their top-k
            for query, hits in zip(queries, reopened.search(queries, 10, filters), strict=True):
                assert len(hits) == len(reference.search(query, 10, filters)[0])


def test_ivf_splits_a_query_over_its_lists_with_the_same_answer(tmp_path: Path, rng: np.random.Generator) -> None:
    import faiss

    from clipmc.gallery.index import IVF_PARALLEL_MODE, VectorIndex

    vectors = unit_vectors(rng, 800)
    queries = unit_vectors(rng, 5)
    ivf = VectorIndex.ivf(DIM, vectors, 8, nprobe=4, iterations=5, seed=0)
    ivf.cpu.add_with_ids(vectors, np.arange(800, dtype=np.int64))
    assert IVF_PARALLEL_MODE == 1 and ivf.cpu.parallel_mode == IVF_PARALLEL_MODE
    ivf.save(tmp_path / "ivf.faiss")
    loaded = VectorIndex.load(tmp_path / "ivf.faiss", nprobe=4)
    assert loaded.cpu.parallel_mode == IVF_PARALLEL_MODE  # not stored in the file: set again on load
    params = faiss.SearchParametersIVF(nprobe=4)
    split = loaded.cpu.search(queries, 10, params=params)
    loaded.cpu.parallel_mode = 0  # FAISS's default: one thread per query
    per_query = loaded.cpu.search(queries, 10, params=params)
    assert np.array_equal(split[1], per_query[1]) and np.allclose(split[0], per_query[0])


def test_reingest_with_same_external_ids_adds_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    items = random_items(rng, 40)
    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        first = gallery.add(items)
        seq = gallery.stats()["seq"]
        # same external ids, cameras and modalities, other vectors and other labels: nothing is stored
        again_items = random_items(np.random.default_rng(99), 40)
        for old, new in zip(items, again_items, strict=True):
            new.camera, new.modality = old.camera, old.modality
        again = gallery.add(again_items)
        assert again.ids == first.ids
        assert (again.created, again.existing) == (0, 40)
        assert gallery.stats()["count"] == 40
        assert gallery.stats()["seq"] == seq  # nothing was written
        mixed = gallery.add([*items[:5], *random_items(rng, 3, prefix="new")])
        assert mixed.ids[:5] == first.ids[:5]
        assert (mixed.created, mixed.existing) == (3, 5)
        twice = random_items(rng, 1, prefix="dup")
        duplicate = gallery.add([twice[0], twice[0]])  # the same external id twice in one batch
        assert duplicate.ids[0] == duplicate.ids[1]
        assert (duplicate.created, duplicate.existing) == (1, 1)
        no_key = random_items(rng, 2)
        for item in no_key:
            item.external_id = None
        assert gallery.add(no_key).created == 2
        assert gallery.add(no_key).created == 2  # without an external id every add is new
        assert gallery.stats()["count"] == 40 + 3 + 1 + 4
        # a stored external id with another camera or modality names another crop: refused, not skipped
        other_camera = random_items(rng, 1)[0]
        other_camera.external_id, other_camera.modality = items[0].external_id, items[0].modality
        other_camera.camera = f"{items[0].camera}-elsewhere"
        with pytest.raises(ExternalIdConflictError, match="camera"):
            gallery.add([*random_items(rng, 2, prefix="ok"), other_camera])
        assert gallery.stats()["count"] == 40 + 3 + 1 + 4  # all or nothing
        np.testing.assert_allclose(gallery.get(first.ids[0]).vector, items[0].vector)


def test_restart_keeps_everything(tmp_path: Path, rng: np.random.Generator) -> None:
    items = random_items(rng, 100)
    queries = unit_vectors(rng, 3)
    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        ids = gallery.add(items).ids
        gallery.remove(ids[:10])
        gallery.update(ids[20], identity="alice", metadata={"note": "seen twice"})
        before_stats = gallery.stats()
        before_items = {i: gallery.get(i) for i in ids}
        before_hits = gallery.search(queries, 20, Filters(has_identity=True))
    with open_gallery(tmp_path / "g") as reopened:  # dim and version come from the gallery
        assert reopened.dim == DIM
        assert reopened.embedding_version == VERSION
        after = reopened.stats()
        for key in ("count", "by_modality", "cameras", "with_identity", "with_timestamp", "seq"):
            assert after[key] == before_stats[key]
        for item_id, item in before_items.items():
            again = reopened.get(item_id)
            if item is None:
                assert again is None
                continue
            assert again.to_dict() == item.to_dict()
            np.testing.assert_array_equal(again.vector, item.vector)
        assert reopened.get(ids[20]).identity == "alice"
        after_hits = reopened.search(queries, 20, Filters(has_identity=True))
        assert [[h.id for h in row] for row in after_hits] == [[h.id for h in row] for row in before_hits]


def searchable_ids(gallery) -> list[int]:
    """Every id a search can return (top_k past the stored count, no filter): what the index holds, seen
    through the public API."""
    probe = unit_vectors(np.random.default_rng(99), 1)[0]
    return sorted(h.id for h in gallery.search(probe, gallery.stats()["count"] + 10)[0])


def test_snapshot_plus_replay_equals_rebuild(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g"
    queries = unit_vectors(rng, 5)
    gallery = open_gallery(path, DIM, VERSION, snapshot_on_close=False, snapshot_every=0)
    first = gallery.add(random_items(rng, 200)).ids
    assert gallery.snapshot()["seq"] == gallery.stats()["seq"]
    later = gallery.add(random_items(rng, 100, prefix="later")).ids
    gallery.remove(first[:30] + later[:20])  # removals of snapshotted and of replayed items
    gallery.update(first[50], identity="bob")
    expected_ids = sorted(set(first[30:]) | set(later[20:]))
    gallery.close()  # no snapshot on close: the next open must replay

    replayed = open_gallery(path)
    stats = replayed.stats()
    assert stats["snapshot_seq"] < stats["seq"]
    assert stats["changes_since_snapshot"] == 80 + 50  # live items added after it + removals
    assert searchable_ids(replayed) == expected_ids
    replayed_hits = [replayed.search(queries, 25, f) for f in FILTERS]
    replayed.close()

    (path / INDEX_NAME).unlink()
    (path / INDEX_META_NAME).unlink()
    rebuilt = open_gallery(path)
    assert rebuilt.stats()["changes_since_snapshot"] == 0
    assert searchable_ids(rebuilt) == expected_ids
    rebuilt_hits = [rebuilt.search(queries, 25, f) for f in FILTERS]
    rebuilt.close()
    for a, b in zip(replayed_hits, rebuilt_hits, strict=True):
        assert [[(h.id, round(h.score, 5)) for h in row] for row in a] == [
            [(h.id, round(h.score, 5)) for h in row] for row in b
        ]


@pytest.mark.parametrize("damage", ["truncate", "garbage-meta", "foreign-meta", "stale-pair"])
def test_damaged_snapshot_is_rebuilt(tmp_path: Path, rng: np.random.Generator, damage: str) -> None:
    path = tmp_path / "g"
    with open_gallery(path, DIM, VERSION) as gallery:
        ids = gallery.add(random_items(rng, 80)).ids
    old_index = (path / INDEX_NAME).read_bytes()
    with open_gallery(path, DIM, VERSION) as gallery:
        more = gallery.add(random_items(rng, 20, prefix="m")).ids
        gallery.remove(ids[:5])
    if damage == "truncate":
        data = (path / INDEX_NAME).read_bytes()
        (path / INDEX_NAME).write_bytes(data[: len(data) // 2])
    elif damage == "garbage-meta":
        (path / INDEX_META_NAME).write_text("{not json")
    elif damage == "foreign-meta":
        (path / INDEX_META_NAME).write_text('{"format": 99}')
    else:  # an older index next to newer metadata: sizes differ
        (path / INDEX_NAME).write_bytes(old_index)
    with open_gallery(path, DIM, VERSION) as gallery:
        assert searchable_ids(gallery) == sorted(ids[5:] + more)
        assert gallery.search(gallery.get(more[0]).vector, 1)[0][0].id == more[0]


def test_dimension_and_version_mismatch_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g"
    with open_gallery(path, DIM, VERSION) as gallery:
        gallery.add(random_items(rng, 5))
        with pytest.raises(DimensionMismatchError, match="dimension 16"):
            gallery.add(random_items(rng, 1, dim=16))
        with pytest.raises(VersionMismatchError, match="other-model"):
            gallery.add(random_items(rng, 1), embedding_version="other-model")
        with pytest.raises(DimensionMismatchError):
            gallery.search(unit_vectors(rng, 1, 16))
        with pytest.raises(VersionMismatchError):
            gallery.search(unit_vectors(rng, 1), embedding_version="other-model")
        assert gallery.stats()["count"] == 5
    with pytest.raises(DimensionMismatchError, match="holds dimension 32"):
        open_gallery(path, 64, VERSION)
    with pytest.raises(VersionMismatchError, match="other-model"):
        open_gallery(path, DIM, "other-model")
    for error in (DimensionMismatchError, VersionMismatchError, GalleryError, ItemNotFoundError):
        assert issubclass(error, ValueError)
    with pytest.raises(GalleryError, match="needs dim and embedding_version"):
        open_gallery(tmp_path / "new")
    with pytest.raises(GalleryError, match="positive integer"):
        open_gallery(tmp_path / "new", 0, VERSION)
    assert not (tmp_path / "new").exists()  # a refused create leaves nothing behind
    # the failed opens released the writer lock
    with open_gallery(path, DIM, VERSION) as gallery:
        assert gallery.stats()["count"] == 5


def test_bad_input_gets_clear_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        good = unit_vectors(rng, 1)[0]
        nan = good.copy()
        nan[3] = np.nan
        with pytest.raises(GalleryError, match="NaN or infinite"):
            gallery.add([Item(good, 0), Item(nan, 0)])
        with pytest.raises(GalleryError, match=r"L2 norm 2\.0"):
            gallery.add([Item(good * 2, 0)])
        assert gallery.stats()["count"] == 0  # nothing of a refused batch is stored
        for bad_id in (2**63, -1):  # past SQLite's signed 64-bit ids: a clear error, not OverflowError
            with pytest.raises(GalleryError, match="outside"):
                gallery.get(bad_id)
            with pytest.raises(GalleryError, match="outside"):
                gallery.remove([bad_id])
        with pytest.raises(GalleryError, match="modality"):
            Item(good, "daylight")
        with pytest.raises(GalleryError, match="modality"):
            Item(good, 2)
        with pytest.raises(GalleryError, match="metadata"):
            Item(good, 0, metadata={"x": float("nan")})
        with pytest.raises(GalleryError, match="metadata"):
            Item(good, 0, metadata=["not", "a", "dict"])
        with pytest.raises(GalleryError, match="one-dimensional"):
            Item(np.ones((2, DIM)), 0)
        with pytest.raises(GalleryError, match="no vector"):
            gallery.add([Item(None, 0)])
        with pytest.raises(GalleryError, match="positive id to be kept"):
            gallery.add([Item(good, 0)], keep_ids=True)
        with pytest.raises(GalleryError, match="timestamp"):
            Item(good, 0, timestamp="yesterday")
        with pytest.raises(GalleryError, match="top_k"):
            gallery.search(good, top_k=0)
        with pytest.raises(GalleryError, match="top_k"):
            gallery.search(good, top_k=1001)
        with pytest.raises(GalleryError, match="since"):
            Filters(since=10, until=5)
        with pytest.raises(GalleryError, match="filters"):
            gallery.search(good, filters={"modality": 0})  # type: ignore[arg-type]
        with pytest.raises(GalleryError, match="empty string"):
            open_gallery(tmp_path / "blank", DIM, "  ")
        with pytest.raises(GalleryError, match="NaN"):
            gallery.search(nan)
        with pytest.raises(GalleryError, match="cannot update"):
            gallery.update(1, vector=good)
        with pytest.raises(ItemNotFoundError):
            gallery.update(12345, identity="x")
        with pytest.raises(GalleryError, match="integers"):
            gallery.remove(["1"])  # type: ignore[list-item]
        assert gallery.search(good, top_k=5) == [[]]  # an empty gallery answers with nothing


def test_modalities_labels_and_update(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 3)
    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        ids = gallery.add(
            [
                Item(vectors[0], "visible", camera=3, track_id=7, timestamp=5),
                Item(vectors[1], "infrared", camera="3"),
                Item(vectors[2], 1, camera="", identity=""),
            ]
        ).ids
        first = gallery.get(ids[0])
        assert (first.modality, first.camera, first.track_id, first.timestamp) == (0, "3", "7", 5.0)
        assert first.to_dict()["modality"] == "visible"
        assert gallery.get(ids[2]).camera is None and gallery.get(ids[2]).identity is None
        assert [h.id for h in gallery.search(vectors[0], 3, Filters(cameras=[3]))[0]] == sorted(
            ids[:2], key=lambda i: -float(vectors[0] @ vectors[ids.index(i)])
        )
        assert gallery.search(vectors[0], 3, Filters(has_identity=True)) == [[]]
        updated = gallery.update(ids[1], identity="carol", camera=9, metadata={"k": "v"})
        assert (updated.identity, updated.camera, updated.metadata) == ("carol", "9", {"k": "v"})
        assert [h.id for h in gallery.search(vectors[0], 3, Filters(has_identity=True))[0]] == [ids[1]]
        assert [h.id for h in gallery.search(vectors[0], 3, Filters(cameras=[9]))[0]] == [ids[1]]
        gallery.update(ids[1], identity=None)
        assert gallery.search(vectors[0], 3, Filters(has_identity=True)) == [[]]
        assert gallery.get(ids[1], with_vector=False).vector is None
        stats = gallery.stats()
        assert stats["by_modality"] == {"visible": 1, "infrared": 2}
        assert stats["count"] == len(gallery) == 3


def test_concurrent_readers_see_whole_batches_while_a_writer_adds(tmp_path: Path) -> None:
    """Each batch holds 8 copies of one direction: a search sees all 8 or none of them."""
    rng = np.random.default_rng(3)
    directions = unit_vectors(rng, 30)
    batch_size = 8
    errors: list[BaseException] = []
    done = threading.Event()
    observed = []

    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:

        def writer() -> None:
            try:
                for b, direction in enumerate(directions):
                    items = [Item(direction, b % 2, camera=b, external_id=f"{b}-{i}") for i in range(batch_size)]
                    gallery.add(items)
                    if b % 10 == 9:
                        gallery.snapshot()
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        def reader(seed: int) -> None:
            local = np.random.default_rng(seed)
            try:
                while not done.is_set():
                    b = int(local.integers(0, len(directions)))
                    hits = gallery.search(directions[b], top_k=20, filters=Filters(cameras=[b]))[0]
                    assert len(hits) in (0, batch_size), len(hits)
                    assert all(abs(h.score - 1.0) < 1e-4 for h in hits)
                    count = gallery.stats()["count"]
                    assert count % batch_size == 0, count
                    observed.append(len(hits))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert gallery.stats()["count"] == len(directions) * batch_size
        assert observed and batch_size in observed
        for b, direction in enumerate(directions):
            assert len(gallery.search(direction, 20, Filters(cameras=[b]))[0]) == batch_size


def test_one_writer_process_and_read_only_opens(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g"
    with open_gallery(path, DIM, VERSION) as gallery:
        ids = gallery.add(random_items(rng, 30)).ids
        with pytest.raises(GalleryStateError, match="another process"):
            open_gallery(path, DIM, VERSION)
        with FaissGallery(path, read_only=True) as viewer:
            assert viewer.stats()["count"] == 30
            assert viewer.search(gallery.get(ids[4]).vector, 1)[0][0].id == ids[4]
            with pytest.raises(GalleryStateError, match="read-only"):
                viewer.add(random_items(rng, 1))
            with pytest.raises(GalleryStateError, match="read-only"):
                viewer.remove(ids[:1])
    gallery.close()  # closing twice is harmless
    with pytest.raises(GalleryStateError, match="closed"):
        gallery.search(unit_vectors(rng, 1))
    with pytest.raises(GalleryError, match="no gallery"):
        FaissGallery(tmp_path / "missing", read_only=True)


def test_open_gallery_picks_the_backend(tmp_path: Path) -> None:
    with open_gallery(tmp_path / "g", DIM, VERSION) as gallery:
        assert isinstance(gallery, FaissGallery)
        assert gallery.backend == "faiss"
    with pytest.raises(GalleryError, match="unknown gallery back-end"):
        open_gallery(tmp_path / "h", DIM, VERSION, backend="redis")
    with pytest.raises(GalleryError, match="index kind"):
        IndexConfig(kind="hnsw")  # type: ignore[arg-type]


@pytest.mark.skipif(not gpu_available(), reason="FAISS has no GPU support here or sees no GPU")
def test_gpu_mirror_matches_cpu(tmp_path: Path, rng: np.random.Generator) -> None:
    reference = Reference()
    queries = unit_vectors(rng, 4)
    with open_gallery(tmp_path / "g", DIM, VERSION, index=IndexConfig(use_gpu=True)) as gallery:
        items = random_items(rng, 300)
        ids = gallery.add(items).ids
        reference.add(ids, items)
        assert gallery.stats()["index"]["gpu"] is True
        gallery.remove(ids[:50])
        reference.remove(ids[:50])
        assert_matches_reference(gallery, reference, queries, 10)
