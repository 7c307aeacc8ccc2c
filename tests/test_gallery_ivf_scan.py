"""The 8-bit IVF scan (gallery/ivf_scan.py): the same lists as the float32 IVF index, the same hits for
nearly every query, exact float32 scores, filters, and kept in step through adds and removes."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from clipmc.gallery import Filters, IndexConfig, open_gallery
from clipmc.gallery.errors import GalleryError
from clipmc.gallery.index import VectorIndex, selector_from_mask
from tests.test_gallery import unit_vectors
from tests.test_gallery_batch_int8 import clustered
from tests.test_gallery_batch_scan import gallery_items, hit_ids
from tests.test_gallery_exact_scan import VERSION


def ivf_index(rng: np.random.Generator, n: int, dim: int) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    x = clustered(rng, n, dim)
    ids = np.arange(7, 7 + n, dtype=np.int64)
    index = VectorIndex.ivf(dim, x, 16, nprobe=4, iterations=5, seed=0)
    index.add(ids, x)
    return index, ids, x


def float32_ivf(index: VectorIndex, queries: np.ndarray, k: int, nprobe: int, mask: np.ndarray | None = None):
    """The reference: the float32 lists themselves (what ivf_scan='off' searches)."""
    selector, bitmap = selector_from_mask(mask) if mask is not None else (None, None)
    out = index.cpu.search(queries, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))
    del bitmap
    return out


def assert_same_lists(index: VectorIndex) -> None:
    """The copy holds every vector in the list the master holds it in."""
    copy = index._ivf_scan.index
    for lst in range(index.cpu.nlist):
        master_ids = faiss.rev_swig_ptr(index.cpu.invlists.get_ids(lst), index.cpu.invlists.list_size(lst))
        copy_ids = faiss.rev_swig_ptr(copy.invlists.get_ids(lst), copy.invlists.list_size(lst))
        assert sorted(master_ids) == sorted(copy_ids)


def test_same_lists_same_hits_exact_scores_with_filters() -> None:
    rng = np.random.default_rng(2)
    dim, n = 64, 4000
    index, ids, x = ivf_index(rng, n, dim)
    index.attach_ivf_scan(candidates=40)
    assert_same_lists(index)
    queries = x[rng.integers(0, n, 50)] + 0.05 * unit_vectors(rng, 50, dim)
    mask = np.zeros(7 + n, dtype=bool)
    mask[ids[rng.random(n) < 0.3]] = True
    for m in (None, mask):
        scores, labels = index.search(queries, 10, m, n if m is None else int(m.sum()))
        _, true_labels = float32_ivf(index, queries, 10, 4, m)
        same = np.mean([list(a) == list(b) for a, b in zip(labels, true_labels, strict=True)])
        assert same >= 0.95, same
        valid = labels >= 0
        position = {int(i): row for row, i in enumerate(ids)}
        rows, cols = np.nonzero(valid)
        exact = np.array([queries[r] @ x[position[int(labels[r, c])]] for r, c in zip(rows, cols, strict=True)])
        np.testing.assert_allclose(scores[valid], exact, atol=1e-5)  # exact float32 scores
        if m is not None:
            assert m[labels[valid]].all()


def test_kept_in_step_through_adds_removes_and_a_reload(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dim, n = 32, 2000
    index, ids, x = ivf_index(rng, n, dim)
    index.attach_ivf_scan()
    more = clustered(rng, 300, dim)
    more_ids = np.arange(10_000, 10_300, dtype=np.int64)
    index.add(more_ids, more)
    gone = ids[::3]
    index.remove(gone)
    assert index.describe()["ivf_scan"]["ntotal"] == index.ntotal == n + 300 - len(gone)
    queries = np.concatenate([more[:5], x[:5]])
    _, labels = index.search(queries, 10, None, index.ntotal)
    assert not np.isin(labels, gone).any()
    assert (labels[:5, 0] == more_ids[:5]).all()  # a new vector is its own nearest neighbour
    assert_same_lists(index)
    index.save(tmp_path / "ivf.faiss")  # the snapshot keeps the hash-table direct map; removes still work
    loaded = VectorIndex.load(tmp_path / "ivf.faiss", nprobe=4)
    loaded.attach_ivf_scan()
    assert loaded.remove(more_ids[:10]) == 10
    assert_same_lists(loaded)
    assert not np.isin(loaded.search(more[:10], 10, None, loaded.ntotal)[1], more_ids[:10]).any()
    loaded.detach_ivf_scan()  # and without the copy the master needs no direct map
    assert loaded.cpu.direct_map.type == faiss.DirectMap.NoMap
    assert loaded.remove(more_ids[10:20]) == 10
    with pytest.raises(GalleryError, match="IVF"):
        VectorIndex.flat(dim).attach_ivf_scan()


def test_gallery_ivf_scan_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    dim, n = 32, 1500
    vectors = clustered(rng, n, dim)
    items = gallery_items(vectors)
    queries = unit_vectors(rng, 20, dim)
    config = IndexConfig(kind="ivf", nlist=16, nprobe=4)
    with (
        open_gallery(tmp_path / "s", dim, VERSION, index=config) as fast,
        open_gallery(
            tmp_path / "f", dim, VERSION, index=IndexConfig(kind="ivf", nlist=16, nprobe=4, ivf_scan="off")
        ) as slow,
    ):
        fast.add(items)
        slow.add(items)
        assert fast.stats()["index"]["ivf_scan"]["ntotal"] == n
        assert slow.stats()["index"]["ivf_scan"] is None
        for f in (None, Filters(modality=1), Filters(cameras=["c1", "c3"])):
            a, b = fast.search(queries, 10, f), slow.search(queries, 10, f)
            same = np.mean([x == y for x, y in zip(hit_ids(a), hit_ids(b), strict=True)])
            assert same >= 0.9
    with open_gallery(tmp_path / "s", dim, VERSION, index=config) as reopened:  # rebuilt from the lists
        assert reopened.stats()["index"]["ivf_scan"]["ntotal"] == n
    with pytest.raises(GalleryError, match="ivf_scan"):
        IndexConfig(ivf_scan="4bit")
