"""The bf16 batch scan (gallery/batch_scan.py) returns what float32 exact search returns for batches of
queries: ids and scores, with filters, after removes and adds, and when its bound cannot prove a query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipmc.gallery import Filters, IndexConfig, Item, open_gallery
from clipmc.gallery.batch_scan import BatchScan, bf16_error_bound
from clipmc.gallery.errors import GalleryError
from clipmc.gallery.index import BATCH_BLAS_MIN, VectorIndex
from tests.test_gallery import unit_vectors
from tests.test_gallery_exact_scan import VERSION, assert_same, float32_exact, near_duplicates


def test_bf16_error_bound_covers_the_bf16_scores() -> None:
    rng = np.random.default_rng(3)
    dim = 256
    x = unit_vectors(rng, 4000, dim) * rng.uniform(0.5, 1.0, (4000, 1)).astype(np.float32)
    q = unit_vectors(rng, 16, dim) * 2.0
    approx = torch.mm(torch.from_numpy(q).bfloat16(), torch.from_numpy(x).bfloat16().T).float().numpy()
    exact = q.astype(np.float64) @ x.T.astype(np.float64)
    bound = bf16_error_bound(np.linalg.norm(q, axis=1), float(np.linalg.norm(x, axis=1).max()), dim)
    assert (np.abs(approx - exact) <= bound[:, None]).all()
    assert (np.abs(approx - exact).max(axis=1) > bound / 20).all()  # the bound is not vacuous


@pytest.mark.parametrize("spread", [None, 0.002])
def test_batched_search_equals_float32_with_masks_removes_and_adds(spread: float | None) -> None:
    """Random vectors are proven from bf16; near-duplicates (``spread``) are not, and fall back."""
    rng = np.random.default_rng(5)
    dim, n = 64, 3000
    x = unit_vectors(rng, n, dim) if spread is None else near_duplicates(rng, n, dim, spread)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    index = VectorIndex.flat(dim)
    index.add(ids[:2000], x[:2000])
    index.attach_batch_scan(candidates=64)
    index.add(ids[2000:], x[2000:])  # kept in step after it was built
    queries = x[rng.integers(0, n, 2 * BATCH_BLAS_MIN + 1)] + 0.05 * unit_vectors(rng, 2 * BATCH_BLAS_MIN + 1, dim)
    mask = np.zeros(10 + n, dtype=bool)
    mask[ids[rng.random(n) < 0.3]] = True
    tie = 0.0 if spread is None else 1e-6
    for m in (None, mask):
        available = n if m is None else int(m.sum())
        found = index.search(queries, 10, m, available)
        assert_same(found, float32_exact(x, ids, queries, 10, m), tie)
    keep = rng.random(n) < 0.8
    index.remove(ids[~keep])
    found = index.search(queries, 10, None, int(keep.sum()))
    assert_same(found, float32_exact(x[keep], ids[keep], queries, 10, None), tie)
    info = index.describe()["batch_scan"]
    assert info["codes"] == "bf16" and info["ntotal"] == int(keep.sum())
    if spread is None:
        assert info["fallbacks"] == 0
    else:
        assert info["fallbacks"] > 0  # gaps below the bf16 bound: answered by the float32 master
    # One query goes to the exact scan or the master, never to the batch scan.
    assert_same(index.search(queries[:1], 10, None, int(keep.sum())),
                float32_exact(x[keep], ids[keep], queries[:1], 10, None), tie)  # fmt: skip


def test_few_matching_items_are_all_candidates() -> None:
    rng = np.random.default_rng(9)
    x = unit_vectors(rng, 500, 32)
    scan = BatchScan(32, candidates=256)
    scan.add(np.arange(500), x)
    index = VectorIndex.flat(32)
    index.add(np.arange(500), x)
    mask = np.zeros(401, dtype=bool)  # shorter than the largest id: ids beyond it do not match
    mask[[3, 70, 400]] = True
    queries = unit_vectors(rng, 4, 32)
    scores, labels, unproven = scan.search(index.cpu, queries, 10, mask, 3)
    assert len(unproven) == 0
    full = np.zeros(500, dtype=bool)
    full[:401] = mask
    assert_same((scores, labels), float32_exact(x, np.arange(500), queries, 10, full))


def test_gallery_batch_scan_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    dim, n = 32, 600
    vectors = unit_vectors(rng, n, dim)
    items = [Item(vector=vectors[i], modality=i % 2, camera=f"c{i % 5}", external_id=f"e{i}") for i in range(n)]
    queries = unit_vectors(rng, 6, dim)
    with (
        open_gallery(tmp_path / "b", dim, VERSION, index=IndexConfig(kind="flat", batch_scan="bf16")) as fast,
        open_gallery(
            tmp_path / "f", dim, VERSION, index=IndexConfig(kind="flat", exact_scan="float32", batch_scan="off")
        ) as slow,
    ):
        fast.add(items)
        slow.add(items)
        assert fast.stats()["index"]["batch_scan"]["ntotal"] == n
        assert slow.stats()["index"]["batch_scan"] is None
        for f in (None, Filters(modality=1), Filters(cameras=["c1", "c3"])):
            a, b = fast.search(queries, 10, f), slow.search(queries, 10, f)
            assert [[h.id for h in row] for row in a] == [[h.id for h in row] for row in b]
            np.testing.assert_allclose([h.score for row in a for h in row], [h.score for row in b for h in row],
                                       atol=1e-5)  # fmt: skip
    with pytest.raises(GalleryError, match="batch_scan"):
        IndexConfig(batch_scan="int4")
