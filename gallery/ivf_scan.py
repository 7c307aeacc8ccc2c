"""IVF at a quarter of the bytes: an 8-bit copy of an IVF index's lists is scanned, the float32 master
re-ranks.

Why: an ``IndexIVFFlat`` query at nprobe 32 over 1M x 1280 reads 32 lists of float32 vectors (about 160 MB),
so it is bound by memory bandwidth, and the exact int8 scan (``exact_scan.ExactScan``) brought exact search
to within 10x of it. This copy keeps the same vectors in the same lists (it shares the master's coarse
quantizer; it is built from the master's lists, and later adds are assigned by the same quantizer) as FAISS
``QT_8bit`` codes (per-dimension ranges trained on the gallery, again as it grows: ``retrain_due``), so
scanning the same ``nprobe`` lists reads a quarter of the bytes; the top
``candidates`` of each query are then re-scored from the float32 master and the best ``k`` returned with
their exact scores. In a one-off probe on the 2-core AMD EPYC (1M x 1280, nlist 1000, nprobe 32) the 8-bit
scan took 2.3 ms against 5.3 ms for the float32 lists, and its top 40 held every float32 top-10 hit that
the float32 lists held (recall@10 0.950 both); ``benchmarks/search.py`` measures recall and speed per
nprobe.

Unlike the exact scan this copy proves nothing: IVF is approximate to begin with (which lists are probed
decides recall), and the 8-bit ordering can, rarely, drop a hit the float32 lists would have ranked in the
top k. Scores returned are exact float32 scores. The master gets a hash-table direct map (its
``reconstruct`` by id, for the re-rank; one table entry per item). Memory: d bytes per item (1.3 KB at
1280-d) on top of the master's 4 d.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from .exact_scan import rescore
from .int8_codes import MAX_TRAIN, MIN_TRAIN

logger = logging.getLogger(__name__)

#: Candidates per query re-ranked from the master.
DEFAULT_IVF_CANDIDATES = 40


def list_vectors(master: faiss.IndexIVFFlat, lst: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) stored in one of ``master``'s lists, read in place."""
    invlists = master.invlists
    size = invlists.list_size(lst)
    ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
    codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size)
    return ids, codes.view(np.float32).reshape(size, master.d)


class IvfScan:
    """An 8-bit ``IndexIVFScalarQuantizer`` over an ``IndexIVFFlat``'s lists, for candidates it re-ranks."""

    def __init__(self, master: faiss.IndexIVFFlat, candidates: int = DEFAULT_IVF_CANDIDATES, seed: int = 0) -> None:
        """Build the copy from ``master`` (its lists read in place, 8-bit ranges trained on a sample of them).

        Args:
            master: the gallery's IVF index (given a hash-table direct map here, for the re-rank).
            candidates: candidates per query re-ranked from the master.
            seed: for the training sample.
        """
        self.candidates = max(1, int(candidates))
        self.seed = seed
        self.dim = int(master.d)
        self._master = master  # owns the quantizer this copy borrows: kept alive as long as the copy
        self.trained_on = 0
        if master.direct_map.type != faiss.DirectMap.Hashtable:
            master.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.index = faiss.IndexIVFScalarQuantizer(
            master.quantizer, self.dim, master.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
        )
        self.index.parallel_mode = master.parallel_mode
        sizes = np.array([master.invlists.list_size(lst) for lst in range(master.nlist)], dtype=np.int64)
        self._train(master, sizes, seed)
        for lst in np.flatnonzero(sizes):
            ids, vectors = list_vectors(master, int(lst))
            assign = np.full(len(ids), lst, dtype=np.int64)
            self.index.add_core(len(ids), faiss.swig_ptr(np.ascontiguousarray(vectors)),
                                faiss.swig_ptr(np.ascontiguousarray(ids)), faiss.swig_ptr(assign))  # fmt: skip

    def _train(self, master: faiss.IndexIVFFlat, sizes: np.ndarray, seed: int) -> None:
        """The 8-bit ranges from up to 65,536 vectors sampled across the lists (none yet: +-1, unit vectors)."""
        total = int(sizes.sum())
        self.trained_on = min(total, MAX_TRAIN)
        if not total:
            self.index.sq.train(np.concatenate([np.eye(self.dim), -np.eye(self.dim)]).astype(np.float32))
            self.index.is_trained = True
            return
        rng = np.random.default_rng(seed)
        share = min(1.0, MAX_TRAIN / total)
        parts = []
        for lst in np.flatnonzero(sizes):
            vectors = list_vectors(master, int(lst))[1]
            take = max(1, round(len(vectors) * share))
            parts.append(vectors[np.sort(rng.choice(len(vectors), size=min(take, len(vectors)), replace=False))])
        self.index.sq.train(np.concatenate(parts))
        self.index.is_trained = True

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def retrain_due(self, n: int) -> bool:
        """Whether the copy should be built again with ranges trained on its ``n`` vectors: at 1,024 and each
        time the gallery doubles past its sample, up to 65,536 (as ``int8_codes.Int8Codes.retrain_due``)."""
        return n >= MIN_TRAIN and self.trained_on < min(MAX_TRAIN, n // 2)

    def rebuilt(self, master: faiss.IndexIVFFlat) -> IvfScan:
        """The same copy built again from ``master`` (ranges trained on it)."""
        return IvfScan(master, self.candidates, self.seed)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add to the lists the shared quantizer assigns them: the same computation on the same vectors as
        the master's, so the same lists."""
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids))

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))

    def search(
        self, master: faiss.IndexIVFFlat, queries: np.ndarray, k: int, selector: faiss.IDSelector | None, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (exact float32 scores, ids) among the top ``candidates`` of the 8-bit scan of ``nprobe``
        lists, filtered by ``selector``."""
        fetch = max(k, self.candidates)
        _, found = self.index.search(queries, fetch, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))
        exact = rescore(master, np.ascontiguousarray(queries, dtype=np.float32), found)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        labels = np.take_along_axis(found, order, axis=1)
        labels[~np.isfinite(scores)] = -1
        return scores, labels

    def describe(self) -> dict[str, object]:
        return {"codes": "QT_8bit", "candidates": self.candidates, "ntotal": self.ntotal, "trained_on": self.trained_on}
