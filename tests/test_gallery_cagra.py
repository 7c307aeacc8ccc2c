"""CAGRA as the GPU index kind (gallery/cagra.py): configuration and CPU behaviour here, the graph itself
where faiss-gpu-cuvs and a GPU are present."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from clipmc.gallery import FaissGallery, Filters, GalleryError, IndexConfig, Item
from clipmc.gallery.cagra import cagra_available
from clipmc.gallery.index import VectorIndex
from tests.test_gallery import unit_vectors

DIM = 32


def items_for(vectors: np.ndarray) -> list[Item]:
    return [Item(vector=v, modality=i % 2, camera=f"c{i % 4}", external_id=f"e{i}") for i, v in enumerate(vectors)]


def test_cagra_settings_are_checked() -> None:
    assert IndexConfig(gpu_index="cagra").gpu_index == "cagra"
    with pytest.raises(GalleryError, match="gpu_index"):
        IndexConfig(gpu_index="hnsw")  # type: ignore[arg-type]
    with pytest.raises(GalleryError, match="cagra_graph_degree"):
        IndexConfig(cagra_graph_degree=4)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_vectors_reads_back_what_the_cpu_index_holds(kind: str) -> None:
    """The graph is built from the CPU master's own vectors (flat storage in place, IVF lists copied)."""
    rng = np.random.default_rng(0)
    x = unit_vectors(rng, 400, DIM)
    ids = rng.permutation(10_000)[:400].astype(np.int64)
    index = VectorIndex.flat(DIM) if kind == "flat" else VectorIndex.ivf(DIM, x, 8, nprobe=2, iterations=4, seed=1)
    index.add(ids, x)
    index.remove(ids[:30])
    got_ids, got = index.vectors()
    order = np.argsort(got_ids)
    want = np.argsort(ids[30:])
    assert np.array_equal(got_ids[order], ids[30:][want])
    np.testing.assert_array_equal(got[order], x[30:][want])


@pytest.mark.skipif(cagra_available(), reason="a cuVS GPU is present: the GPU test below runs instead")
def test_cagra_without_a_gpu_searches_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    x = unit_vectors(rng, 200, DIM)
    config = IndexConfig(kind="flat", gpu_index="cagra", use_gpu=True)
    with caplog.at_level(logging.WARNING), FaissGallery(tmp_path / "g", DIM, "v1", index=config) as gallery:
        gallery.add(items_for(x))
        stats = gallery.stats()["index"]
        assert stats["gpu"] is False and stats["gpu_index"] is None and stats["cagra"] is None
        hits = gallery.search(x[5], 3)[0]
        assert hits[0].item.external_id == "e5"
    assert "faiss-gpu-cuvs" in caplog.text


@pytest.mark.skipif(not cagra_available(), reason="needs faiss-gpu-cuvs (FAISS with cuVS) and a CUDA GPU")
def test_cagra_gallery_recall_filters_and_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = unit_vectors(rng, 5000, DIM)
    config = IndexConfig(kind="flat", gpu_index="cagra", use_gpu=True, cagra_graph_degree=32)
    with FaissGallery(tmp_path / "g", DIM, "v1", index=config) as gallery:
        ids = gallery.add(items_for(x)).ids
        stats = gallery.stats()["index"]
        assert stats["gpu_index"] == "cagra" and stats["cagra"]["recall_at_10"] >= 0.9
        hits = gallery.search(x[7], 10, Filters(modality=1))[0]
        assert all(h.item.modality == 1 for h in hits) and len(hits) == 10
        gallery.remove(ids[:100])  # drops the graph; the gallery rebuilds it after the write
        stats = gallery.stats()["index"]
        assert stats["gpu_index"] == "cagra" and stats["ntotal"] == 4900
        assert all(h.id not in set(ids[:100]) for h in gallery.search(x[:20], 10)[0])
