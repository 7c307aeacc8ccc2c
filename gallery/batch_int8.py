"""Exact top-k for batches of queries from int8 codes: ONNX Runtime's integer matrix product, then the
proven float32 re-rank.

Why: the service coalesces concurrent searches into batches (service/search_batching.py). A batch of 16
against 1M x 1280 vectors is 20 G multiply-adds, compute-bound on a small CPU. An integer product on a CPU
with VNNI does 64 multiply-adds per AVX-512 instruction against bf16's 32 and float32's 16. ONNX Runtime's
``MatMulInteger`` (MLAS) packs a constant right-hand side once, when its session is built, so the codes are
that constant: in a one-off probe on the 2-core AMD EPYC, 16 queries against 1M codes in shards of 131,072,
one thread per shard and two shards at a time, took 94-114 ms with each shard's top-k, where torch's bf16
product alone took 150-170 ms (``batch_scan.BatchScan``). The end-to-end figures are in
``benchmarks/search.py``'s table.

The codes, the integer query and the bound are ``int8_codes.Int8Codes``'s, the one-query int8 scan's: the
integer products are exact (int32 accumulation), so a score is ``u.c / a + q.m`` computed in float32, and
differs from the float32 score by at most the codes' bound plus this graph's three float32 roundings. A
query's top ``candidates`` are re-scored from the float32 master; when that cannot prove its top-k
(``exact_scan.rerank_and_prove``), its top ``4 x candidates``, already fetched, are; a query still unproven
goes back to the caller, which answers it with the one-query scan (that widens until proven) or the master.

Layout: sealed shards of up to ``shard_rows`` items, each an ONNX Runtime session whose graph is
``MatMulInteger(u + 128 as uint8 with zero point 128, codes^T int8 constant) -> Cast -> Mul 1/a -> Add q.m
-> Add bias -> TopK`` (``bias``: 0, or -inf for removed and filtered-out rows), and a tail of the newest
vectors (at most ``tail_rows``), kept in float32 and scored with NumPy's float32 product (within float32
rounding of the re-rank's score, which the bound adds, so tail scores join the candidates as they are). A
full tail becomes a new shard, and the last two shards are merged while the older is at most twice the
newer and both fit one shard (their vectors read back from the master), so a growing gallery re-packs
each row a few times, not at every seal. Removes mark rows dead; a shard less than half alive is built
again. Building and merging run under the gallery's write lock: searches wait for them (a full shard:
about 4 s on the 2-core machine).

An exact integer product needs VNNI (or AMX): without it, MLAS's AVX2 kernel adds pairs of 8-bit products
into saturating 16-bit sums. ``integer_product_is_exact`` checks this with saturating inputs, and the scan
refuses to run where it fails (``IndexConfig.batch_scan="auto"``, the default, then turns it off).

Memory: d bytes per item (ONNX Runtime's packed codes; the initializer is released after packing) plus
the tail's 4 d bytes per item, on top of the master and the one-query scan.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .errors import GalleryError
from .exact_scan import DEFAULT_CANDIDATES, flat_storage, rerank_and_prove
from .int8_codes import Int8Codes

logger = logging.getLogger(__name__)

#: Items per sealed shard (one ONNX Runtime session each; 168 MB of codes at 1280-d).
SHARD_ROWS = 131072
#: Newest items kept in float32 and scored exactly before they are sealed into a shard.
TAIL_ROWS = 16384
#: The re-rank's second stage looks at this many times the first stage's candidates.
WIDEN = 4
#: Rows read back from the master at a time when a shard is built again.
_READ_ROWS = 16384


def _product_graph(dim: int, codes_t: np.ndarray) -> bytes:
    """The serialised ONNX model that scores a batch against ``codes_t`` ([dim, n] int8) and keeps a top-k."""
    n = int(codes_t.shape[1])
    inputs = [
        helper.make_tensor_value_info("query", TensorProto.UINT8, ["q", dim]),
        helper.make_tensor_value_info("inv_factor", TensorProto.FLOAT, ["q", 1]),
        helper.make_tensor_value_info("offset", TensorProto.FLOAT, ["q", 1]),
        helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, n]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["q", "k"]),
        helper.make_tensor_value_info("rows", TensorProto.INT64, ["q", "k"]),
    ]
    nodes = [
        helper.make_node("MatMulInteger", ["query", "codes", "zero_point"], ["products"]),
        helper.make_node("Cast", ["products"], ["products_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["products_f", "inv_factor"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["shifted"]),
        helper.make_node("Add", ["shifted", "bias"], ["masked"]),
        helper.make_node("TopK", ["masked", "k"], ["scores", "rows"], axis=1),
    ]
    initializers = [
        helper.make_tensor("zero_point", TensorProto.UINT8, [], [128]),
        numpy_helper.from_array(np.ascontiguousarray(codes_t, dtype=np.int8), "codes"),
    ]
    graph = helper.make_graph(nodes, "int8_batch_scan", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _session(dim: int, codes_t: np.ndarray) -> ort.InferenceSession:
    """A one-thread session (the scan runs shards in parallel itself) over ``codes_t``, packed once.

    The model goes through a temporary file: a session made from bytes keeps a reference to them for its
    lifetime (ONNX Runtime's Python ``InferenceSession``), which would hold a second copy of every code.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory(prefix="clipmc-int8-") as folder:
        path = Path(folder) / "shard.onnx"
        path.write_bytes(_product_graph(dim, codes_t))
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def saturation_probe(dim: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Inputs whose exact products need 32-bit sums: (queries [16, dim] uint8, codes [dim, 64] int8).

    Adjacent products reach 255 x 127 and 255 x -128, so a kernel that adds pairs of 8-bit products into
    saturating 16-bit sums (``vpmaddubsw``, what x86 CPUs without VNNI have) gets every entry wrong (emulated
    in tests/test_gallery_batch_int8.py).
    """
    column = np.where(np.arange(64) % 2 == 0, 127, -128)[None, :]
    row_sign = np.where(np.arange(dim) // 2 % 2 == 0, 1, -1)[:, None]  # pairs of rows alike, signs alternating
    codes = np.clip(column * row_sign, -128, 127).astype(np.int8)
    queries = np.full((16, dim), 255, dtype=np.uint8)
    queries[1::2, ::3] = 1  # u = -127 in some dimensions
    return queries, codes


@functools.cache
def integer_product_is_exact(dim: int = 256) -> bool:
    """Whether ONNX Runtime's integer product is exact on this CPU (``saturation_probe``'s inputs; asked
    once per process: the answer is the hardware's)."""
    queries, codes = saturation_probe(dim)
    session = _session(dim, codes)
    expected = (queries.astype(np.int64) - 128) @ codes.astype(np.int64)
    scores, rows = session.run(
        None,
        {
            "query": queries,
            "inv_factor": np.ones((len(queries), 1), np.float32),
            "offset": np.zeros((len(queries), 1), np.float32),
            "bias": np.zeros((1, codes.shape[1]), np.float32),
            "k": np.array([codes.shape[1]], dtype=np.int64),
        },
    )
    got = np.empty_like(scores)
    np.put_along_axis(got, rows, scores, axis=1)
    return bool(np.array_equal(got.astype(np.int64), expected))


@dataclass
class _Shard:
    """One sealed shard: its session, its items' ids, which rows are alive, and their bias row."""

    session: ort.InferenceSession
    ids: np.ndarray
    alive: np.ndarray
    bias: np.ndarray  # [1, n] float32: 0 alive, -inf removed

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())


class Int8BatchScan:
    """int8 codes of a flat index in ONNX Runtime shards plus a float32 tail, for batched exact search."""

    def __init__(
        self,
        master: faiss.IndexIDMap2,
        candidates: int = DEFAULT_CANDIDATES,
        threads: int = 2,
        shard_rows: int = SHARD_ROWS,
        tail_rows: int = TAIL_ROWS,
    ) -> None:
        """Args:
        master: the flat ``IndexIDMap2(IndexFlatIP)`` this copies (read back when a shard is rebuilt,
            re-ranks every answer).
        candidates: candidates per query re-ranked first (then ``WIDEN`` times as many).
        threads: shards scored at a time (one thread each).
        shard_rows: items per sealed shard.
        tail_rows: items kept in float32 before they are sealed.
        """
        if not integer_product_is_exact():
            raise GalleryError(
                "batch_scan='int8' needs an exact integer product, and ONNX Runtime's saturates on this CPU "
                "(no VNNI): use batch_scan='bf16' or 'off'"
            )
        self.master = master
        self.dim = int(master.d)
        self.candidates = max(1, int(candidates))
        self.shard_rows = max(1, int(shard_rows))
        self.tail_rows = max(1, int(tail_rows))
        self.int8 = Int8Codes(self.dim)
        self.threads = max(1, int(threads))
        self._shards: list[_Shard] = []
        self._tail_ids = np.empty(0, dtype=np.int64)  # a buffer: the first _tail_n rows are the tail
        self._tail = np.empty((0, self.dim), dtype=np.float32)
        self._tail_n = 0
        self._tail_max_norm = 0.0  # the largest norm that entered the tail (its scores' float32 rounding)
        self._pool = ThreadPoolExecutor(self.threads, "clipmc-int8")
        self.fallbacks = 0  # queries handed back unproven (for logs/tests)
        self.widened = 0  # queries the first stage could not prove

    @classmethod
    def from_flat(
        cls, master: faiss.IndexIDMap2, candidates: int = DEFAULT_CANDIDATES, threads: int = 2, **sizes: int
    ) -> Int8BatchScan:
        """The int8 copy of a flat ``IndexIDMap2(IndexFlatIP)``, ranges trained on a sample of it."""
        scan = cls(master, candidates, threads, **sizes)
        ids, vectors = flat_storage(master)
        scan._train(vectors)
        per = min(scan.shard_rows, -(-len(ids) // scan.threads))  # a small gallery still uses every thread
        for start in range(0, len(ids), max(1, per)):
            stop = start + max(1, per)
            scan._shards.append(scan._build(ids[start:stop], vectors[start:stop]))
        return scan

    # -- building ---------------------------------------------------------------------------------

    def _train(self, vectors: np.ndarray) -> None:
        self.int8 = Int8Codes(self.dim, Int8Codes.training_sample(vectors))

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> _Shard:
        codes = self.int8.encode(vectors)
        ids = np.array(ids, dtype=np.int64)
        return _Shard(
            session=_session(self.dim, codes.T),
            ids=ids,
            alive=np.ones(len(ids), dtype=bool),
            bias=np.zeros((1, len(ids)), dtype=np.float32),
        )

    def _read_master(self, ids: np.ndarray) -> np.ndarray:
        """The float32 vectors of ``ids`` from the master, read in blocks."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(ids), _READ_ROWS):
            out[start : start + _READ_ROWS] = self.master.reconstruct_batch(ids[start : start + _READ_ROWS])
        return out

    def _rebuild(self, shard: _Shard) -> _Shard:
        """``shard`` without its removed rows (their vectors read back from the master)."""
        ids = shard.ids[shard.alive]
        return self._build(ids, self._read_master(ids))

    def _seal(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Move ``ids`` (the tail and what came with it) into new shards, then merge the last two while the
        older holds at most twice the newer's rows and both fit one shard: as a gallery grows, a row is
        encoded and packed again about log2(shard_rows / tail_rows) times, not at every seal."""
        for begin in range(0, len(ids), self.shard_rows):
            stop = begin + self.shard_rows
            self._shards.append(self._build(ids[begin:stop], vectors[begin:stop]))
        while len(self._shards) >= 2:
            older, newer = self._shards[-2], self._shards[-1]
            if older.n_alive > 2 * newer.n_alive or older.n_alive + newer.n_alive > self.shard_rows:
                break
            merged = np.concatenate([older.ids[older.alive], newer.ids[newer.alive]])
            self._shards[-2:] = [self._build(merged, self._read_master(merged))]
        self._tail_n = 0

    @property
    def ntotal(self) -> int:
        return sum(s.n_alive for s in self._shards) + self._tail_n

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append to the tail; a tail that would pass ``tail_rows`` is sealed into shards with the new rows."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not len(ids):
            return
        self._tail_max_norm = max(self._tail_max_norm, float(np.linalg.norm(vectors.astype(np.float64), axis=1).max()))
        n = self._tail_n
        if n + len(ids) >= self.tail_rows:
            self._seal(np.concatenate([self._tail_ids[:n], ids]), np.concatenate([self._tail[:n], vectors]))
            return
        if n + len(ids) > len(self._tail_ids):  # grow by doubling: a stream of small adds stays linear
            size = min(self.tail_rows, max(n + len(ids), 2 * len(self._tail_ids)))
            grown_ids, grown = np.empty(size, dtype=np.int64), np.empty((size, self.dim), dtype=np.float32)
            grown_ids[:n], grown[:n] = self._tail_ids[:n], self._tail[:n]
            self._tail_ids, self._tail = grown_ids, grown
        self._tail_ids[n : n + len(ids)] = ids
        self._tail[n : n + len(ids)] = vectors
        self._tail_n = n + len(ids)

    def remove(self, ids: np.ndarray) -> None:
        """Mark the rows of ``ids`` dead (dropping tail rows); rebuild shards left less than half alive."""
        ids = np.asarray(ids, dtype=np.int64)
        n = self._tail_n
        keep = ~np.isin(self._tail_ids[:n], ids)
        kept = int(keep.sum())
        self._tail_ids[:kept], self._tail[:kept] = self._tail_ids[:n][keep], self._tail[:n][keep]
        self._tail_n = kept
        for i, shard in enumerate(self._shards):
            dead = np.isin(shard.ids, ids) & shard.alive
            if not dead.any():
                continue
            shard.alive[dead] = False
            shard.bias[0, dead] = -np.inf
            if shard.n_alive > 0 and shard.n_alive * 2 < len(shard.ids):
                self._shards[i] = self._rebuild(shard)
        self._shards = [s for s in self._shards if s.n_alive]

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def retrain_due(self, n: int) -> bool:
        """Whether the copy should be built again with ranges trained on its ``n`` vectors."""
        return self.int8.retrain_due(n)

    def rebuilt(self, master: faiss.IndexIDMap2) -> Int8BatchScan:
        """The same copy built again from ``master`` (ranges trained on it); this one is closed after."""
        new = Int8BatchScan.from_flat(
            master, self.candidates, self.threads, shard_rows=self.shard_rows, tail_rows=self.tail_rows
        )
        self.close()
        return new

    # -- search -----------------------------------------------------------------------------------

    def _candidates(
        self, queries: np.ndarray, fetch: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query's top ``fetch`` (int8 or tail float32 scores, ids), best first, and the float32 rounding
        bound of both (on top of the codes' bound)."""
        u, factor, _ = self.int8.query_codes(queries)
        offsets = self.int8.offsets(queries)
        feeds = {
            "query": (u.astype(np.int16) + 128).astype(np.uint8),
            "inv_factor": (1.0 / factor)[:, None].astype(np.float32),
            "offset": offsets[:, None].astype(np.float32),
        }

        def passes(ids: np.ndarray) -> np.ndarray:
            inside = ids < len(mask)
            out = np.zeros(len(ids), dtype=bool)
            out[inside] = mask[ids[inside]]
            return out

        def shard_top(shard: _Shard) -> tuple[np.ndarray, np.ndarray]:
            bias = shard.bias if mask is None else np.where(passes(shard.ids)[None, :], shard.bias, np.float32(-np.inf))
            take = min(fetch, len(shard.ids))
            scores, rows = shard.session.run(None, {**feeds, "bias": bias, "k": np.array([take], dtype=np.int64)})
            return scores, shard.ids[rows]

        def tail_top() -> tuple[np.ndarray, np.ndarray]:
            tail_ids = self._tail_ids[: self._tail_n]
            scores = queries @ self._tail[: self._tail_n].T
            if mask is not None:
                scores[:, ~passes(tail_ids)] = -np.inf
            take = min(fetch, len(tail_ids))
            rows = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            return np.take_along_axis(scores, rows, axis=1), tail_ids[rows]

        futures = [self._pool.submit(shard_top, s) for s in self._shards]
        parts = [tail_top()] if self._tail_n else []
        parts += [f.result() for f in futures]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch] if scores.shape[1] > fetch else None
        if top is not None:
            scores, ids = np.take_along_axis(scores, top, axis=1), np.take_along_axis(ids, top, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        ids[~np.isfinite(scores)] = -1
        # The graph rounds to float32 three times (cast, scale, shift) and the shift itself once; a tail
        # score is a float32 product, which may differ from the re-rank's by 2 d 2**-24 |q| |x| (4 d here).
        q_norms = np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1)
        magnitude = np.linalg.norm(u.astype(np.float64), axis=1) / factor * self.int8.max_code_norm
        rounding = 4.0 * 2.0**-24 * (magnitude + q_norms * self.int8.centre_norm)
        rounding += 4.0 * self.dim * 2.0**-24 * q_norms * self._tail_max_norm
        return scores, ids, rounding

    def search(
        self, master: faiss.IndexIDMap2, queries: np.ndarray, k: int, mask: np.ndarray | None, available: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact top-``k`` (scores, ids) of every query it can prove, and the rows it could not.

        Args:
            master: the float32 index the candidates are re-scored from (the one this copies).
            queries: [nq, d] float32.
            k: results wanted.
            mask: ids that may be returned (None: all).
            available: how many items pass ``mask``.

        Returns:
            (scores, ids, unproven): ``unproven`` are the query rows the caller must answer another way
            (their scores/ids rows are left empty).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nq = len(queries)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        n = self.ntotal
        first = min(max(k, self.candidates), available, n)
        fetch = min(max(k, WIDEN * self.candidates), available, n)
        if first == 0:
            return scores, labels, np.arange(nq)
        approx, found, rounding = self._candidates(queries, fetch, mask)
        bound = self.int8.error_bound(queries) + rounding
        rows = np.arange(nq)
        for width in (first, fetch) if fetch > first else (first,):
            complete = width >= min(available, n)  # every matching item was a candidate
            top_scores, top_labels, proven = rerank_and_prove(
                master, queries[rows], found[rows, :width], approx[rows, width - 1], k, complete, bound[rows]
            )
            done = rows[proven]
            scores[done, : top_scores.shape[1]] = top_scores[proven]
            labels[done, : top_scores.shape[1]] = top_labels[proven]
            if width == first:
                self.widened += int((~proven).sum())
            rows = rows[~proven]
            if not len(rows):
                break
        self.fallbacks += len(rows)
        return scores, labels, rows

    def describe(self) -> dict[str, object]:
        return {
            "codes": "int8",
            "candidates": self.candidates,
            "shards": len(self._shards),
            "tail": self._tail_n,
            "ntotal": self.ntotal,
            "max_error": round(self.int8.max_error, 6),
            "trained_on": self.int8.trained_on,
            "widened": self.widened,
            "fallbacks": self.fallbacks,
        }
