"""SQLite store: the gallery's source of truth.

WAL journal with ``synchronous=FULL``: when a write transaction's COMMIT returns, it survives
``kill -9`` and power loss, and readers on other connections keep reading while a writer commits.
Items and their vectors (float32 little-endian BLOBs) live in ``items``; every committed batch takes
the next number of the change sequence (``changes``), which items record in ``seq`` and removals in
``tombstones``. An index snapshot that covers the sequence up to S is brought up to date by replaying
the items with ``seq > S`` and the tombstones with ``seq > S``.

Connections: one writer connection (the caller serialises writes) and one connection per reading
thread, so the service's thread pool never shares a connection between threads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.gallery.base import assign_ids, check_same_labels
from clipmc.gallery.errors import GalleryError, GalleryStateError, ItemNotFoundError
from clipmc.gallery.items import UPDATABLE_FIELDS, Item, trusted_item

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Stay well below SQLite's limit on bound parameters in one statement.
_CHUNK = 500
_ITEM_COLUMNS = "id, external_id, modality, camera, timestamp, track_id, identity, metadata"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove', 'update')),
    n INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT UNIQUE,
    modality INTEGER NOT NULL CHECK (modality IN (0, 1)),
    camera TEXT,
    timestamp REAL,
    track_id TEXT,
    identity TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_seq ON items (seq);
CREATE TABLE IF NOT EXISTS tombstones (item_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones (seq);
"""


@dataclass
class Columns:
    """The filterable fields of all stored items, as arrays (id order) for the in-memory filter."""

    ids: np.ndarray
    modality: np.ndarray
    camera: list[str | None]
    timestamp: np.ndarray
    has_identity: np.ndarray


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def vector_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


class SQLiteStore:
    """Items, vectors and the change sequence in one SQLite database file."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        if read_only and not self.path.exists():
            raise GalleryError(f"no gallery database at {self.path}")
        self._writer: sqlite3.Connection | None = None
        if not read_only:
            self._writer = self._connect()
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise GalleryStateError(f"SQLite refused WAL mode for {self.path} (got {mode!r})")
            self._writer.executescript(_SCHEMA)

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
            else:
                conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise GalleryStateError(f"cannot open the gallery database {self.path}: {exc}") from exc
        conn.isolation_level = None  # explicit BEGIN/COMMIT only
        conn.execute("PRAGMA synchronous=FULL")
        # Deleted rows are overwritten with zeros, not left in free space: erasure reaches the file.
        conn.execute("PRAGMA secure_delete=ON")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def reader(self) -> sqlite3.Connection:
        """This thread's own connection (created on first use)."""
        if self._closed:
            raise GalleryStateError("the gallery is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the writer connection; any error rolls everything back."""
        if self._closed:
            raise GalleryStateError("the gallery is closed")
        if self._writer is None:
            raise GalleryStateError("the gallery is open read-only")
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[None]:
        """One consistent view of the database for every read this thread makes inside the block."""
        conn = self.reader()
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()

    # -- meta -------------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        try:
            rows = self.reader().execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as exc:
            raise GalleryStateError(f"{self.path} is not a readable gallery database: {exc}") from exc
        return dict(rows)

    def init_meta(self, dim: int, embedding_version: str) -> None:
        with self._write_transaction() as conn:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("dim", str(dim)),
                    ("embedding_version", embedding_version),
                    ("created_at", repr(time.time())),
                ],
            )

    # -- writes -----------------------------------------------------------------------------------

    def _next_seq(self, conn: sqlite3.Connection, op: str, n: int) -> int:
        cursor = conn.execute("INSERT INTO changes (op, n, at) VALUES (?, ?, ?)", (op, n, time.time()))
        return int(cursor.lastrowid)

    def insert_batch(
        self, items: Sequence[Item], vectors: np.ndarray, *, keep_ids: bool = False
    ) -> tuple[list[int], np.ndarray, int | None]:
        """Insert the items that are new, in one transaction.

        Returns the ids in input order, a mask of the rows that were created, and the batch's change
        sequence number (None when nothing was new); ids are assigned by :func:`gallery.base.assign_ids`
        (``keep_ids``: each item's own positive ``id``, already checked by the caller).
        """
        with self._write_transaction() as conn:
            externals = list(dict.fromkeys(item.external_id for item in items if item.external_id))
            known: dict[str, int] = {}
            labels: dict[str, tuple[str | None, int]] = {}
            for chunk in _chunks(externals):
                sql = f"SELECT external_id, id, camera, modality FROM items WHERE external_id IN ({_marks(len(chunk))})"
                for external_id, item_id, camera, modality in conn.execute(sql, list(chunk)):
                    known[external_id] = item_id
                    labels[external_id] = (camera, modality)
            check_same_labels(items, labels)
            stored_ids: set[int] = set()
            if keep_ids:
                for chunk in _chunks(list(dict.fromkeys(item.id for item in items))):
                    sql = f"SELECT id FROM items WHERE id IN ({_marks(len(chunk))})"
                    stored_ids.update(row[0] for row in conn.execute(sql, list(chunk)))
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            fresh = itertools.count((int(row[0]) if row else 0) + 1)
            ids, positions = assign_ids(items, known, stored_ids, keep_ids=keep_ids, fresh=fresh)
            created = np.zeros(len(items), dtype=bool)
            created[positions] = True
            rows: list[tuple[Any, ...]] = []
            for position in positions:
                item = items[position]
                rows.append(
                    (
                        ids[position],
                        item.external_id,
                        int(item.modality),
                        item.camera,
                        item.timestamp,
                        item.track_id,
                        item.identity,
                        json.dumps(item.metadata, allow_nan=False, separators=(",", ":")) if item.metadata else "{}",
                        vector_blob(vectors[position]),
                    )
                )
            if not rows:
                return ids, created, None
            seq = self._next_seq(conn, "add", len(rows))
            conn.executemany(
                "INSERT INTO items (id, external_id, modality, camera, timestamp, track_id, identity, "
                "metadata, vector, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*values, seq) for values in rows],
            )
        return ids, created, seq

    def delete(self, ids: Sequence[int]) -> tuple[list[int], int | None]:
        """Delete the stored ones among ``ids`` and tombstone them; returns them and the change number."""
        unique = list(dict.fromkeys(ids))
        with self._write_transaction() as conn:
            present: list[int] = []
            for chunk in _chunks(unique):
                sql = f"SELECT id FROM items WHERE id IN ({_marks(len(chunk))})"
                present.extend(row[0] for row in conn.execute(sql, list(chunk)))
            if not present:
                return [], None
            seq = self._next_seq(conn, "remove", len(present))
            for chunk in _chunks(present):
                conn.execute(f"DELETE FROM items WHERE id IN ({_marks(len(chunk))})", list(chunk))
            conn.executemany(
                "INSERT OR REPLACE INTO tombstones (item_id, seq) VALUES (?, ?)",
                [(item_id, seq) for item_id in present],
            )
        return present, seq

    def update(self, item_id: int, fields: dict[str, Any]) -> int:
        """Set some of :data:`UPDATABLE_FIELDS` (already validated); returns the change number."""
        columns = [name for name in UPDATABLE_FIELDS if name in fields]
        values = [
            json.dumps(fields[name], allow_nan=False, separators=(",", ":")) if name == "metadata" else fields[name]
            for name in columns
        ]
        with self._write_transaction() as conn:
            if columns:
                assignments = ", ".join(f"{name} = ?" for name in columns)
                cursor = conn.execute(f"UPDATE items SET {assignments} WHERE id = ?", [*values, item_id])
                found = cursor.rowcount > 0
            else:
                found = conn.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is not None
            if not found:
                raise ItemNotFoundError(f"no item with id {item_id}")
            return self._next_seq(conn, "update", 1)

    def prune_tombstones(self, up_to_seq: int) -> None:
        """Forget removals that an index snapshot already covers."""
        with self._write_transaction() as conn:
            conn.execute("DELETE FROM tombstones WHERE seq <= ?", (up_to_seq,))

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it to zero bytes (``wal_checkpoint(TRUNCATE)``).

        Page images written before a deletion (the rows as inserted) live in the WAL until this, so
        it is the step that takes a removed row's bytes off the disk. Returns False when a reader kept
        the checkpoint from finishing (try again later).
        """
        if self._writer is None:
            raise GalleryStateError("the gallery is open read-only")
        busy = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return int(busy) == 0

    def vacuum(self) -> None:
        """Rewrite the database file (``VACUUM``): free pages, and whatever they held, leave the file."""
        if self._writer is None:
            raise GalleryStateError("the gallery is open read-only")
        self._writer.execute("VACUUM")

    def select_ids(
        self,
        *,
        identity: str | None = None,
        track_id: str | None = None,
        cameras: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        older_than: float | None = None,
    ) -> list[int]:
        """Ids of the items matching every given condition (``older_than``: capture time, or ingest
        time, i.e. the time of the change that added the item, when there is no capture time)."""
        where: list[str] = []
        params: list[Any] = []
        if identity is not None:
            where.append("items.identity = ?")
            params.append(identity)
        if track_id is not None:
            where.append("items.track_id = ?")
            params.append(track_id)
        if cameras is not None:
            if not cameras:
                return []
            where.append(f"items.camera IN ({_marks(len(cameras))})")
            params.extend(cameras)
        if since is not None:
            where.append("items.timestamp >= ?")
            params.append(since)
        if until is not None:
            where.append("items.timestamp <= ?")
            params.append(until)
        if older_than is not None:
            where.append("COALESCE(items.timestamp, changes.at) < ?")
            params.append(older_than)
        sql = "SELECT items.id FROM items LEFT JOIN changes ON changes.seq = items.seq"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [row[0] for row in self.reader().execute(sql + " ORDER BY items.id", params)]

    # -- reads ------------------------------------------------------------------------------------

    def max_seq(self) -> int:
        row = self.reader().execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def tombstones_after(self, seq: int) -> list[int]:
        rows = self.reader().execute("SELECT item_id FROM tombstones WHERE seq > ?", (seq,)).fetchall()
        return [row[0] for row in rows]

    def ids_added_after(self, seq: int) -> list[int]:
        rows = self.reader().execute("SELECT id FROM items WHERE seq > ? ORDER BY id", (seq,)).fetchall()
        return [row[0] for row in rows]

    def columns(self) -> Columns:
        """The filterable fields of every item, for the in-memory filter masks."""
        rows = (
            self.reader()
            .execute("SELECT id, modality, camera, timestamp, identity IS NOT NULL FROM items ORDER BY id")
            .fetchall()
        )
        n = len(rows)
        return Columns(
            ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=n),
            modality=np.fromiter((r[1] for r in rows), dtype=np.int8, count=n),
            camera=[r[2] for r in rows],
            timestamp=np.fromiter((np.nan if r[3] is None else r[3] for r in rows), dtype=np.float64, count=n),
            has_identity=np.fromiter((bool(r[4]) for r in rows), dtype=bool, count=n),
        )

    def _decode(self, blobs: Sequence[bytes], dim: int) -> np.ndarray:
        data = np.frombuffer(b"".join(blobs), dtype="<f4")
        if data.size != len(blobs) * dim:
            raise GalleryStateError(f"{self.path}: a stored vector does not have dimension {dim}")
        return data.reshape(len(blobs), dim).astype(np.float32, copy=False)

    def vectors_by_id(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their vectors) in ascending id order."""
        found_ids: list[int] = []
        blobs: list[bytes] = []
        conn = self.reader()
        for chunk in _chunks(sorted(set(ids))):
            sql = f"SELECT id, vector FROM items WHERE id IN ({_marks(len(chunk))}) ORDER BY id"
            for item_id, blob in conn.execute(sql, list(chunk)):
                found_ids.append(item_id)
                blobs.append(blob)
        if not blobs:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        return np.asarray(found_ids, dtype=np.int64), self._decode(blobs, dim)

    def iter_vectors(
        self, dim: int, batch_size: int = 20000, *, in_transaction: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of all items in id order, in batches, from one consistent read.

        With ``in_transaction`` it reads on this thread's connection, inside the read transaction
        the caller opened with :meth:`read_transaction`; otherwise on a connection of its own.
        """
        own = not in_transaction
        conn = self._connect() if own else self.reader()
        try:
            if own:
                conn.execute("BEGIN")
            last = 0
            while True:
                rows = conn.execute(
                    "SELECT id, vector FROM items WHERE id > ? ORDER BY id LIMIT ?", (last, batch_size)
                ).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                yield ids, self._decode([r[1] for r in rows], dim)
        finally:
            if own:
                self._forget(conn)

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    @staticmethod
    def _item(row: Sequence[Any], vector: np.ndarray | None) -> Item:
        return trusted_item(
            id=row[0],
            external_id=row[1],
            modality=row[2],
            camera=row[3],
            timestamp=row[4],
            track_id=row[5],
            identity=row[6],
            metadata=json.loads(row[7]),
            vector=vector,
        )

    def get_items(self, ids: Sequence[int], dim: int, *, with_vectors: bool) -> dict[int, Item]:
        """The stored items among ``ids``, keyed by id."""
        columns = _ITEM_COLUMNS + (", vector" if with_vectors else "")
        conn = self.reader()
        out: dict[int, Item] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            sql = f"SELECT {columns} FROM items WHERE id IN ({_marks(len(chunk))})"
            for row in conn.execute(sql, list(chunk)):
                vector = self._decode([row[8]], dim)[0] if with_vectors else None
                out[row[0]] = self._item(row, vector)
        return out

    def iter_items(self, dim: int, batch_size: int, *, with_vectors: bool) -> Iterator[list[Item]]:
        """All items in id order, in batches, from one consistent read transaction."""
        columns = _ITEM_COLUMNS + (", vector" if with_vectors else "")
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            last = 0
            while True:
                rows = conn.execute(
                    f"SELECT {columns} FROM items WHERE id > ? ORDER BY id LIMIT ?", (last, batch_size)
                ).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                vectors = self._decode([r[8] for r in rows], dim) if with_vectors else None
                yield [self._item(row, None if vectors is None else vectors[i]) for i, row in enumerate(rows)]
        finally:
            self._forget(conn)
