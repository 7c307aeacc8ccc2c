"""CAGRA (cuVS's GPU graph index, through faiss-gpu-cuvs) as the GPU side of a gallery index.

``IndexConfig(gpu_index="cagra")`` serves searches on a GPU host from a ``faiss.GpuIndexCagra`` built from
the CPU index's vectors, instead of a GPU copy of the CPU index. The CPU index stays the master copy
(snapshots, deletes, filtered fallbacks). CAGRA is approximate, so its recall@10 against exact search is
measured when it is built, the way IVF's is: 100 stored vectors as queries, each query's own item left
out, exact neighbours from the same float32 vectors.

A CAGRA graph cannot take additions or deletions in place: a write marks it stale, searches go to the
CPU master until the gallery rebuilds the graph (after that write). It suits read-mostly galleries; an
ingest-heavy one is better served by ``gpu_index="copy"``.

Needs FAISS built with cuVS (``pip install faiss-gpu-cuvs``; the image ships it) and a GPU;
``cagra_available()`` says whether this process has both. The tests that need them skip here with that
reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

#: The most neighbours one CAGRA search returns (its internal top-k list, itopk_size, must hold them).
CAGRA_MAX_K = 1024


def cagra_available() -> bool:
    """True when FAISS has its cuVS build (GpuIndexCagra) and sees a GPU."""
    return hasattr(faiss, "GpuIndexCagra") and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class CagraIndex:
    """A CAGRA graph over (ids, vectors) on one GPU; ``search`` returns item ids like the other indexes."""

    def __init__(
        self,
        resources: Any,
        device: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        graph_degree: int = 64,
        recall_queries: int = 100,
        seed: int = 0,
    ) -> None:
        started = time.perf_counter()
        config = faiss.GpuIndexCagraConfig()
        config.device = int(device)
        config.graph_degree = int(graph_degree)
        config.intermediate_graph_degree = 2 * int(graph_degree)
        self.index = faiss.GpuIndexCagra(resources, int(vectors.shape[1]), faiss.METRIC_INNER_PRODUCT, config)
        self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))  # train() builds the graph
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.graph_degree = int(graph_degree)
        self.build_s = time.perf_counter() - started
        self.recall_at_10 = self._measure_recall(vectors, recall_queries, seed)
        logger.info(
            "CAGRA graph over %d vectors (degree %d) on GPU %d in %.1fs, recall@10 %s",
            len(self.ids),
            self.graph_degree,
            device,
            self.build_s,
            f"{self.recall_at_10:.3f}" if self.recall_at_10 is not None else "n/a",
        )

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, item ids); missing hits are id -1."""
        k = max(1, min(k, CAGRA_MAX_K, self.ntotal))
        params = faiss.SearchParametersCagra()
        params.itopk_size = max(64, -(-k // 32) * 32)  # a multiple of 32, at least k
        scores, positions = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        labels = np.where(positions >= 0, self.ids[np.clip(positions, 0, None)], -1)
        return scores, labels

    def _measure_recall(self, vectors: np.ndarray, n: int, seed: int) -> float | None:
        if len(self.ids) < 12 or n < 1:
            return None
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(self.ids), size=min(n, len(self.ids)), replace=False)
        queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        scores = queries @ vectors.T  # float32 exact
        top = np.argpartition(-scores, 11, axis=1)[:, :11]
        exact = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
        found = self.search(queries, 11)[1]
        hits = 0
        for row, truth, got in zip(rows, exact, found, strict=True):
            own = int(self.ids[row])
            truth_ids = [int(self.ids[p]) for p in truth if p != row][:10]
            got_ids = [int(i) for i in got if i != own][:10]
            hits += len(set(truth_ids) & set(got_ids))
        return hits / (10 * len(rows))

    def describe(self) -> dict[str, Any]:
        return {"graph_degree": self.graph_degree, "build_s": round(self.build_s, 2), "recall_at_10": self.recall_at_10}
