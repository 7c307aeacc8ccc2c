"""The exact scan (gallery/exact_scan.py), from fp16 or int8 codes, returns what float32 exact search returns:
ids and scores."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from clipmc.gallery import BaseGallery, Filters, IndexConfig, Item, open_gallery
from clipmc.gallery.exact_scan import ExactScan, fp16_error_bound, int8_error_bound
from clipmc.gallery.index import VectorIndex, selector_from_mask
from tests.test_gallery import unit_vectors

VERSION = "test-model@abc123"


def float32_exact(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None):
    """The reference: FAISS IndexFlatIP over the same float32 vectors (what exact_scan='float32' does)."""
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, ids)
    if mask is None:
        return flat.search(queries, k)
    selector, bitmap = selector_from_mask(mask)
    out = flat.search(queries, k, params=faiss.SearchParameters(sel=selector))
    del bitmap
    return out


def assert_same(found: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray], tie: float = 0.0) -> None:
    """Same ids in the same order and scores within 1e-5. With ``tie`` > 0 (near-duplicate galleries), items
    whose float32 scores lie within ``tie`` of each other may come in either order, as they do between
    FAISS's own BLAS and SIMD paths; a tie group cut by the top-k boundary may hold either member."""
    (scores, labels), (true_scores, true_labels) = found, truth
    assert np.array_equal(labels >= 0, true_labels >= 0)
    valid = true_labels >= 0
    np.testing.assert_allclose(scores[valid], true_scores[valid], atol=1e-5, rtol=0)
    if not tie:
        assert np.array_equal(labels, true_labels)
        return
    for row, true_row, true_s in zip(labels, true_labels, true_scores, strict=True):
        start = 0
        for end in range(1, len(row) + 1):
            if end == len(row) or true_s[end - 1] - true_s[end] > tie:
                if end < len(row) or true_row[-1] < 0:  # a whole tie group: the same members
                    assert set(row[start:end]) == set(true_row[start:end]), (row, true_row)
                start = end


def near_duplicates(rng: np.random.Generator, n: int, dim: int, spread: float) -> np.ndarray:
    """Vectors around a few centres, ``spread`` apart: fp16 rounding reorders their scores."""
    centres = unit_vectors(rng, 4, dim)
    x = centres[rng.integers(0, 4, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_selector_from_a_short_mask_rejects_ids_past_it() -> None:
    """FAISS sizes the bitmap in bytes: ids past the mask are non-members, never read past the bitmap."""
    mask = np.zeros(9, dtype=bool)
    mask[[2, 8]] = True
    selector, bitmap = selector_from_mask(mask)
    assert selector.n == len(bitmap) == 2
    assert [i for i in range(200) if selector.is_member(i)] == [2, 8]


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("candidates", [1, 8, 256])
@pytest.mark.parametrize("spread", [1.0, 1e-3])
@pytest.mark.parametrize("codes", ["fp16", "int8"])
def test_same_ids_and_scores_as_float32_exact_with_filters(
    shards: int, candidates: int, spread: float, codes: str
) -> None:
    rng = np.random.default_rng(shards * 100 + candidates)
    dim, n = 48, 1500
    vectors = near_duplicates(rng, n, dim, spread) if spread < 1 else unit_vectors(rng, n, dim)
    ids = rng.permutation(5 * n)[:n].astype(np.int64)  # sparse ids, not in insertion order
    queries = np.concatenate([unit_vectors(rng, 6, dim), vectors[:4] + 1e-4])
    index = VectorIndex.flat(dim)
    index.add(ids[:700], vectors[:700])
    index.attach_scan(shards, candidates, codes)  # built from what is there, then kept in step
    for start in range(700, n, 97):
        index.add(ids[start : start + 97], vectors[start : start + 97])
    masks = {
        "none": None,
        "half": np.isin(np.arange(5 * n), ids[::2]),
        "few": np.isin(np.arange(5 * n), ids[:7]),  # fewer matching items than k
    }
    for k in (1, 10, 50):
        for mask in masks.values():
            available = n if mask is None else int(mask.sum())
            truth = float32_exact(vectors, ids, queries, min(k, n), mask)
            tie = 1e-6 if spread < 1 else 0
            alone = [index.search(q[None], k, mask, available) for q in queries]  # one query: the fp16 scan
            assert_same((np.concatenate([a[0] for a in alone]), np.concatenate([a[1] for a in alone])), truth, tie)
            assert_same(index.search(queries, k, mask, available), truth, tie)  # a batch: BLAS on float32
    # removals reach the fp16 copy too
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    found = index._scan.search(index.cpu, queries, 10, None, int(keep.sum()))
    assert_same(found, float32_exact(vectors[keep], ids[keep], queries, 10, None), tie=1e-6 if spread < 1 else 0)


def test_the_proof_widens_when_fp16_cannot_separate_the_top_k() -> None:
    """Near-identical vectors: with 8 candidates the k-th score cannot be proven, so the scan widens."""
    rng = np.random.default_rng(7)
    dim, n = 64, 3000
    vectors = near_duplicates(rng, n, dim, 2e-4)
    ids = np.arange(n, dtype=np.int64)
    queries = vectors[:5].copy()
    scan = ExactScan(dim, shards=2, candidates=8)
    master = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    master.add_with_ids(vectors, ids)
    scan.add(ids, vectors)
    found = scan.search(master, queries, 10, None, n)
    assert scan.widened > 0
    assert_same(found, float32_exact(vectors, ids, queries, 10, None), tie=1e-6)


def test_error_bound_covers_the_fp16_scores() -> None:
    rng = np.random.default_rng(3)
    dim = 1280
    x = unit_vectors(rng, 2000, dim)
    q = unit_vectors(rng, 8, dim)
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    sq.add(x)
    approx, labels = sq.search(q, 2000)
    exact = np.take_along_axis(q @ x.T, labels, axis=1)
    bound = fp16_error_bound(np.linalg.norm(q, axis=1), 1.0, dim)
    assert (np.abs(approx - exact) <= bound[:, None]).all()
    assert bound.max() < 1e-3  # small enough to prove nearly every query with 256 candidates


def test_int8_error_bound_covers_the_int8_scores_also_for_clipped_vectors() -> None:
    """Ranges trained on one half; the other half is scaled up to fall outside them (clipped): the
    measured reconstruction error, and with it the bound, covers every score of the scan."""
    rng = np.random.default_rng(4)
    dim = 256
    x = unit_vectors(rng, 3000, dim)
    x[1500:, :8] *= 6.0  # large components in a few dimensions: outside the trained ranges
    q = unit_vectors(rng, 8, dim)
    scan = ExactScan(dim, shards=1, codes="int8", training=x[:1500])
    ids = np.arange(3000, dtype=np.int64)
    scan.add(ids[:1500], x[:1500])
    inside = scan.max_error
    scan.add(ids[1500:], x[1500:])
    assert scan.max_error > inside  # the clipped vectors raised the measured error
    approx, labels = scan._scan(q, 3000, None)
    exact = np.take_along_axis(q @ x.T, labels, axis=1)
    bound = scan.error_bound(q)
    assert (np.abs(approx - exact) <= bound[:, None]).all()
    # The bound is the stored vectors' part plus the query's rounding to integers (known per query).
    stored = int8_error_bound(np.linalg.norm(q, axis=1), scan.max_norm, scan.max_error, dim, scan.centre_norm)
    assert (bound > stored).all() and (bound < 2 * stored).all()
    # Untrained (too few vectors): +-4/sqrt(d) ranges, still exact through the measured error.
    small = ExactScan(dim, shards=1, codes="int8", training=x[:10])
    assert small.describe()["codes"] == "int8" and small.max_error == 0.0
    with pytest.raises(ValueError, match="codes"):
        ExactScan(dim, shards=1, codes="int4")


def test_int8_scan_proves_the_top_k_on_embedding_like_data() -> None:
    """On unit vectors in 1280-d the measured int8 error is about 0.01 and 256 candidates prove the top-10
    of most queries without widening."""
    rng = np.random.default_rng(8)
    dim, n = 1280, 5000
    centres = unit_vectors(rng, 500, dim)
    x = centres[rng.integers(0, 500, n)] + 0.8 * unit_vectors(rng, n, dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    index = VectorIndex.flat(dim)
    index.add(ids, x)
    index.attach_scan(2, codes="int8")
    queries = x[:20] + 0.01
    found = index.search(queries[:1], 10, None, n)
    assert_same(found, float32_exact(x, ids, queries[:1], 10, None))
    for q in queries[1:]:
        index.search(q[None], 10, None, n)
    info = index.describe()["exact_scan"]
    assert info["codes"] == "int8" and 0 < info["max_error"] < 0.02
    assert info["widened"] <= 2


@pytest.mark.parametrize("codes", ["fp16", "int8"])
def test_gallery_scan_equals_float32_gallery(tmp_path: Path, codes: str) -> None:
    """Two galleries with the same items, one per exact_scan setting: same hits, also after reopening."""
    rng = np.random.default_rng(11)
    dim, n = 32, 600
    vectors = unit_vectors(rng, n, dim)
    items = [
        Item(vector=vectors[i], modality=i % 2, camera=f"c{i % 5}", external_id=f"e{i}", timestamp=float(i))
        for i in range(n)
    ]
    queries = unit_vectors(rng, 5, dim)
    filters = [None, Filters(modality=1), Filters(cameras=["c1", "c3"], since=100.0), Filters(exclude_cameras=["c0"])]

    def hits(gallery: BaseGallery) -> tuple[list, np.ndarray]:
        rows = [gallery.search(q, 20, f)[0] for f in filters for q in queries]  # one at a time: the fp16 scan
        return [[h.id for h in row] for row in rows], np.asarray([h.score for row in rows for h in row])

    def assert_hits_equal(a: tuple[list, np.ndarray], b: tuple[list, np.ndarray]) -> None:
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], atol=1e-5, rtol=0)

    with (
        open_gallery(
            tmp_path / "scan", dim, VERSION, index=IndexConfig(kind="flat", scan_shards=2, exact_scan=codes)
        ) as fast,
        open_gallery(tmp_path / "f32", dim, VERSION, index=IndexConfig(kind="flat", exact_scan="float32")) as slow,
    ):
        fast.add(items)
        slow.add(items)
        scan = fast.stats()["index"]["exact_scan"]
        assert {k: scan[k] for k in ("codes", "shards", "candidates", "widened")} == {
            "codes": codes, "shards": 2, "candidates": 256, "widened": 0}  # fmt: skip
        assert slow.stats()["index"]["exact_scan"] is None
        assert_hits_equal(hits(fast), hits(slow))
        fast.remove(list(range(1, 200, 3)))
        slow.remove(list(range(1, 200, 3)))
        expected = hits(slow)
        assert_hits_equal(hits(fast), expected)
    with open_gallery(
        tmp_path / "scan", index=IndexConfig(kind="flat", scan_shards=2, exact_scan=codes)
    ) as reopened:  # from the snapshot
        assert reopened.stats()["index"]["exact_scan"]["shards"] == 2
        assert_hits_equal(hits(reopened), expected)


def test_bad_scan_settings_are_refused() -> None:
    from clipmc.gallery import GalleryError

    with pytest.raises(GalleryError, match="exact_scan"):
        IndexConfig(exact_scan="int4")  # type: ignore[arg-type]
    with pytest.raises(GalleryError, match="scan_shards"):
        IndexConfig(scan_shards=0)
