"""The int8 batch scan (gallery/batch_int8.py) returns what float32 exact search returns for batches of
queries: ids and scores, with filters, through adds that fill and seal its tail, removes, the training of
its ranges, and queries its bound cannot prove (its mask and gallery-option tests are in
tests/test_gallery_batch_scan.py, with the bf16 scan's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipmc.gallery import IndexConfig, Item, open_gallery
from clipmc.gallery.batch_int8 import Int8BatchScan, saturation_probe
from clipmc.gallery.errors import GalleryError
from clipmc.gallery.exact_scan import rescore
from clipmc.gallery.index import BATCH_BLAS_MIN, VectorIndex
from tests.test_gallery import unit_vectors
from tests.test_gallery_batch_scan import needs_vnni
from tests.test_gallery_exact_scan import VERSION, assert_same, float32_exact, near_duplicates


def clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Embedding-like unit vectors: identities around 50 centres."""
    centres = unit_vectors(rng, 50, dim)
    x = centres[rng.integers(0, 50, n)] + 0.8 * unit_vectors(rng, n, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_saturation_probe_catches_a_saturating_kernel() -> None:
    """An emulated ``vpmaddubsw`` kernel (pairs of u8 x s8 products added into saturating int16) gets the
    probe's products wrong, so ``integer_product_is_exact`` can tell such a CPU apart."""
    queries, codes = saturation_probe(64)
    a, b = queries.astype(np.int64), codes.astype(np.int64)
    pairs = a[:, None, 0::2] * b.T[None, :, 0::2] + a[:, None, 1::2] * b.T[None, :, 1::2]
    saturating = np.clip(pairs, -32768, 32767).sum(axis=2) - 128 * b.sum(axis=0)[None, :]
    assert not np.array_equal(saturating, (a - 128) @ b)


@needs_vnni
def test_int8_bound_covers_every_graph_score() -> None:
    """Every score the shards' graphs return is within the per-query bound of the float64 score, also for
    vectors outside the trained ranges (clipped)."""
    rng = np.random.default_rng(4)
    dim, n = 128, 3000
    x = clustered(rng, n, dim)
    x[2000:, :4] *= 5.0  # added after training, outside its ranges
    index = VectorIndex.flat(dim)
    index.add(np.arange(2000), x[:2000])
    scan = Int8BatchScan.from_flat(index.cpu, 64, 2, shard_rows=700, tail_rows=10_000)
    index.add(np.arange(2000, n), x[2000:])
    scan._seal(np.arange(2000, n), x[2000:])  # into shards now, so every score below comes from a graph
    queries = unit_vectors(rng, 8, dim) * 1.5
    approx, ids, rounding = scan._candidates(queries, n, None)
    exact = np.take_along_axis(queries.astype(np.float64) @ x.T.astype(np.float64), ids, axis=1)
    bound = scan.int8.error_bound(queries) + rounding
    assert (np.abs(approx - exact) <= bound[:, None]).all()
    assert (np.abs(approx - exact).max(axis=1) > bound / 50).all()  # the bound is not vacuous


@needs_vnni
@pytest.mark.parametrize("candidates", [1, 32])
@pytest.mark.parametrize("spread", [None, 0.002])
def test_batched_search_equals_float32_through_adds_seals_removes_and_filters(
    spread: float | None, candidates: int
) -> None:
    """Shards of 700 and a tail of 300: adds fill the tail and seal it into the last shard or new ones; the
    ranges, untrained at 500 vectors, are trained when the gallery passes 1,024 and again at 2,048 (both
    copies built again). Near-duplicates (``spread``) cannot be proven from int8 scores and are answered by
    the exact scan."""
    rng = np.random.default_rng(5)
    dim, n = 64, 3000
    x = clustered(rng, n, dim) if spread is None else near_duplicates(rng, n, dim, spread)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    index = VectorIndex.flat(dim)
    index.add(ids[:500], x[:500])
    index.attach_scan(2, codes="int8")
    index.attach_batch_scan(candidates=candidates, codes="int8", shard_rows=700, tail_rows=300)
    assert index.describe()["batch_scan"]["shards"] == 2  # 500 vectors split over the 2 threads
    assert index.describe()["batch_scan"]["trained_on"] == index.describe()["exact_scan"]["trained_on"] == 0
    for start in range(500, n, 137):  # uneven adds: some fill the tail, some pass it
        index.add(ids[start : start + 137], x[start : start + 137])
    info = index.describe()["batch_scan"]
    sizes = [shard.n_alive for shard in index._batch._shards]
    assert info["ntotal"] == n and info["tail"] < 300 and sum(sizes) == n - info["tail"] and max(sizes) <= 700
    assert len(sizes) <= 2 * -(-n // 700)  # seals merge into the shards before them
    assert 2048 <= info["trained_on"] == index.describe()["exact_scan"]["trained_on"] < n
    nq = 2 * BATCH_BLAS_MIN + 1
    queries = x[rng.integers(0, n, nq)] + 0.05 * unit_vectors(rng, nq, dim)
    mask = np.zeros(10 + n, dtype=bool)
    mask[ids[rng.random(n) < 0.3]] = True
    tie = 0.0 if spread is None else 1e-6
    for m in (None, mask, mask[:1500]):  # a mask shorter than the largest id
        full = m if m is None else np.pad(m, (0, 10 + n - len(m)))
        available = n if m is None else int(m.sum())
        assert_same(index.search(queries, 10, m, available), float32_exact(x, ids, queries, 10, full), tie)
    keep = rng.random(n) >= 0.1  # a few rows go: masked in their shards
    index.remove(ids[~keep])
    assert index.describe()["batch_scan"]["ntotal"] == int(keep.sum())
    assert_same(
        index.search(queries, 10, None, int(keep.sum())), float32_exact(x[keep], ids[keep], queries, 10, None), tie
    )
    keep &= rng.random(n) < 0.3  # most rows go: shards less than half alive are built again
    index.remove(ids[~keep])
    assert index.describe()["batch_scan"]["ntotal"] == int(keep.sum())
    assert_same(
        index.search(queries, 10, None, int(keep.sum())), float32_exact(x[keep], ids[keep], queries, 10, None), tie
    )
    index.add(ids[~keep][:50], x[~keep][:50])  # ids come back
    back = keep.copy()
    back[np.flatnonzero(~keep)[:50]] = True
    assert_same(
        index.search(queries, 10, None, int(back.sum())), float32_exact(x[back], ids[back], queries, 10, None), tie
    )
    info = index.describe()["batch_scan"]
    if spread is None and candidates > 1:
        assert info["fallbacks"] == 0
    else:  # gaps below the int8 bound, or no candidates beyond the top-10: answered by the exact scan
        assert info["fallbacks"] > 0


@needs_vnni
def test_an_empty_scan_proves_nothing() -> None:
    rng = np.random.default_rng(9)
    index = VectorIndex.flat(32)
    empty = Int8BatchScan.from_flat(index.cpu, 256)
    _, labels, unproven = empty.search(index.cpu, unit_vectors(rng, 4, 32), 10, None, 0)
    assert list(unproven) == [0, 1, 2, 3] and (labels == -1).all()


@needs_vnni
def test_tail_scores_are_proven_with_their_float32_rounding() -> None:
    """A gallery grown from empty holds everything in the float32 tail. Near-duplicates, one candidate: no
    answer the scan calls proven leaves out an item that scores higher in the re-rank's own arithmetic (with
    the tail's rounding left out of the bound, 8 of these 64 queries did). Clustered vectors: proven, and
    float32's answer."""
    rng = np.random.default_rng(12)
    dim, n = 64, 900
    x = near_duplicates(rng, n, dim, 1e-4)
    index = VectorIndex.flat(dim)
    scan = Int8BatchScan.from_flat(index.cpu, candidates=1)
    index.add(np.arange(n), x)
    scan.add(np.arange(n), x)
    assert scan.describe()["tail"] == n and scan.describe()["shards"] == 0
    queries = x[rng.integers(0, n, 64)] + 1e-2 * unit_vectors(rng, 64, dim)
    scores, labels, unproven = scan.search(index.cpu, queries, 10, None, n)
    every = rescore(index.cpu, queries, np.broadcast_to(np.arange(n), (len(queries), n)).copy())
    for row in np.setdiff1d(np.arange(len(queries)), unproven):
        left_out = np.setdiff1d(np.arange(n), labels[row])
        assert every[row, left_out].max() <= scores[row, -1]
    x = clustered(rng, n, dim)
    index = VectorIndex.flat(dim)
    scan = Int8BatchScan.from_flat(index.cpu)
    index.add(np.arange(n), x)
    scan.add(np.arange(n), x)
    queries = x[rng.integers(0, n, 16)] + 0.05 * unit_vectors(rng, 16, dim)
    scores, labels, unproven = scan.search(index.cpu, queries, 10, None, n)
    assert len(unproven) == 0
    assert_same((scores, labels), float32_exact(x, np.arange(n), queries, 10, None))


def test_auto_turns_the_int8_batch_scan_off_where_the_product_saturates(tmp_path: Path, monkeypatch) -> None:
    from clipmc.gallery import batch_int8

    monkeypatch.setattr(batch_int8, "integer_product_is_exact", lambda dim=256: False)
    rng = np.random.default_rng(1)
    items = [
        Item(vector=v, modality=0, camera="c", external_id=f"e{i}") for i, v in enumerate(unit_vectors(rng, 50, 8))
    ]
    with open_gallery(tmp_path / "g", 8, VERSION, index=IndexConfig(kind="flat")) as gallery:
        gallery.add(items)
        assert gallery.stats()["index"]["batch_scan"] is None  # auto: off
    index = VectorIndex.flat(8)
    with pytest.raises(GalleryError, match="saturates"):
        index.attach_batch_scan(codes="int8")
