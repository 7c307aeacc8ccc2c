"""The default back-end: SQLite as the source of truth, FAISS as a rebuildable search cache.

Directory layout (``path/``):

- ``gallery.sqlite3`` (+ ``-wal``, ``-shm``): items, vectors, meta (dim, embedding_version) and the
  change sequence. A batch is durable when ``add`` returns.
- ``index.faiss`` + ``index.meta.json``: the last index snapshot and the change sequence it covers.
  On open the snapshot is loaded and the changes after it are replayed; a missing, unreadable or
  inconsistent snapshot is rebuilt from the database. Losing them loses nothing.
- ``gallery.lock``: held (``flock``) by the one process that may write.

Concurrency: writers are serialised by a mutex and commit to SQLite without blocking searches; the
in-memory index and filter columns change under the exclusive side of a readers-writer lock, so a
search sees a batch entirely or not at all. Removals and label updates also hold the exclusive side
across their commit, so a search never returns an item that is no longer stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipmc.contract import atomic_write, fsync_dir
from clipmc.gallery.base import DEFAULT_NORM_TOLERANCE, BaseGallery, check_new_gallery, check_stored_matches
from clipmc.gallery.cagra import cagra_available
from clipmc.gallery.errors import GalleryError, GalleryStateError, ItemNotFoundError
from clipmc.gallery.index import MIN_IVF_ITEMS, IndexConfig, IndexKind, VectorIndex, gpu_available
from clipmc.gallery.items import AddResult, EraseFilter, Filters, Item, SearchHit, normalize_update
from clipmc.gallery.rwlock import RWLock
from clipmc.gallery.store import SCHEMA_VERSION, Columns, SQLiteStore

logger = logging.getLogger(__name__)

DATABASE_NAME = "gallery.sqlite3"
INDEX_NAME = "index.faiss"
INDEX_META_NAME = "index.meta.json"
LOCK_NAME = "gallery.lock"
SNAPSHOT_FORMAT = 1


def _lock_directory(path: Path) -> int | None:
    """Take the gallery's writer lock, or fail clearly if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no inter-process guard
        logger.warning("no fcntl on this platform: nothing stops two processes writing %s", path)
        return None
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GalleryStateError(
            f"the gallery at {path} is open for writing in another process; close it there first "
            "(or open this one with read_only=True)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


#: The largest id a FAISS gallery keeps on import (see FaissGallery.max_kept_id).
MAX_KEPT_ID = 2**26


class _FilterColumns:
    """The filterable fields of the indexed items as arrays indexed by item id.

    A filter becomes a boolean mask over ids in a few vectorised NumPy operations, which FAISS then
    reads as an ``IDSelectorBitmap``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.alive = np.zeros(0, dtype=bool)
        self.modality = np.zeros(0, dtype=np.int8)
        self.camera = np.zeros(0, dtype=np.int32)
        self.timestamp = np.zeros(0, dtype=np.float64)
        self.has_identity = np.zeros(0, dtype=bool)
        self.codes: dict[str, int] = {}
        self.count = 0

    def _ensure(self, max_id: int) -> None:
        if max_id < len(self.alive):
            return
        size = max(max_id + 1, len(self.alive) * 3 // 2 + 1024)
        grow = size - len(self.alive)
        self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
        self.modality = np.concatenate([self.modality, np.zeros(grow, dtype=np.int8)])
        self.camera = np.concatenate([self.camera, np.full(grow, -1, dtype=np.int32)])
        self.timestamp = np.concatenate([self.timestamp, np.full(grow, np.nan)])
        self.has_identity = np.concatenate([self.has_identity, np.zeros(grow, dtype=bool)])

    def _code(self, camera: str | None) -> int:
        return -1 if camera is None else self.codes.setdefault(camera, len(self.codes))

    def put(
        self,
        ids: np.ndarray,
        modality: np.ndarray,
        cameras: Sequence[str | None],
        timestamps: np.ndarray,
        has_identity: np.ndarray,
    ) -> None:
        if not len(ids):
            return
        self._ensure(int(ids.max()))
        self.count += int((~self.alive[ids]).sum())
        self.alive[ids] = True
        self.modality[ids] = modality
        self.camera[ids] = np.fromiter((self._code(c) for c in cameras), dtype=np.int32, count=len(ids))
        self.timestamp[ids] = timestamps
        self.has_identity[ids] = has_identity

    def put_items(self, ids: np.ndarray, items: Sequence[Item]) -> None:
        self.put(
            ids,
            np.fromiter((int(item.modality) for item in items), dtype=np.int8, count=len(items)),
            [item.camera for item in items],  # type: ignore[misc]
            np.fromiter(
                (np.nan if item.timestamp is None else item.timestamp for item in items),
                dtype=np.float64,
                count=len(items),
            ),
            np.fromiter((item.identity is not None for item in items), dtype=bool, count=len(items)),
        )

    def load(self, columns: Columns) -> None:
        self.reset()
        self.put(columns.ids, columns.modality, columns.camera, columns.timestamp, columns.has_identity)

    def kill(self, ids: Sequence[int]) -> None:
        ids_array = np.asarray(ids, dtype=np.int64)
        ids_array = ids_array[ids_array < len(self.alive)]
        self.count -= int(self.alive[ids_array].sum())
        self.alive[ids_array] = False

    def update(self, item_id: int, fields: dict[str, Any]) -> None:
        if item_id >= len(self.alive) or not self.alive[item_id]:
            return
        if "camera" in fields:
            self.camera[item_id] = self._code(fields["camera"])
        if "timestamp" in fields:
            self.timestamp[item_id] = np.nan if fields["timestamp"] is None else fields["timestamp"]
        if "identity" in fields:
            self.has_identity[item_id] = fields["identity"] is not None

    def mask(self, filters: Filters) -> tuple[np.ndarray | None, int]:
        """(mask over ids or None for "everything", how many items pass)."""
        if filters.is_empty():
            return None, self.count
        mask = self.alive.copy()
        if filters.modality is not None:
            mask &= self.modality == filters.modality
        if filters.cameras is not None:
            codes = [self.codes[c] for c in filters.cameras if c in self.codes]
            mask &= np.isin(self.camera, codes)
        if filters.exclude_cameras is not None:
            codes = [self.codes[c] for c in filters.exclude_cameras if c in self.codes]
            mask &= ~np.isin(self.camera, codes)
        with np.errstate(invalid="ignore"):  # NaN (no timestamp) never passes a time bound
            if filters.since is not None:
                mask &= self.timestamp >= filters.since
            if filters.until is not None:
                mask &= self.timestamp <= filters.until
        if filters.has_identity is not None:
            mask &= self.has_identity == bool(filters.has_identity)
        return mask, int(mask.sum())

    def summary(self) -> dict[str, Any]:
        alive = self.alive
        cameras = np.unique(self.camera[alive])
        return {
            "by_modality": {
                "visible": int((alive & (self.modality == 0)).sum()),
                "infrared": int((alive & (self.modality == 1)).sum()),
            },
            "cameras": int((cameras >= 0).sum()),
            "with_identity": int((alive & self.has_identity).sum()),
            "with_timestamp": int((alive & ~np.isnan(self.timestamp)).sum()),
        }


class FaissGallery(BaseGallery):
    """A gallery in a directory: SQLite for durability, FAISS (CPU, GPU when available) for search.

    ``dim`` and ``embedding_version`` are required to create a gallery; when opening an existing one
    they may be None (take what is stored) or must match it (:class:`DimensionMismatchError`,
    :class:`VersionMismatchError`). ``index`` configures the FAISS index (:class:`IndexConfig` or a
    dict of its fields). ``snapshot_every`` writes an index snapshot after that many added or removed
    items (0: only on ``snapshot()``, ``rebuild()`` and ``close()``). ``read_only`` opens without the
    writer lock (for inspecting a gallery a service is using); its index is built on first search.
    """

    backend = "faiss"

    def __init__(
        self,
        path: str | os.PathLike[str],
        dim: int | None = None,
        embedding_version: str | None = None,
        *,
        index: IndexConfig | dict[str, Any] | None = None,
        read_only: bool = False,
        snapshot_every: int = 50_000,
        snapshot_on_close: bool = True,
        norm_tolerance: float | None = DEFAULT_NORM_TOLERANCE,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.config = index if isinstance(index, IndexConfig) else IndexConfig(**(index or {}))
        self.snapshot_every = int(snapshot_every)
        self.snapshot_on_close = snapshot_on_close
        self.norm_tolerance = norm_tolerance
        self._lock_fd: int | None = None
        self._closed = False
        self._write_lock = threading.RLock()
        self._rw = RWLock()
        self._columns = _FilterColumns()
        self._index: VectorIndex | None = None
        self._applied_seq = 0
        self._snapshot_seq = 0
        self._changes_since_snapshot = 0
        self._removed_since_compaction = 0
        self._snapshot_error: str | None = None

        if read_only:
            if not (self.path / DATABASE_NAME).is_file():
                raise GalleryError(f"no gallery at {self.path} (no {DATABASE_NAME})")
        else:
            if self.path.exists() and not self.path.is_dir():
                raise GalleryError(f"{self.path} exists and is not a directory")
            if not (self.path / DATABASE_NAME).exists():  # refuse before creating anything
                check_new_gallery(self.path, dim, embedding_version)
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_directory(self.path)
        wal = self.path / f"{DATABASE_NAME}-wal"  # non-empty before we open it: a crash left it un-checkpointed
        leftover_wal = int(not read_only and wal.is_file() and wal.stat().st_size > 0)
        try:
            self._store = SQLiteStore(self.path / DATABASE_NAME, read_only=read_only)
            self._open_meta(dim, embedding_version)
            with self._write_lock, self._store.read_transaction():
                self._columns.load(self._store.columns())
                self._applied_seq = self._store.max_seq()
                if not read_only:
                    # Removals of an earlier run that a crash kept from being compacted (their tombstones,
                    # or a WAL that SQLite did not get to checkpoint) are compacted at the next chance.
                    self._removed_since_compaction = max(leftover_wal, len(self._store.tombstones_after(0)))
                    self._open_index()
        except BaseException:
            self._release()
            raise

    # -- opening ----------------------------------------------------------------------------------

    def _open_meta(self, dim: int | None, embedding_version: str | None) -> None:
        meta = self._store.meta()
        if not meta:
            if self.read_only:
                raise GalleryError(f"{self.path} is not an initialised gallery")
            check_new_gallery(self.path, dim, embedding_version)
            assert dim is not None and embedding_version is not None
            self._store.init_meta(int(dim), embedding_version)
            fsync_dir(self.path)
            logger.info("created gallery %s (dim %d, embedding_version %s)", self.path, dim, embedding_version)
            meta = self._store.meta()
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise GalleryStateError(
                f"{self.path} has gallery schema {meta.get('schema_version')!r}, this code reads {SCHEMA_VERSION}"
            )
        self.dim = int(meta["dim"])
        self.embedding_version = meta["embedding_version"]
        check_stored_matches(self.path, dim, embedding_version, self.dim, self.embedding_version)

    def _wanted_kind(self, count: int, current: IndexKind | None) -> IndexKind:
        # In auto mode an IVF index stays IVF (built on purpose, or the gallery was once big enough):
        # a gallery hovering around the threshold is not rebuilt back and forth. ``rebuild("flat")``
        # goes back.
        if self.config.kind == "auto" and current == "ivf":
            return "ivf"
        return self.config.kind_for(count)

    def _open_index(self) -> None:
        """Load the snapshot and replay what came after it, or rebuild (caller holds the write lock)."""
        if not self.read_only:  # a writer killed mid-snapshot leaves these (read-only: not ours to touch)
            for name in (INDEX_NAME, INDEX_META_NAME):
                for leftover in [self.path / f"{name}.tmp", *self.path.glob(f".{name}.*.tmp")]:
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        started = time.perf_counter()
        index, reason = self._load_snapshot()
        rebuilt = index is None
        if index is None:
            logger.info("building the gallery index from the database (%s)", reason)
            index = self._build_index(self._wanted_kind(self._columns.count, None), in_transaction=True)
        self._install(index)
        self._index = index
        logger.info(
            "gallery %s: %d items, %s index ready in %.2fs",
            self.path,
            index.ntotal,
            index.kind,
            time.perf_counter() - started,
        )
        if rebuilt and not self.read_only:
            self._try_snapshot()

    def _load_snapshot(self) -> tuple[VectorIndex | None, str]:
        """The snapshot brought up to date by replay, or (None, why not)."""
        meta_path, index_path = self.path / INDEX_META_NAME, self.path / INDEX_NAME
        if not meta_path.is_file() or not index_path.is_file():
            return None, "no index snapshot"
        try:
            meta = json.loads(meta_path.read_text())
            seq = int(meta["seq"])
            checks = {
                "format": meta["format"] == SNAPSHOT_FORMAT,
                "dim": meta["dim"] == self.dim,
                "embedding_version": meta["embedding_version"] == self.embedding_version,
                "size": meta["index_bytes"] == index_path.stat().st_size,
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable snapshot metadata: {exc}"
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            return None, f"snapshot does not match ({', '.join(failed)})"
        wanted = self._wanted_kind(self._columns.count, meta.get("kind"))
        if meta.get("kind") != wanted:  # decided before reading a possibly large file for nothing
            return None, f"the gallery now wants a {wanted} index, the snapshot is {meta.get('kind')}"
        if seq > self._applied_seq:
            return None, f"snapshot covers change {seq} but the database ends at {self._applied_seq}"
        try:
            index = VectorIndex.load(index_path, nprobe=self.config.nprobe)
        except (RuntimeError, GalleryError) as exc:
            return None, f"unreadable snapshot: {exc}"
        if index.dim != self.dim:
            return None, "snapshot has another dimension"
        if meta.get("nprobe") in (None, index.nprobe):  # recall was measured at the snapshot's nprobe
            index.recall_at_10 = meta.get("recall_at_10")
        # Replay. Removing every touched id before re-adding the live ones makes this idempotent, so it
        # is also right when the snapshot already holds some of these changes.
        removed = self._store.tombstones_after(seq)
        added = self._store.ids_added_after(seq)
        index.remove(sorted(set(removed) | set(added)))
        ids, vectors = self._store.vectors_by_id(added, self.dim)
        index.add(ids, vectors)
        if not np.array_equal(index.ids(), self._columns_ids()):
            return None, "snapshot disagrees with the database after replay"
        self._snapshot_seq = seq
        self._changes_since_snapshot = len(removed) + len(added)
        logger.info(
            "loaded index snapshot at change %d, replayed %d adds and %d removals", seq, len(added), len(removed)
        )
        return index, ""

    def _columns_ids(self) -> np.ndarray:
        return np.flatnonzero(self._columns.alive).astype(np.int64)

    def _build_index(self, kind: IndexKind, *, in_transaction: bool = False) -> VectorIndex:
        """A new index of ``kind`` over every stored vector."""
        count = self._columns.count
        started = time.perf_counter()
        if kind == "flat":
            index = VectorIndex.flat(self.dim)
        else:
            if count < MIN_IVF_ITEMS:
                raise GalleryError(f"an IVF index needs at least {MIN_IVF_ITEMS} items, the gallery has {count}")
            nlist = self.config.nlist_for(count)
            train_size = min(count, self.config.train_size or 40 * nlist)
            rng = np.random.default_rng(self.config.seed)
            sample_ids = rng.choice(self._columns_ids(), size=train_size, replace=False)
            _, training = self._store.vectors_by_id(sample_ids.tolist(), self.dim)
            logger.info("training IVF (%d lists) on %d vectors", nlist, len(training))
            index = VectorIndex.ivf(
                self.dim,
                training,
                nlist,
                nprobe=self.config.nprobe,
                iterations=self.config.kmeans_iterations,
                seed=self.config.seed,
            )
        with tqdm(total=count, desc=f"gallery {kind} index", unit="vec", disable=None, leave=False) as bar:
            for ids, vectors in self._store.iter_vectors(self.dim, in_transaction=in_transaction):
                index.add(ids, vectors)
                bar.update(len(ids))
        if kind == "ivf":
            self._install_ivf_scan(index)  # recall is measured on the path that will serve the searches
            index.recall_at_10 = self._measure_recall(index)
        logger.info("built %s index of %d vectors in %.1fs", kind, index.ntotal, time.perf_counter() - started)
        return index

    def _measure_recall(self, index: VectorIndex) -> float | None:
        """Recall@10 of the IVF index's searches at its nprobe against exhaustive search (every float32 list).

        Queries are stored vectors; each query's own item is left out of both lists.
        """
        ids = self._columns_ids()
        n = min(self.config.recall_queries, len(ids))
        if n == 0 or len(ids) < 12:
            return None
        rng = np.random.default_rng(self.config.seed + 1)
        query_ids, queries = self._store.vectors_by_id(rng.choice(ids, size=n, replace=False).tolist(), self.dim)
        import faiss

        exact = index.cpu.search(queries, 11, params=faiss.SearchParametersIVF(nprobe=index.cpu.nlist))[1]
        approx = index.search(queries, 11, None, index.ntotal)[1]  # the serving path (8-bit lists if attached)
        hits = 0
        for own, truth, found in zip(query_ids, exact, approx, strict=True):
            truth_set = set(truth[truth != own][:10].tolist())
            hits += len(truth_set & set(found[found != own][:10].tolist()))
        recall = hits / (10 * n)
        logger.info("IVF recall@10 at nprobe=%d: %.3f (%d queries)", index.nprobe, recall, n)
        return recall

    def _install(self, index: VectorIndex) -> None:
        """Put a GPU copy in front of the index when asked for and possible; else the CPU copies its searches
        read: for a flat index the exact scan and the batch scan, for IVF the 8-bit lists
        (IndexConfig.exact_scan, batch_scan, ivf_scan)."""
        if self._install_gpu(index):
            return
        if index.kind == "flat" and self.config.exact_scan != "float32":
            index.attach_scan(self.config.shards(), self.config.scan_candidates, self.config.exact_scan)
        if index.kind == "ivf":
            self._install_ivf_scan(index)
        batch = self.config.batch_scan
        if index.kind == "flat" and batch == "auto":
            batch = "int8" if self._integer_product_is_exact() else "off"
        if index.kind == "flat" and batch != "off":
            index.attach_batch_scan(self.config.scan_candidates, batch, self.config.shards())

    def _install_gpu(self, index: VectorIndex) -> bool:
        """A GPU copy (or CAGRA graph) of the index when asked for and possible; whether one was made."""
        wanted = self.config.use_gpu
        if wanted is not False and self.config.gpu_index == "cagra" and cagra_available():
            index.to_gpu_cagra(
                self.config.gpu_device,
                graph_degree=self.config.cagra_graph_degree,
                recall_queries=self.config.recall_queries,
                seed=self.config.seed + 2,
            )
            return True
        if wanted is not False and self.config.gpu_index == "copy" and gpu_available():
            index.to_gpu(self.config.gpu_device)
            return True
        if wanted:
            logger.warning(
                "use_gpu=True but this FAISS build has no GPU%s or sees no GPU: searching on the CPU",
                " with cuVS (CAGRA: pip install faiss-gpu-cuvs)" if self.config.gpu_index == "cagra" else "",
            )
        return False

    def _install_ivf_scan(self, index: VectorIndex) -> None:
        """The 8-bit copy of an IVF index's lists (kept if already built), or none (and no direct map)."""
        if self.config.ivf_scan == "8bit":
            if not index.has_ivf_scan:
                index.attach_ivf_scan(self.config.ivf_candidates, self.config.seed)
        else:
            index.detach_ivf_scan()

    @staticmethod
    def _integer_product_is_exact() -> bool:
        """batch_scan="auto": whether the int8 batch scan can run here; a failed check means it does not."""
        from clipmc.gallery.batch_int8 import integer_product_is_exact

        try:
            return integer_product_is_exact()
        except Exception:
            logger.warning("checking ONNX Runtime's integer product failed: batch_scan 'auto' is off", exc_info=True)
            return False

    def _ensure_index(self) -> VectorIndex:
        if self._index is None:  # read-only galleries build theirs on first use
            with self._write_lock:
                if self._index is None:
                    with self._store.read_transaction():
                        self._columns.load(self._store.columns())
                        self._applied_seq = self._store.max_seq()
                        self._open_index()
        assert self._index is not None
        return self._index

    # -- writes -----------------------------------------------------------------------------------

    def max_kept_id(self) -> int:
        """Kept ids stay below 2**26: the filter columns are dense arrays indexed by id (15 bytes per id, so
        at most about 1 GB), and an export with sparse 53-bit ids (Milvus) would otherwise allocate petabytes."""
        return MAX_KEPT_ID

    def add(self, items: Iterable[Item], *, embedding_version: str | None = None, keep_ids: bool = False) -> AddResult:
        """Store a batch in one transaction; durable when this returns. Idempotent on ``external_id``.

        An item whose ``external_id`` is already stored (or appeared earlier in the batch) is not
        stored again; its existing id is returned and it counts as ``existing`` (its contents are not
        compared). ``keep_ids=True`` (imports) stores each item under its own ``id``.
        """
        self._check_writable()
        self._check_version(embedding_version)
        batch = list(items)
        if not batch:
            return AddResult(ids=[], created=0, existing=0)
        vectors = self._item_vectors(batch, keep_ids=keep_ids)
        with self._write_lock:
            self._check_writable()
            ids, created, seq = self._store.insert_batch(batch, vectors, keep_ids=keep_ids)
            n_created = int(created.sum())
            if seq is not None:
                new_ids = np.asarray(ids, dtype=np.int64)[created]
                try:
                    with self._rw.write():
                        assert self._index is not None
                        self._index.add(new_ids, vectors[created])
                        self._columns.put_items(new_ids, [batch[i] for i in np.flatnonzero(created)])
                        self._applied_seq = seq
                except Exception:
                    # The batch is committed; only the cache is off. Rebuild it from the database.
                    logger.exception("updating the index after a committed add failed; rebuilding it")
                    self._reload_from_store()
                self._changes_since_snapshot += n_created
                self._after_write()
        return AddResult(ids=ids, created=n_created, existing=len(ids) - n_created)

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id (unknown ids are ignored); returns how many were removed."""
        self._check_writable()
        wanted = self._check_ids(ids)
        if not wanted:
            return 0
        with self._write_lock:
            self._check_writable()
            with self._rw.write():
                removed, seq = self._store.delete(wanted)
                if seq is None:
                    return 0
                try:
                    assert self._index is not None
                    self._index.remove(removed)
                    self._columns.kill(removed)
                    self._applied_seq = seq
                except Exception:
                    logger.exception("updating the index after a committed removal failed; rebuilding it")
                    self._reload_from_store(holding_rw=True)
            self._changes_since_snapshot += len(removed)
            self._removed_since_compaction += len(removed)
            self._after_write()
        return len(removed)

    def update(self, item_id: int, **fields: Any) -> Item:
        """Change an item's camera, timestamp, track_id, identity or metadata (not its vector)."""
        self._check_writable()
        (item_id,) = self._check_ids([item_id])
        values = normalize_update(fields)
        with self._write_lock:
            self._check_writable()
            with self._rw.write():
                seq = self._store.update(item_id, values)
                self._columns.update(item_id, values)
                self._applied_seq = seq
        item = self.get(item_id)
        if item is None:  # removed by nobody: we hold the write lock above, so this is a bug
            raise ItemNotFoundError(f"no item with id {item_id}")
        return item

    def _after_write(self) -> None:
        """Switch index kind when the size calls for it; rebuild a CAGRA graph a write dropped; snapshot when
        enough has changed."""
        assert self._index is not None
        if self._index.gpu_stale:
            self._install_gpu(self._index)  # a new graph over the CPU master (searches use the CPU meanwhile)
        wanted = self._wanted_kind(self._columns.count, self._index.kind)
        if wanted != self._index.kind:
            logger.info("gallery reached %d items: switching to a %s index", self._columns.count, wanted)
            self._rebuild_locked(wanted)
        elif self.snapshot_every and self._changes_since_snapshot >= self.snapshot_every:
            self._try_snapshot()

    def _try_snapshot(self) -> bool:
        """Write the snapshot; a failure (disk full, I/O error) is logged and retried at the next write,
        ``snapshot()`` or ``compact()``: the write that triggered it is committed, so it must not fail."""
        try:
            self._write_snapshot()
        except Exception as exc:
            self._snapshot_error = f"{type(exc).__name__}: {exc}"
            logger.exception("writing the index snapshot failed (the data is safe in SQLite); retried later")
            return False
        return True

    def _reload_from_store(self, *, holding_rw: bool = False) -> None:
        """Rebuild columns and index from the database (after an in-memory update failed)."""
        with self._store.read_transaction():
            columns = self._store.columns()
            applied = self._store.max_seq()
        lock = contextlib.nullcontext() if holding_rw else self._rw.write()
        with lock:
            self._columns.load(columns)
            self._applied_seq = applied
            kind = self._index.kind if self._index is not None else self._wanted_kind(self._columns.count, None)
            index = self._build_index(kind)
            self._install(index)
            old, self._index = self._index, index
            if old is not None:
                old.release()

    def _rebuild_locked(self, kind: IndexKind) -> VectorIndex:
        """Build a new index while searches go on against the old one, then swap (holds the write lock)."""
        new = self._build_index(kind)
        self._install(new)
        with self._rw.write():
            old, self._index = self._index, new
        if old is not None:
            old.release()
        if not self.read_only:
            self._try_snapshot()
        return new

    def rebuild(self, kind: str | None = None) -> dict[str, Any]:
        """Rebuild the index from the database (``flat``, ``ivf``, or None for what the config says)."""
        self._check_open()
        if kind is not None and kind not in ("flat", "ivf"):
            raise GalleryError(f"index kind must be 'flat' or 'ivf', got {kind!r}")
        with self._write_lock:
            self._ensure_index()
            target: IndexKind = kind or self._wanted_kind(self._columns.count, None)  # type: ignore[assignment]
            return self._rebuild_locked(target).describe()

    # -- snapshots --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Write the index snapshot now; returns what it covers."""
        self._check_writable()
        with self._write_lock:
            self._ensure_index()
            return self._write_snapshot()

    def _write_snapshot(self) -> dict[str, Any]:
        """Index first, then its metadata, each written to a temporary file, fsync'd and renamed.

        A crash between the two renames leaves a newer index with older metadata: the size check or
        the idempotent replay on the next open copes with that. Tombstones the snapshot covers are
        pruned only after both renames.
        """
        assert self._index is not None
        index, seq = self._index, self._applied_seq
        started = time.perf_counter()
        index_path, meta_path = self.path / INDEX_NAME, self.path / INDEX_META_NAME
        atomic_write(index_path, index.save)
        meta = {
            "format": SNAPSHOT_FORMAT,
            "seq": seq,
            "dim": self.dim,
            "embedding_version": self.embedding_version,
            "kind": index.kind,
            "ntotal": index.ntotal,
            "nlist": index.nlist,
            "nprobe": index.nprobe if index.kind == "ivf" else None,
            "recall_at_10": index.recall_at_10,
            "index_bytes": index_path.stat().st_size,
            "written_at": time.time(),
        }
        atomic_write(meta_path, json.dumps(meta, indent=2))
        self._store.prune_tombstones(seq)
        self._snapshot_seq = seq
        self._changes_since_snapshot = 0
        self._snapshot_error = None
        logger.info(
            "wrote index snapshot at change %d (%d vectors) in %.2fs", seq, index.ntotal, time.perf_counter() - started
        )
        return {"seq": seq, "ntotal": index.ntotal, "kind": index.kind, "path": str(index_path)}

    def compact(self, *, vacuum: bool = False) -> dict[str, Any]:
        """Take removed items off the disk now: rewrite the index snapshot (which holds every indexed
        vector) without them and truncate the SQLite WAL (which holds the rows as they were written).
        ``vacuum`` also rewrites the database file (``VACUUM``), for pages freed before
        ``secure_delete`` was on (galleries written by older versions); it takes as long as a copy.

        SQLite itself runs with ``secure_delete``, so a removed row is overwritten with zeros in the
        database file. After this returns with ``complete`` true, no file under the gallery directory
        holds a removed item's vector or labels. ``complete`` is false when a reader kept the WAL
        checkpoint from finishing; call again.
        """
        self._check_writable()
        with self._write_lock:
            self._check_writable()
            self._ensure_index()
            removed = self._removed_since_compaction
            snapshot = self._write_snapshot()
            if vacuum:
                self._store.vacuum()
            complete = self._store.checkpoint()
            if complete:
                self._removed_since_compaction = 0
        logger.info("compacted %s: %d removed item(s) off the disk, complete=%s", self.path, removed, complete)
        return {"removed": removed, "complete": complete, "snapshot_seq": snapshot["seq"]}

    def find_ids(self, criteria: EraseFilter) -> list[int]:
        self._check_open()
        return self._store.select_ids(
            identity=criteria.identity,
            track_id=criteria.track_id,
            cameras=criteria.cameras,
            since=criteria.since,
            until=criteria.until,
            older_than=criteria.older_than,
        )

    # -- reads ------------------------------------------------------------------------------------

    def get(self, item_id: int, *, with_vector: bool = True) -> Item | None:
        self._check_open()
        (item_id,) = self._check_ids([item_id])
        return self._store.get_items([item_id], self.dim, with_vectors=with_vector).get(item_id)

    def search(
        self,
        vectors: np.ndarray | Sequence[float],
        top_k: int = 10,
        filters: Filters | None = None,
        *,
        embedding_version: str | None = None,
        with_vectors: bool = False,
    ) -> list[list[SearchHit]]:
        queries, top_k, filters = self._search_args(vectors, top_k, filters, embedding_version)
        self._ensure_index()
        with self._rw.read():
            index = self._index
            assert index is not None
            mask, available = self._columns.mask(filters)
            scores, labels = index.search(queries, top_k, mask, available)
            found = labels[labels >= 0]
            items = self._store.get_items(np.unique(found).tolist(), self.dim, with_vectors=with_vectors)
        results: list[list[SearchHit]] = []
        for row_scores, row_labels in zip(scores, labels, strict=True):
            hits = []
            for score, label in zip(row_scores, row_labels, strict=True):
                if label < 0:
                    continue
                item = items.get(int(label))
                if item is None:
                    logger.error("index holds id %d that the database does not", label)
                    continue
                hits.append(SearchHit(id=int(label), score=float(score), item=item))
            results.append(hits)
        return results

    def iter_items(self, batch_size: int = 10000, *, with_vectors: bool = True) -> Iterator[list[Item]]:
        self._check_open()
        yield from self._store.iter_items(self.dim, batch_size, with_vectors=with_vectors)

    def stats(self) -> dict[str, Any]:
        self._check_open()
        with self._rw.read():
            count = self._columns.count
            summary = self._columns.summary()
            index = self._index.describe() if self._index is not None else None
            applied, snap, pending = self._applied_seq, self._snapshot_seq, self._changes_since_snapshot
            removed, snapshot_error = self._removed_since_compaction, self._snapshot_error
        database_bytes = sum(p.stat().st_size for p in self.path.glob(DATABASE_NAME + "*") if p.is_file())
        return {
            "backend": self.backend,
            "path": str(self.path),
            "count": count,
            "dim": self.dim,
            "embedding_version": self.embedding_version,
            **summary,
            "index": index,
            "seq": applied,
            "snapshot_seq": snap,
            "changes_since_snapshot": pending,
            "removed_since_compaction": removed,
            "snapshot_error": snapshot_error,
            "read_only": self.read_only,
            "database_bytes": database_bytes,
        }

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            if self._closed:
                return
            if (
                self.snapshot_on_close
                and not self.read_only
                and self._index is not None
                and (self._applied_seq != self._snapshot_seq or self._changes_since_snapshot)
            ):
                try:
                    self._write_snapshot()
                except Exception:  # the database is intact; the next open replays instead
                    logger.exception("could not write the index snapshot on close")
            self._closed = True
            self._release()

    def _release(self) -> None:
        if self._index is not None:
            self._index.release()
        self._index = None
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
        self._closed = True

    def __repr__(self) -> str:
        dim, version = getattr(self, "dim", None), getattr(self, "embedding_version", None)
        return f"FaissGallery({str(self.path)!r}, dim={dim}, embedding_version={version!r})"
