"""The FAISS side of the gallery: a rebuildable search cache over the SQLite store.

Two kinds of index, both keyed by the store's item ids and both able to delete:

- ``flat``: exact inner product, ``IndexIDMap2(IndexFlatIP)``. The default.
- ``ivf``: ``IndexIVFFlat`` (inner product, spherical k-means) holding the ids itself. Approximate,
  for large galleries; its recall@10 against exact search is measured when it is built. (Not wrapped
  in ``IndexIDMap2``: that wrapper's ``remove_ids`` assumes the sub-index renumbers like a flat index,
  which IVF does not. HNSW is not offered: FAISS's HNSW cannot delete.)

Filters arrive as a boolean mask indexed by item id and become a ``faiss.IDSelectorBitmap``, so FAISS
skips non-matching items while it searches and the top-k is taken over matching items only.

When FAISS has GPU support and a GPU is present, a GPU copy serves searches. The CPU index stays the
master copy because GPU indexes can neither delete nor be written to disk: adds go to both, a delete
re-copies the CPU index to the GPU, snapshots are written from the CPU index. GPU indexes take no
ID selector, so a filtered search on the GPU over-fetches and drops non-matching hits, and any query
left with fewer hits than it should have is answered again on the CPU with the selector.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np

from clipmc.gallery.cagra import CAGRA_MAX_K, CagraIndex
from clipmc.gallery.errors import GalleryError
from clipmc.gallery.exact_scan import DEFAULT_CANDIDATES, ExactScan, flat_storage
from clipmc.gallery.ivf_scan import DEFAULT_IVF_CANDIDATES, IvfScan, list_vectors

if TYPE_CHECKING:
    from clipmc.gallery.batch_int8 import Int8BatchScan
    from clipmc.gallery.batch_scan import BatchScan  # imports torch: loaded only when a batch scan is asked for

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf"]
#: FAISS wants at least 39 training points per IVF list; below this a gallery stays flat.
MIN_IVF_ITEMS = 39
#: FAISS ``IndexIVF.parallel_mode`` 1: threads split a query's probed lists, not the queries. FAISS's default
#: (0, one thread per query) leaves every core but one idle on the service's usual one-query search; on the
#: 2-core CPU one query at nprobe 32 took 0.57x the time and batches of 16 or 64 gained 10% too (300k x 1280).
IVF_PARALLEL_MODE = 1
#: The most results a FAISS GPU index returns for one query.
GPU_MAX_K = 2048
#: How many more hits than asked a filtered GPU search fetches before falling back to the CPU.
GPU_OVERFETCH = 8
#: From this many queries in one call, exact search is a matrix product over the float32 master (every
#: vector read once for the whole batch) rather than one fp16 scan per query: the batches that the
#: service's search coalescing (service/search_batching.py) forms under concurrent load.
BATCH_BLAS_MIN = 3
# FAISS computes flat inner products with BLAS only from 20 queries at once (its default), and with a
# per-query SIMD loop below that: a 16-query batch would then read the gallery 16 times. Lower the
# process-wide switch to where a batch starts to pay (FAISS's own tuning knob; it only picks the kernel).
faiss.cvar.distance_compute_blas_threshold = min(int(faiss.cvar.distance_compute_blas_threshold), BATCH_BLAS_MIN)
# ... and it multiplies query blocks of up to 4096 rows by database blocks of 1024 rows: for a batch of a
# few dozen queries that is a thousand small GEMMs per million items, 5-10x slower on this project's
# 2-core machine than one NumPy product (benchmarks/search.py). Blocks of 128 queries x 32768 items
# (16 MB of scores) make each GEMM large enough to run at BLAS speed.
faiss.cvar.distance_compute_blas_query_bs = 128
faiss.cvar.distance_compute_blas_database_bs = 32768


@dataclass
class IndexConfig:
    """How the gallery indexes its vectors.

    ``kind="auto"`` uses the exact flat index below ``ivf_threshold`` items and IVF from there on (an
    IVF index is kept once built).
    ``nlist`` defaults to about sqrt(n) lists (at least 16, and at least 39 training points per list);
    ``train_size`` to 40 points per list; ``nprobe`` is how many lists a query scans (more: slower,
    better recall). ``use_gpu=None`` uses a GPU when FAISS can; ``gpu_index`` is what the GPU searches:
    ``"copy"`` (a GPU copy of the CPU index: exact or IVF as on the CPU) or ``"cagra"`` (cuVS's graph index,
    approximate, recall@10 measured when built: ``gallery/cagra.py``).
    ``exact_scan="int8"`` (default) answers exact (flat) searches from 8-bit codes scanned in
    ``scan_shards`` parallel shards and re-ranked in float32, with the same result as float32 search
    (``exact_scan.ExactScan``; each stored vector's error measured, the codes' ranges trained on the
    gallery); ``"fp16"`` does the same from an fp16 copy (twice the bytes, no training); ``"float32"``
    searches the ``IndexFlatIP`` alone (least memory).
    ``batch_scan`` answers batches of exact (flat) searches, the ones the service's search coalescing
    forms: ``"int8"`` from int8 codes with ONNX Runtime's integer product (``batch_int8.Int8BatchScan``;
    d bytes more per item; CPUs with VNNI or AMX), ``"bf16"`` from a bf16 copy (``batch_scan.BatchScan``;
    2 d bytes more per item), both re-ranked and proven like the exact scan; ``"off"`` multiplies the
    float32 master; ``"auto"`` (default) is ``"int8"`` where this CPU's integer product is exact, else
    ``"off"``. A query a batch scan cannot prove is answered by the exact scan (or the master).
    ``ivf_scan="8bit"`` (default) scans an 8-bit copy of an IVF index's lists (a quarter of the bytes) and
    re-ranks its top ``ivf_candidates`` from the float32 lists (``ivf_scan.IvfScan``; d bytes more per
    item); ``"off"`` scans the float32 lists.
    """

    kind: Literal["auto", "flat", "ivf"] = "auto"
    ivf_threshold: int = 1_000_000
    nlist: int | None = None
    nprobe: int = 32
    train_size: int | None = None
    kmeans_iterations: int = 10
    use_gpu: bool | None = None
    gpu_device: int = 0
    gpu_index: Literal["copy", "cagra"] = "copy"
    cagra_graph_degree: int = 64
    recall_queries: int = 100
    seed: int = 1234
    exact_scan: Literal["fp16", "int8", "float32"] = "int8"
    scan_shards: int | None = None
    scan_candidates: int = DEFAULT_CANDIDATES
    batch_scan: Literal["auto", "off", "bf16", "int8"] = "auto"
    ivf_scan: Literal["8bit", "off"] = "8bit"
    ivf_candidates: int = DEFAULT_IVF_CANDIDATES

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivf"):
            raise GalleryError(f"index kind must be 'auto', 'flat' or 'ivf', got {self.kind!r}")
        for name in ("ivf_threshold", "nprobe", "kmeans_iterations"):
            if int(getattr(self, name)) < 1:
                raise GalleryError(f"{name} must be at least 1")
        if self.nlist is not None and self.nlist < 1:
            raise GalleryError("nlist must be at least 1")
        if self.gpu_index not in ("copy", "cagra"):
            raise GalleryError(f"gpu_index must be 'copy' or 'cagra', got {self.gpu_index!r}")
        if self.cagra_graph_degree < 8:
            raise GalleryError("cagra_graph_degree must be at least 8")
        if self.exact_scan not in ("fp16", "int8", "float32"):
            raise GalleryError(f"exact_scan must be 'fp16', 'int8' or 'float32', got {self.exact_scan!r}")
        if self.scan_shards is not None and self.scan_shards < 1:
            raise GalleryError("scan_shards must be at least 1")
        if self.scan_candidates < 1:
            raise GalleryError("scan_candidates must be at least 1")
        if self.ivf_scan not in ("8bit", "off"):
            raise GalleryError(f"ivf_scan must be '8bit' or 'off', got {self.ivf_scan!r}")
        if self.ivf_candidates < 1:
            raise GalleryError("ivf_candidates must be at least 1")
        if self.batch_scan not in ("auto", "off", "bf16", "int8"):
            raise GalleryError(f"batch_scan must be 'auto', 'off', 'bf16' or 'int8', got {self.batch_scan!r}")

    def shards(self) -> int:
        """Threads one exact query is scanned with: ``scan_shards``, or FAISS's OpenMP thread count."""
        return int(self.scan_shards or faiss.omp_get_max_threads())

    def kind_for(self, count: int) -> IndexKind:
        """The index kind to use for a gallery of ``count`` items (flat while too small to train IVF)."""
        wanted: IndexKind = "flat"
        if self.kind == "ivf" or (self.kind == "auto" and count >= self.ivf_threshold):
            wanted = "ivf"
        return "flat" if count < MIN_IVF_ITEMS else wanted

    def nlist_for(self, count: int) -> int:
        default = min(65536, max(16, round(math.sqrt(max(count, 1)))))
        wanted = self.nlist if self.nlist is not None else default
        return max(1, min(wanted, count // MIN_IVF_ITEMS))


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def selector_from_mask(mask: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An ``IDSelectorBitmap`` over ids ``0..len(mask)-1``; keep the returned bitmap alive while using it.

    FAISS takes the bitmap's size in bytes (an id is a member iff ``id / 8`` is below it and its bit is set),
    so ids past the mask read as non-members, not past the end of the bitmap.
    """
    bitmap = np.packbits(mask.astype(bool, copy=False), bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


class VectorIndex:
    """A CPU FAISS index keyed by item id, with an optional GPU mirror for searching."""

    def __init__(self, cpu: faiss.Index, kind: IndexKind, *, nprobe: int = 32) -> None:
        self.cpu = cpu
        self.kind: IndexKind = kind
        self.nprobe = nprobe
        if kind == "ivf":
            faiss.extract_index_ivf(cpu).parallel_mode = IVF_PARALLEL_MODE
        self.recall_at_10: float | None = None
        self._gpu: Any = None
        self._gpu_resources: Any = None
        self._gpu_device = 0
        self._cagra: CagraIndex | None = None
        self.gpu_stale = False  # a CAGRA graph was dropped by a write and waits for a rebuild
        self._scan: ExactScan | None = None
        self._batch: BatchScan | Int8BatchScan | None = None
        self._ivf_scan: IvfScan | None = None

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def flat(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "flat")

    @classmethod
    def ivf(cls, dim: int, training: np.ndarray, nlist: int, *, nprobe: int, iterations: int, seed: int) -> VectorIndex:
        """A trained, empty IVF index (spherical k-means: the vectors are unit-norm)."""
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = iterations
        index.cp.spherical = True
        index.cp.seed = seed
        index.cp.max_points_per_centroid = max(1, math.ceil(len(training) / nlist))
        index.train(np.ascontiguousarray(training, dtype=np.float32))
        index.own_fields = True
        quantizer.this.disown()
        index.nprobe = nprobe
        return cls(index, "ivf", nprobe=nprobe)

    @classmethod
    def load(cls, path: Path, *, nprobe: int) -> VectorIndex:
        index = faiss.read_index(str(path))
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = nprobe
            return cls(index, "ivf", nprobe=nprobe)
        if isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index), faiss.IndexFlatIP):
            return cls(index, "flat", nprobe=nprobe)
        raise GalleryError(f"{path} holds an index of an unexpected type ({type(index).__name__})")

    def save(self, path: Path) -> None:
        faiss.write_index(self.cpu, str(path))

    # -- exact scan (fp16 or int8 codes) --------------------------------------------------------------------------

    def attach_scan(self, shards: int, candidates: int = DEFAULT_CANDIDATES, codes: str = "fp16") -> None:
        """Answer exact searches from an fp16 or int8 copy of this flat index (built from it now, kept in
        step)."""
        if self.kind != "flat":
            raise GalleryError("the exact scan is for flat indexes")
        self._scan = ExactScan.from_flat(self.cpu, shards, candidates, codes)
        logger.info("%s exact scan over %d vectors in %d shards", codes, self._scan.ntotal, self._scan.shards)

    def attach_batch_scan(
        self, candidates: int = DEFAULT_CANDIDATES, codes: str = "bf16", threads: int = 2, **sizes: int
    ) -> None:
        """Answer batches of exact searches from a bf16 or int8 copy of this flat index (built now, kept in
        step; int8 scores ``threads`` shards at a time, ``sizes``: its ``shard_rows`` and ``tail_rows``)."""
        if self.kind != "flat":
            raise GalleryError("the batch scan is for flat indexes")
        self.detach_batch_scan()
        if codes == "int8":
            from clipmc.gallery.batch_int8 import Int8BatchScan

            self._batch = Int8BatchScan.from_flat(self.cpu, candidates, threads, **sizes)
        elif codes == "bf16":
            from clipmc.gallery.batch_scan import BatchScan

            self._batch = BatchScan.from_flat(self.cpu, candidates)
        else:
            raise GalleryError(f"batch scan codes must be 'bf16' or 'int8', got {codes!r}")
        logger.info("%s batch scan over %d vectors", codes, self._batch.ntotal)

    def detach_batch_scan(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None

    def attach_ivf_scan(self, candidates: int = DEFAULT_IVF_CANDIDATES, seed: int = 0) -> None:
        """Answer IVF searches from an 8-bit copy of this IVF index's lists, re-ranked from it (built now,
        kept in step)."""
        if self.kind != "ivf":
            raise GalleryError("the IVF scan is for IVF indexes")
        self._ivf_scan = IvfScan(self.cpu, candidates, seed)
        logger.info("8-bit IVF scan over %d vectors", self._ivf_scan.ntotal)

    @property
    def has_ivf_scan(self) -> bool:
        return self._ivf_scan is not None

    def detach_ivf_scan(self) -> None:
        """Stop using the 8-bit lists; the master's hash-table direct map (their re-rank's) goes too."""
        self._ivf_scan = None
        if self.kind == "ivf" and self.cpu.direct_map.type != faiss.DirectMap.NoMap:
            self.cpu.set_direct_map_type(faiss.DirectMap.NoMap)

    def detach_scan(self) -> None:
        """Stop using (and free) the scan copy: exact searches go to the float32 index again."""
        if self._scan is not None:
            self._scan.close()
            self._scan = None

    # -- GPU mirror -------------------------------------------------------------------------------

    def to_gpu(self, device: int = 0) -> None:
        """Serve searches from a GPU copy; the CPU index stays the master."""
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        self._gpu_device = device
        self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, device, self.cpu)
        if self.kind == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(self._gpu, "nprobe", self.nprobe)
        logger.info("gallery index copied to GPU %d (%d vectors)", device, self.cpu.ntotal)

    def to_gpu_cagra(
        self, device: int = 0, *, graph_degree: int = 64, recall_queries: int = 100, seed: int = 0
    ) -> None:
        """Serve searches from a CAGRA graph over this index's vectors; the CPU index stays the master."""
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        self._gpu_device = device
        ids, vectors = self.vectors()
        self._cagra = CagraIndex(
            self._gpu_resources,
            device,
            ids,
            vectors,
            graph_degree=graph_degree,
            recall_queries=recall_queries,
            seed=seed,
        )
        self._gpu = self._cagra
        self.gpu_stale = False

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of everything in the CPU index (a view for flat, a copy for IVF)."""
        if self.kind == "flat":
            return flat_storage(self.cpu)
        lists = [list_vectors(self.cpu, lst) for lst in range(self.cpu.nlist) if self.cpu.invlists.list_size(lst)]
        if not lists:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate([ids for ids, _ in lists]), np.concatenate([vectors for _, vectors in lists])

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def release_gpu(self) -> None:
        self._gpu = None
        self._cagra = None
        self._gpu_resources = None

    def release(self) -> None:
        """Drop the GPU copy and stop the exact scan's threads (an index being replaced or closed)."""
        self.release_gpu()
        self.detach_scan()
        self.detach_batch_scan()
        self.detach_ivf_scan()

    # -- contents ---------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    @property
    def dim(self) -> int:
        return int(self.cpu.d)

    @property
    def nlist(self) -> int | None:
        return int(self.cpu.nlist) if self.kind == "ivf" else None

    def ids(self) -> np.ndarray:
        """All ids in the index, sorted."""
        if self.kind == "flat":
            ids = faiss.vector_to_array(self.cpu.id_map)
        else:
            invlists = self.cpu.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst)).copy()
                for lst in range(self.cpu.nlist)
                if invlists.list_size(lst)
            ]
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.sort(ids.astype(np.int64, copy=False))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.cpu.add_with_ids(vectors, ids)
        self._scan = self._kept_in_step(self._scan, ids, vectors)
        self._batch = self._kept_in_step(self._batch, ids, vectors)
        self._ivf_scan = self._kept_in_step(self._ivf_scan, ids, vectors)
        if self._cagra is not None:
            self._drop_cagra()
        elif self._gpu is not None:
            self._gpu.add_with_ids(vectors, ids)

    def _kept_in_step(self, copy: Any, ids: np.ndarray, vectors: np.ndarray) -> Any:
        """A search copy after the master took ``ids``: the copy itself with them added, or, when its 8-bit
        ranges were trained on too few vectors, a copy built again from the master (which holds them now)."""
        if copy is None:
            return None
        if copy.retrain_due(self.ntotal):
            return copy.rebuilt(self.cpu)
        copy.add(ids, vectors)
        return copy

    def remove(self, ids: np.ndarray | list[int]) -> int:
        if not len(ids):
            return 0
        wanted = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == "ivf" and self.cpu.direct_map.type == faiss.DirectMap.Hashtable:
            # FAISS removes through a hash-table direct map (the IVF scan's re-rank) only by id array.
            selector: faiss.IDSelector = faiss.IDSelectorArray(len(wanted), faiss.swig_ptr(wanted))
        else:
            selector = faiss.IDSelectorBatch(wanted)
        removed = int(self.cpu.remove_ids(selector))
        for copy in (self._scan, self._batch, self._ivf_scan):
            if removed and copy is not None:
                copy.remove(wanted)
        if removed and self._cagra is not None:
            self._drop_cagra()
        elif removed and self._gpu is not None:
            self.to_gpu(self._gpu_device)  # GPU indexes cannot delete: re-copy the master
        return removed

    def _drop_cagra(self) -> None:
        """A CAGRA graph cannot change in place: search on the CPU until the gallery rebuilds it."""
        self._gpu = None
        self._cagra = None
        self.gpu_stale = True

    # -- search -----------------------------------------------------------------------------------

    def _cpu_search(
        self,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None,
        available: int,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "flat":
            if self._scan is not None and len(queries) < BATCH_BLAS_MIN:
                return self._scan.search(self.cpu, queries, k, selector, available)
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            batch = self._batch  # read once
            if batch is None or len(queries) < BATCH_BLAS_MIN:
                return self.cpu.search(queries, k, params=params)
            scores, labels, unproven = batch.search(self.cpu, queries, k, mask, available)
            if len(unproven):  # the batch scan could not prove these: the exact scan (it widens) or the master
                if self._scan is not None:
                    scores[unproven], labels[unproven] = self._scan.search(
                        self.cpu, queries[unproven], k, selector, available
                    )
                else:
                    scores[unproven], labels[unproven] = self.cpu.search(queries[unproven], k, params=params)
            return scores, labels
        # IVF only scans nprobe lists; widen the scan for queries that came back short (few matching
        # items in the scanned lists) until they are complete or every list was scanned (exact).
        nprobe = min(self.nprobe, self.cpu.nlist)
        scores, labels = self._ivf_search(queries, k, selector, nprobe)
        wanted = min(k, available)
        while nprobe < self.cpu.nlist:
            short = np.flatnonzero((labels >= 0).sum(axis=1) < wanted)
            if not len(short):
                break
            nprobe = min(self.cpu.nlist, nprobe * 4)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            scores[short], labels[short] = self.cpu.search(queries[short], k, params=params)
        return scores, labels

    def _ivf_search(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None, nprobe: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """IVF top-``k`` over ``nprobe`` lists: from the 8-bit copy, re-ranked, when attached."""
        scan = self._ivf_scan  # read once
        if scan is not None:
            return scan.search(self.cpu, queries, k, selector, nprobe)
        return self.cpu.search(queries, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe))

    def search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, available: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query among the ids where ``mask`` is True (all when None).

        ``available`` is how many items pass the mask: a query is complete when it has
        ``min(k, available)`` hits. Missing hits are id -1.
        """
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if self.ntotal == 0 or available == 0:
            nq = len(queries)
            return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
        selector, bitmap = selector_from_mask(mask) if mask is not None else (None, None)
        gpu = self._gpu  # read once: a write may drop a CAGRA graph while this search runs
        if gpu is None:
            scores, labels = self._cpu_search(queries, k, selector, available, mask)
            del bitmap
            return scores, labels
        # GPU indexes take no selector: over-fetch, drop what the mask rejects, redo short rows on the CPU.
        most = CAGRA_MAX_K if isinstance(gpu, CagraIndex) else GPU_MAX_K
        fetch = k if mask is None else max(k, min(most, self.ntotal, k * GPU_OVERFETCH))
        gpu_scores, gpu_labels = gpu.search(queries, min(fetch, most))
        keep = gpu_labels >= 0
        if mask is not None:
            inside = keep & (gpu_labels < len(mask))
            keep = inside & mask[np.where(inside, gpu_labels, 0)]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        for row in range(len(queries)):
            kept = np.flatnonzero(keep[row])[:k]
            scores[row, : len(kept)] = gpu_scores[row, kept]
            labels[row, : len(kept)] = gpu_labels[row, kept]
        short = np.flatnonzero((labels >= 0).sum(axis=1) < min(k, available))
        if len(short):
            scores[short], labels[short] = self._cpu_search(queries[short], k, selector, available, mask)
        del bitmap
        return scores, labels

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ntotal": self.ntotal,
            "nlist": self.nlist,
            "nprobe": self.nprobe if self.kind == "ivf" else None,
            "gpu": self.on_gpu,
            "gpu_index": ("cagra" if self._cagra is not None else "copy") if self.on_gpu else None,
            "cagra": self._cagra.describe() if self._cagra is not None else None,
            "recall_at_10": self.recall_at_10,
            "exact_scan": self._scan.describe() if self._scan is not None else None,
            "batch_scan": self._batch.describe() if self._batch is not None else None,
            "ivf_scan": self._ivf_scan.describe() if self._ivf_scan is not None else None,
        }
