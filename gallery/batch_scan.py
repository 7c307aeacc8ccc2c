"""Exact top-k for batches of queries from a bf16 copy: one bf16 matrix product, then the proven float32 re-rank.

Why: the service coalesces concurrent searches into batches (service/search_batching.py). One query is a
memory-bound scan (``exact_scan.ExactScan``), but a batch of 16 against 1M x 1280 float32 vectors is a
41 GFLOP matrix product, compute-bound on a small CPU. On CPUs with AVX-512 BF16 (or AMX) torch's bf16
matrix product is faster than float32's (2-core AMD EPYC, 1M x 1280 x 16, a one-off probe: 115-168 ms
against 495 ms for the product alone; end to end in ``benchmarks/search.py``, with the top-k selection and
the re-rank, 47-57 against 46 batched QPS), so this copy scores a batch in bf16, keeps each query's top
``K`` candidates, and re-scores them exactly from the float32 master, as the exact scan does.

Why the answer equals float32 exact search: rounding to bf16 (8-bit significand, round to nearest) moves
each component of a vector and of a query by at most 2**-9 of itself, and torch's bf16 product
accumulates in float32 and rounds its result to bf16 once more. So a bf16 score is within
``eps = |q| |x|max (3 * 2**-9 + 2**-17 + 2 d 2**-24) + 2**-126 (sqrt(d) (|q| + |x|max) + d)`` of the
float32 one (the last term covers subnormal inputs and products, which bf16 hardware may flush to zero).
Every vector left out of the candidates scored at most ``a_K`` in bf16, so at most ``a_K + eps``
exactly; a query whose k-th re-ranked score is below that is answered by the float32 master instead
(the caller's fallback), never approximately. Scores are re-ranked with NumPy's float32 dot product,
not FAISS's kernel: ties closer than about d 2**-24 may come in either order. For unit vectors in 1280-d
eps is about 0.006, so queries whose 10th and ``K``-th neighbours lie closer than that fall back.

Memory: 2 d bytes per item (2.6 KB at 1280-d) on top of the master and the scan copy; opt-in
(``IndexConfig.batch_scan``).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

from .exact_scan import flat_storage, rerank_and_prove

logger = logging.getLogger(__name__)

#: Candidates per query taken from the bf16 scores before the exact re-rank.
DEFAULT_BATCH_CANDIDATES = 256


def bf16_error_bound(query_norms: np.ndarray, max_norm: float, dim: int) -> np.ndarray:
    """The largest difference between a query's bf16 score and its float32 score (see module doc)."""
    norms = np.asarray(query_norms, dtype=np.float64)
    relative = max_norm * (3.0 * 2.0**-9 + 2.0**-17 + 2.0 * dim * 2.0**-24)
    # bf16 hardware may flush subnormal inputs and products to zero: an absolute term for each.
    subnormal = 2.0**-126 * (np.sqrt(dim) * (norms + max_norm) + dim)
    return norms * relative + subnormal


class BatchScan:
    """A bf16 copy of a flat index's vectors, row-aligned with their ids, for batched exact search."""

    def __init__(self, dim: int, candidates: int = DEFAULT_BATCH_CANDIDATES) -> None:
        self.dim = int(dim)
        self.candidates = max(1, int(candidates))
        self._rows = torch.empty((0, self.dim), dtype=torch.bfloat16)
        self._ids = np.empty(0, dtype=np.int64)
        self._n = 0
        self.max_norm = 0.0
        self.fallbacks = 0  # queries handed back to the float32 master (for logs/tests)

    @classmethod
    def from_flat(cls, master: faiss.IndexIDMap2, candidates: int = DEFAULT_BATCH_CANDIDATES) -> BatchScan:
        """The bf16 copy of a flat ``IndexIDMap2(IndexFlatIP)`` (reading its storage in place)."""
        scan = cls(master.d, candidates)
        ids, vectors = flat_storage(master)
        for start in range(0, len(ids), 65536):
            scan.add(ids[start : start + 65536], vectors[start : start + 65536])
        return scan

    @property
    def ntotal(self) -> int:
        return self._n

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append rows (the storage grows by doubling, so a stream of small adds stays linear)."""
        if not len(ids):
            return
        x = np.asarray(vectors, dtype=np.float32)
        self.max_norm = max(self.max_norm, float(np.linalg.norm(x.astype(np.float64), axis=1).max()))
        need = self._n + len(ids)
        if need > self._rows.shape[0]:
            grown = torch.empty((max(need, 2 * self._rows.shape[0]), self.dim), dtype=torch.bfloat16)
            grown[: self._n] = self._rows[: self._n]
            self._rows = grown
            ids_grown = np.empty(grown.shape[0], dtype=np.int64)
            ids_grown[: self._n] = self._ids[: self._n]
            self._ids = ids_grown
        self._rows[self._n : need] = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)
        self._ids[self._n : need] = np.asarray(ids, dtype=np.int64)
        self._n = need

    def remove(self, ids: np.ndarray) -> None:
        """Drop the rows of ``ids`` (compacting the rest, as FAISS's flat index does)."""
        keep = ~np.isin(self._ids[: self._n], np.asarray(ids, dtype=np.int64))
        if keep.all():
            return
        kept = int(keep.sum())
        self._rows[:kept] = self._rows[: self._n][torch.from_numpy(keep)]
        self._ids[:kept] = self._ids[: self._n][keep]
        self._n = kept

    def search(
        self, master: faiss.IndexIDMap2, queries: np.ndarray, k: int, mask: np.ndarray | None, available: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact top-``k`` (scores, ids) of every query it can prove, and the rows it could not.

        Returns:
            (scores, ids, unproven): ``unproven`` are the query rows whose answer must come from the
            float32 master (their scores/ids rows are left empty).
        """
        nq = len(queries)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        n = self._n
        fetch = min(max(k, self.candidates), available, n)
        if n == 0 or fetch == 0:
            return scores, labels, np.arange(nq)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(torch.bfloat16)
        approx = torch.mm(q, self._rows[:n].T).float()  # [nq, n]
        ids = self._ids[:n]
        if mask is not None:
            inside = ids < len(mask)
            passes = np.zeros(n, dtype=bool)
            passes[inside] = mask[ids[inside]]
            approx[:, torch.from_numpy(~passes)] = -torch.inf
        top_scores, top_rows = torch.topk(approx, fetch, dim=1)
        top_scores, top_rows = top_scores.numpy(), top_rows.numpy()
        found = ids[top_rows]
        found[~np.isfinite(top_scores)] = -1
        norms = np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1)
        complete = fetch >= min(available, n)  # every matching item was a candidate
        best_scores, best_labels, proven = rerank_and_prove(
            master, queries, found, top_scores[:, fetch - 1], k, complete,
            bf16_error_bound(norms, self.max_norm, self.dim),
        )  # fmt: skip
        width = best_scores.shape[1]
        scores[proven, :width] = best_scores[proven]
        labels[proven, :width] = best_labels[proven]
        unproven = np.flatnonzero(~proven)
        self.fallbacks += len(unproven)
        return scores, labels, unproven

    def close(self) -> None:
        """Nothing to release (the interface the int8 batch scan shares)."""

    def retrain_due(self, n: int) -> bool:
        """bf16 copies need no training."""
        return False

    def describe(self) -> dict[str, object]:
        return {"codes": "bf16", "candidates": self.candidates, "fallbacks": self.fallbacks, "ntotal": self._n}
