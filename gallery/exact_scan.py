"""Exact top-k at memory bandwidth: an fp16 or int8 scan of the gallery, then a float32 re-rank proven exact.

Exact search over a flat index is bound by reading the vectors: 1M x 1280 float32 is 5 GB per query.
FAISS's ``IndexFlatIP`` also scans with one thread per query. This scan keeps a second copy of the
vectors in fp16 (FAISS ``IndexScalarQuantizer(QT_fp16)``: half the bytes), split into shards that a
thread pool searches in parallel (one query uses every core), and takes the top ``K``
candidates of each query from it. The float32 master copy (the gallery's ``IndexIDMap2(IndexFlatIP)``)
then re-scores those candidates exactly, and the top-k of the re-scored list is the answer.

Why the answer equals float32 exact search, not approximately: rounding a unit-norm vector to fp16 moves
each component by at most 2**-11 of itself (round to nearest; plus 2**-25 for subnormals), so an fp16
score is within ``eps = |q| (|x|max (2**-11 + 2 d 2**-24) + 2**-25 sqrt(d))`` of the float32 one (the
``2 d 2**-24`` term bounds float32 accumulation in both sums). Every vector left out of the candidates
scored at most ``a_K`` (the K-th candidate's fp16 score) in the scan, so at most ``a_K + eps`` exactly.
When the k-th re-ranked score is at least that, no left-out vector can enter the top-k; a query for which
it is not is scanned again with 4x the candidates, until it is (or every matching item is a candidate).
For d = 1280 eps is about 6.4e-4 in cosine, far below the gaps between a query's 10th and 256th
neighbours in practice, so the widening is rare; tests/test_gallery_exact_scan.py checks ids and scores
against float32 exact search, with filters, including galleries built to need the widening.

int8 codes (``codes="int8"``, d bytes per item) read half the bytes of fp16 again: per-dimension codes in
FAISS ``IndexScalarQuantizer(QT_8bit_direct_signed)``, scanned with integer arithmetic against an integer
query (``int8_codes.Int8Codes``, whose doc derives the bound: the stored vectors' measured error plus the
query's rounding). That is the per-dimension resolution of FAISS's ``QT_8bit`` at integer-dot-product speed
(``QT_8bit`` decodes ``min + (code + 0.5) / 255 * (max - min)`` per component in float; on the 2-core CPU
its scan ran 1.5x longer); the proof and the widening are then as for fp16.

Filters use the same ``IDSelectorBitmap`` as every other search: ``IndexIDMap2`` translates it for each
shard. Memory on top of the master's 4 d bytes per item: 2 d (fp16) or d (int8); 1280-d: 7.7 or 6.4 KB
per item instead of 5.1 KB.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from .int8_codes import Int8Codes, int8_error_bound

__all__ = ["CODES", "ExactScan", "flat_storage", "fp16_error_bound", "int8_error_bound", "rerank_and_prove", "rescore"]

logger = logging.getLogger(__name__)

#: Candidates taken from the fp16 scan per query before the exact re-rank (widened 4x when not proven).
DEFAULT_CANDIDATES = 256
#: Rows added to the shards at a time when copying the master (bounds the temporary memory).
_COPY_ROWS = 65536
#: Code formats of the scan copy.
CODES = ("fp16", "int8")


def fp16_error_bound(query_norms: np.ndarray, max_norm: float, dim: int) -> np.ndarray:
    """The largest difference between a query's fp16-scan score and its float32 score (see module doc)."""
    relative = max_norm * (2.0**-11 + 2.0 * dim * 2.0**-24) + 2.0**-25 * np.sqrt(dim)
    return (query_norms * relative).astype(np.float64)


def flat_storage(master: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of a flat ``IndexIDMap2(IndexFlatIP)``, the vectors read in place (no copy)."""
    n = int(master.ntotal)
    if not n:
        return np.empty(0, dtype=np.int64), np.empty((0, master.d), dtype=np.float32)
    flat = faiss.downcast_index(master.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * master.d).reshape(n, master.d)
    return faiss.vector_to_array(master.id_map), vectors


def rescore(master: faiss.IndexIDMap2, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    """float32 scores of each query against its candidates ``found`` (ids; -inf where there is none)."""
    valid = found >= 0
    flat_ids = found[valid]
    out = np.full(found.shape, -np.inf, dtype=np.float32)
    if not len(flat_ids):
        return out
    vectors = master.reconstruct_batch(flat_ids)
    rows = np.nonzero(valid)[0]
    out[valid] = np.einsum("ij,ij->i", vectors, queries[rows])
    return out


def rerank_and_prove(
    master: faiss.IndexIDMap2,
    queries: np.ndarray,
    found: np.ndarray,
    last_approx: np.ndarray,
    k: int,
    complete: bool,
    bound: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact top-``k`` of each query's candidates, and whether it is proven to be the true top-``k``.

    Args:
        master: the float32 index the candidates are re-scored from.
        queries: [nq, d].
        found: [nq, K] candidate ids from an approximate scan (-1: none).
        last_approx: [nq] the K-th candidate's approximate score: every item left out scored at most that.
        k: results wanted.
        complete: every matching item was a candidate (proven without the bound).
        bound: [nq] the largest difference between an approximate and a float32 score.

    Returns:
        (scores [nq, <=k], ids, proven [nq] bool): proven when the k-th exact score is at least
        ``last_approx + bound``, so no left-out item can enter the top-k.
    """
    exact = rescore(master, queries, found)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(exact, order, axis=1)
    top_labels = np.take_along_axis(found, order, axis=1)
    top_labels[~np.isfinite(top_scores)] = -1
    if complete:
        return top_scores, top_labels, np.ones(len(queries), dtype=bool)
    kth = top_scores[:, min(k, found.shape[1]) - 1].astype(np.float64)
    return top_scores, top_labels, kth >= last_approx.astype(np.float64) + bound


class ExactScan:
    """An fp16 or int8 copy of a flat index, sharded for parallel scans, that answers exact top-k with its
    master.

    The shards are searched by a small thread pool (FAISS releases the GIL while it searches) rather than
    by ``faiss.IndexShards``: each shard's ``IndexIDMap2`` swaps a translated selector into the search
    parameters it is given, so shards that share one parameter object (as ``IndexShards`` passes it) race.
    Here every shard gets its own ``SearchParameters`` around the same read-only selector.
    """

    def __init__(
        self,
        dim: int,
        shards: int,
        candidates: int = DEFAULT_CANDIDATES,
        codes: str = "fp16",
        training: np.ndarray | None = None,
    ) -> None:
        """Args:
        dim: vector dimension.
        shards: parallel shards (threads one query is scanned with).
        candidates: candidates per query from the scan before the exact re-rank.
        codes: "fp16" or "int8".
        training: int8 only: vectors to train the per-dimension ranges on (fewer than 1,024: +-4/sqrt(d)).
        """
        if codes not in CODES:
            raise ValueError(f"codes must be one of {CODES}, got {codes!r}")
        self.dim = int(dim)
        self.codes = codes
        self.candidates = max(1, int(candidates))
        qtype = faiss.ScalarQuantizer.QT_fp16 if codes == "fp16" else faiss.ScalarQuantizer.QT_8bit_direct_signed
        self._parts = [
            faiss.IndexIDMap2(faiss.IndexScalarQuantizer(self.dim, qtype, faiss.METRIC_INNER_PRODUCT))
            for _ in range(max(1, int(shards)))
        ]
        self._int8 = Int8Codes(self.dim, training) if codes == "int8" else None
        self._pool = ThreadPoolExecutor(len(self._parts), "clipmc-scan") if len(self._parts) > 1 else None
        self._fp16_max_norm = 0.0  # fp16: the largest norm added (int8 codes measure theirs as they encode)
        self.widened = 0  # queries whose first candidate list could not be proven complete (for logs/tests)

    @property
    def max_norm(self) -> float:
        """The largest norm of an added vector."""
        return self._int8.max_norm if self._int8 is not None else self._fp16_max_norm

    @property
    def max_error(self) -> float:
        """int8: the largest measured reconstruction error of an added vector (0 for fp16)."""
        return self._int8.max_error if self._int8 is not None else 0.0

    @property
    def centre_norm(self) -> float:
        return self._int8.centre_norm if self._int8 is not None else 0.0

    @classmethod
    def from_flat(
        cls, master: faiss.IndexIDMap2, shards: int, candidates: int = DEFAULT_CANDIDATES, codes: str = "fp16"
    ) -> ExactScan:
        """Build the fp16 or int8 copy of a flat ``IndexIDMap2(IndexFlatIP)`` (reading its storage in place;
        int8 ranges trained on an evenly spaced sample of it)."""
        ids, vectors = flat_storage(master)
        n = len(ids)
        training = Int8Codes.training_sample(vectors) if codes == "int8" else None
        scan = cls(master.d, shards, candidates, codes, training)
        for start in range(0, n, _COPY_ROWS):
            scan.add(ids[start : start + _COPY_ROWS], vectors[start : start + _COPY_ROWS])
        return scan

    def retrain_due(self, n: int) -> bool:
        """int8: whether the copy should be built again with ranges trained on its ``n`` vectors."""
        return self._int8 is not None and self._int8.retrain_due(n)

    def rebuilt(self, master: faiss.IndexIDMap2) -> ExactScan:
        """The same copy built again from ``master`` (int8: ranges trained on it); this one is closed."""
        new = ExactScan.from_flat(master, self.shards, self.candidates, self.codes)
        self.close()
        return new

    @property
    def shards(self) -> int:
        return len(self._parts)

    @property
    def ntotal(self) -> int:
        return sum(int(part.ntotal) for part in self._parts)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Spread a batch over the shards, the largest pieces to the emptiest shards (balanced scans)."""
        if not len(ids):
            return
        if self._int8 is None:
            norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
            self._fp16_max_norm = max(self._fp16_max_norm, float(norms.max()))
        else:
            vectors = self._int8.encode(vectors).astype(np.float32)  # integers QT_8bit_direct_signed stores exactly
        emptiest_first = sorted(self._parts, key=lambda part: part.ntotal)
        pieces = np.array_split(np.arange(len(ids)), len(self._parts))  # largest pieces first
        for part, rows in zip(emptiest_first, pieces, strict=True):
            if len(rows):
                part.add_with_ids(
                    np.ascontiguousarray(vectors[rows[0] : rows[-1] + 1]),
                    np.ascontiguousarray(ids[rows[0] : rows[-1] + 1]),
                )

    def remove(self, ids: np.ndarray) -> None:
        selector = faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))
        for part in self._parts:
            part.remove_ids(selector)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def error_bound(self, queries: np.ndarray) -> np.ndarray:
        """Per query, the largest difference between its scan score and its float32 score."""
        if self._int8 is not None:
            return self._int8.error_bound(queries)
        return fp16_error_bound(np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1), self.max_norm, self.dim)

    def _scan(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scan scores over all shards, in parallel, merged (int8: the query scaled, q.m added)."""
        offset = factor = None
        if self._int8 is not None:
            offset = self._int8.offsets(queries)[:, None]
            codes, factor, _ = self._int8.query_codes(queries)
            queries, factor = codes.astype(np.float32), factor[:, None]

        def one(part: faiss.IndexIDMap2) -> tuple[np.ndarray, np.ndarray]:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores, labels = part.search(queries, k, params=params)
            if offset is not None:
                scores = np.where(labels >= 0, scores / factor + offset, scores).astype(np.float32)
            return scores, labels

        if self._pool is None:
            return one(self._parts[0])
        results = list(self._pool.map(one, self._parts))
        scores = np.concatenate([r[0] for r in results], axis=1)
        labels = np.concatenate([r[1] for r in results], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(scores, top, axis=1), np.take_along_axis(labels, top, axis=1)

    def search(
        self,
        master: faiss.IndexIDMap2,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None,
        available: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` (scores, ids) among the items ``selector`` passes (``available`` of them)."""
        nq = len(queries)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        bound = self.error_bound(queries)
        rows = np.arange(nq)
        wanted = max(k, self.candidates)
        first = True
        while len(rows):
            fetch = min(wanted, available, self.ntotal)
            approx, found = self._scan(queries[rows], fetch, selector)
            complete = fetch >= min(available, self.ntotal)  # every matching item was a candidate
            top_scores, top_labels, proven = rerank_and_prove(
                master, queries[rows], found, approx[:, fetch - 1], k, complete, bound[rows]
            )
            done = rows[proven]
            width = top_scores.shape[1]
            scores[done, :width] = top_scores[proven]
            labels[done, :width] = top_labels[proven]
            if first and not proven.all():
                self.widened += int((~proven).sum())
            first = False
            rows = rows[~proven]
            wanted *= 4
        return scores, labels

    def describe(self) -> dict[str, Any]:
        out = {"codes": self.codes, "shards": self.shards, "candidates": self.candidates, "widened": self.widened}
        if self._int8 is not None:
            out["max_error"] = round(self.max_error, 6)
            out["trained_on"] = self._int8.trained_on
        return out
