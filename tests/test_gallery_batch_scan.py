"""The bf16 batch scan (gallery/batch_scan.py) returns what float32 exact search returns for batches of
queries: ids and scores, with filters, after removes and adds, and when its bound cannot prove a query.
The tests of the gallery option and of masks run for the int8 batch scan (gallery/batch_int8.py) too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipmc.gallery import Filters, IndexConfig, Item, open_gallery
from clipmc.gallery.batch_int8 import Int8BatchScan, integer_product_is_exact
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


needs_vnni = pytest.mark.skipif(
    not integer_product_is_exact(), reason="ONNX Runtime's integer product saturates on this CPU (no VNNI)"
)
CODES = ["bf16", pytest.param("int8", marks=needs_vnni)]


def gallery_items(vectors: np.ndarray) -> list[Item]:
    """Items over ``vectors`` on two modalities and five cameras (the filters the gallery tests use)."""
    return [Item(vector=v, modality=i % 2, camera=f"c{i % 5}", external_id=f"e{i}") for i, v in enumerate(vectors)]


def hit_ids(rows: list) -> list[list[int]]:
    return [[hit.id for hit in row] for row in rows]


@pytest.mark.parametrize("codes", CODES)
def test_few_matching_items_are_all_candidates(codes: str) -> None:
    rng = np.random.default_rng(9)
    x = unit_vectors(rng, 500, 32)
    index = VectorIndex.flat(32)
    index.add(np.arange(500), x)
    if codes == "bf16":
        scan = BatchScan(32, candidates=256)
        scan.add(np.arange(500), x)
    else:
        scan = Int8BatchScan.from_flat(index.cpu, 256, shard_rows=200)
    mask = np.zeros(401, dtype=bool)  # shorter than the largest id: ids beyond it do not match
    mask[[3, 70, 400]] = True
    queries = unit_vectors(rng, 4, 32)
    scores, labels, unproven = scan.search(index.cpu, queries, 10, mask, 3)
    assert len(unproven) == 0
    full = np.zeros(500, dtype=bool)
    full[:401] = mask
    assert_same((scores, labels), float32_exact(x, np.arange(500), queries, 10, full))


@pytest.mark.parametrize("codes", CODES)
def test_gallery_batch_scan_option(tmp_path: Path, codes: str) -> None:
    """A gallery with each batch scan answers as one with none, also when reopened (int8: the 600 items
    added stayed in its float32 tail; reopened, they are packed into shards with ranges trained on them)."""
    rng = np.random.default_rng(11)
    dim, n = 32, 600
    items = gallery_items(unit_vectors(rng, n, dim))
    queries = unit_vectors(rng, 6, dim)
    config = IndexConfig(kind="flat", batch_scan=codes)
    plain = IndexConfig(kind="flat", exact_scan="float32", batch_scan="off")
    with (
        open_gallery(tmp_path / "b", dim, VERSION, index=config) as fast,
        open_gallery(tmp_path / "f", dim, VERSION, index=plain) as slow,
    ):
        fast.add(items)
        slow.add(items)
        assert fast.stats()["index"]["batch_scan"]["codes"] == codes
        assert fast.stats()["index"]["batch_scan"]["ntotal"] == n
        assert slow.stats()["index"]["batch_scan"] is None
        for f in (None, Filters(modality=1), Filters(cameras=["c1", "c3"])):
            a, b = fast.search(queries, 10, f), slow.search(queries, 10, f)
            assert hit_ids(a) == hit_ids(b)
            np.testing.assert_allclose([h.score for row in a for h in row], [h.score for row in b for h in row],
                                       atol=1e-5)  # fmt: skip
    with (
        open_gallery(tmp_path / "b", dim, VERSION, index=config) as reopened,
        open_gallery(tmp_path / "f", dim, VERSION, index=plain) as slow,
    ):
        if codes == "int8":
            assert reopened.stats()["index"]["batch_scan"]["shards"] == 2
        for f in (None, Filters(modality=0)):
            assert hit_ids(reopened.search(queries, 10, f)) == hit_ids(slow.search(queries, 10, f))
    with pytest.raises(GalleryError, match="batch_scan"):
        IndexConfig(batch_scan="int4")
