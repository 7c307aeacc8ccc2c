"""A gallery backed by Milvus, for galleries beyond one machine; same interface as the FAISS one.

``path`` is either a directory (Milvus Lite: ``path/milvus.db``, Milvus's C++ core in-process, for
development and tests) or a server URI (``http://host:19530``), in which case Milvus does the
durability, sharding and (GPU) indexing. Needs the ``milvus`` extra: ``pymilvus<3`` and
``milvus-lite<3`` (3.x is a pure-Python re-implementation, not Milvus).

Mapping onto Milvus:

- One collection per gallery; its description holds ``dim`` and ``embedding_version``.
- Ids are assigned here, not by Milvus (``auto_id`` off), because Milvus ``upsert`` on an auto-id
  collection gives the row a new primary key, and label updates must keep ids. They are 53-bit
  time-ordered ids (10 ms ticks | random node | counter), below 2**53 like the FAISS back-end's, so
  one API schema (JSON integers) keeps them exact in JavaScript. Unique within a process; across
  writer processes with high probability (a random 6-bit node each).
- Optional fields are stored with explicit presence flags (Milvus Lite has no nullable fields).
- Filters become a Milvus boolean expression evaluated during the search, so the top-k is taken
  over matching items only.

What Milvus does not give, and this back-end therefore does not promise: ``external_id``
idempotency is checked then written (safe against this process's other threads, not against another
writer process racing on the same external id), and a batch is one insert request (Milvus applies
a request as a unit but has no multi-request transactions). Inserts are acknowledged when Milvus has
logged them; ``snapshot()`` flushes them into sealed segments.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipmc.gallery.base import (
    DEFAULT_NORM_TOLERANCE,
    BaseGallery,
    assign_ids,
    check_new_gallery,
    check_same_labels,
    check_stored_matches,
)
from clipmc.gallery.errors import GalleryError, GalleryStateError, ItemNotFoundError
from clipmc.gallery.items import (
    MAX_EXTERNAL_ID_CHARS,
    MAX_ITEM_ID,
    MAX_LABEL_CHARS,
    MAX_METADATA_BYTES,
    AddResult,
    EraseFilter,
    Filters,
    Item,
    SearchHit,
    normalize_update,
    trusted_item,
)

logger = logging.getLogger(__name__)

LITE_DATABASE_NAME = "milvus.db"
DEFAULT_COLLECTION = "clipmc_gallery"
META_MARKER = "clipmc_gallery"
_CHUNK = 1000
_SCALAR_FIELDS = [
    "id",
    "external_id",
    "modality",
    "camera",
    "timestamp",
    "has_timestamp",
    "track_id",
    "identity",
    "has_identity",
    "metadata",
]
#: 2024-01-01T00:00:00Z in milliseconds: the id epoch.
_ID_EPOCH_MS = 1_704_067_200_000


class _IdGenerator:
    """53-bit ids: 37 bits of 10 ms ticks since 2024 (until 2067), 6 random node bits, a 10-bit counter.

    All ids are below 2**53 (exact as JavaScript numbers). Unique within a process (the counter, and
    waiting for the next tick when 1024 ids were taken in one) and, with high probability, across
    processes (a random node number each); up to about 100,000 ids per second per process.
    """

    TICK_NS = 10_000_000
    NODE_BITS = 6
    COUNTER_BITS = 10

    def __init__(self) -> None:
        self._node = secrets.randbits(self.NODE_BITS)
        self._lock = threading.Lock()
        self._last_tick = -1
        self._counter = 0

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        limit = 1 << self.COUNTER_BITS
        with self._lock:
            while len(out) < n:
                tick = (time.time_ns() - _ID_EPOCH_MS * 1_000_000) // self.TICK_NS
                if tick < self._last_tick:  # the clock went back: keep counting from the last tick
                    tick = self._last_tick
                if tick != self._last_tick:
                    self._last_tick, self._counter = tick, 0
                if self._counter >= limit:
                    time.sleep(0.001)
                    continue
                shifted = tick << (self.NODE_BITS + self.COUNTER_BITS)
                value = shifted | (self._node << self.COUNTER_BITS) | self._counter
                if value > MAX_ITEM_ID:
                    raise GalleryStateError("the Milvus id space (53 bits, 10 ms ticks since 2024) is exhausted")
                out.append(value)
                self._counter += 1
        return out


def _literal_list(values: Sequence[str | int]) -> str:
    """A Milvus expression list literal; JSON string escaping is what Milvus's parser reads."""
    return json.dumps(list(values), ensure_ascii=False)


def filter_expression(filters: Filters) -> str:
    """The Milvus boolean expression for ``filters`` ('' for no condition)."""
    terms = []
    if filters.modality is not None:
        terms.append(f"modality == {int(filters.modality)}")
    if filters.cameras is not None:
        terms.append(f"camera in {_literal_list(filters.cameras)}" if filters.cameras else "id < 0")
    if filters.exclude_cameras:
        terms.append(f"camera not in {_literal_list(filters.exclude_cameras)}")
    if filters.since is not None:
        terms.append(f"(has_timestamp == true and timestamp >= {filters.since!r})")
    if filters.until is not None:
        terms.append(f"(has_timestamp == true and timestamp <= {filters.until!r})")
    if filters.has_identity is not None:
        terms.append(f"has_identity == {'true' if filters.has_identity else 'false'}")
    return " and ".join(terms)


class MilvusGallery(BaseGallery):
    """The gallery interface over a Milvus collection (Milvus Lite for a directory ``path``)."""

    backend = "milvus"

    def __init__(
        self,
        path: str | os.PathLike[str],
        dim: int | None = None,
        embedding_version: str | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        index_type: str = "FLAT",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        timeout: float = 60.0,
        read_only: bool = False,
        norm_tolerance: float | None = DEFAULT_NORM_TOLERANCE,
    ) -> None:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise GalleryStateError(
                "the Milvus back-end needs pymilvus<3 and milvus-lite<3 (pip install 'clipmc[milvus]')"
            ) from exc
        self.norm_tolerance = norm_tolerance
        self.read_only = read_only
        self.collection = collection
        self.timeout = timeout
        self.index_type = index_type
        self.search_params = search_params or {}
        self._write_lock = threading.Lock()
        self._ids = _IdGenerator()
        self._closed = False
        text = str(path)
        if text.startswith(("http://", "https://", "tcp://", "grpc://", "unix:")):
            self.uri = text
            self.path: Path | None = None
        else:
            self.path = Path(path)
            if read_only and not (self.path / LITE_DATABASE_NAME).exists():
                raise GalleryError(f"no Milvus Lite gallery at {self.path}")
            self.path.mkdir(parents=True, exist_ok=True)
            self.uri = str(self.path / LITE_DATABASE_NAME)
        try:
            self._client = MilvusClient(uri=self.uri, token=token or "", timeout=timeout)
        except Exception as exc:
            raise GalleryStateError(f"cannot connect to Milvus at {self.uri}: {exc}") from exc
        try:
            self._open_collection(dim, embedding_version, index_params or {})
        except BaseException:
            self._client.close()
            raise

    # -- opening ----------------------------------------------------------------------------------

    def _open_collection(self, dim: int | None, version: str | None, index_params: dict[str, Any]) -> None:
        client = self._client
        if client.has_collection(self.collection, timeout=self.timeout):
            description = client.describe_collection(self.collection, timeout=self.timeout).get("description", "")
            try:
                meta = json.loads(description)
                if meta.get(META_MARKER) != 1:
                    raise ValueError("no marker")
                stored_dim, stored_version = int(meta["dim"]), str(meta["embedding_version"])
            except (ValueError, KeyError, TypeError):
                raise GalleryError(
                    f"the Milvus collection {self.collection!r} at {self.uri} is not a clipmc gallery"
                ) from None
            check_stored_matches(self._where, dim, version, stored_dim, stored_version)
            self.dim, self.embedding_version = stored_dim, stored_version
            client.load_collection(self.collection, timeout=self.timeout)
            return
        if self.read_only:
            raise GalleryError(f"no Milvus collection {self.collection!r} at {self.uri}")
        check_new_gallery(self._where, dim, version)
        assert dim is not None and version is not None
        self.dim, self.embedding_version = int(dim), version
        self._create_collection(index_params)

    def _create_collection(self, index_params: dict[str, Any]) -> None:
        from pymilvus import DataType, MilvusClient

        description = json.dumps({META_MARKER: 1, "dim": self.dim, "embedding_version": self.embedding_version})
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("external_id", DataType.VARCHAR, max_length=MAX_EXTERNAL_ID_CHARS * 4)
        schema.add_field("modality", DataType.INT8)
        schema.add_field("camera", DataType.VARCHAR, max_length=MAX_LABEL_CHARS * 4)
        schema.add_field("timestamp", DataType.DOUBLE)
        schema.add_field("has_timestamp", DataType.BOOL)
        schema.add_field("track_id", DataType.VARCHAR, max_length=MAX_LABEL_CHARS * 4)
        schema.add_field("identity", DataType.VARCHAR, max_length=MAX_LABEL_CHARS * 4)
        schema.add_field("has_identity", DataType.BOOL)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self._client.prepare_index_params()
        params.add_index("vector", index_type=self.index_type, metric_type="IP", params=index_params)
        self._client.create_collection(
            self.collection, schema=schema, index_params=params, consistency_level="Strong", timeout=self.timeout
        )
        logger.info("created Milvus gallery %r at %s (dim %d)", self.collection, self.uri, self.dim)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.uri} (collection {self.collection!r})"

    @staticmethod
    def _row(item_id: int, item: Item, vector: np.ndarray) -> dict[str, Any]:
        return {
            "id": item_id,
            "external_id": item.external_id or "",
            "modality": int(item.modality),
            "camera": item.camera or "",
            "timestamp": float(item.timestamp) if item.timestamp is not None else 0.0,
            "has_timestamp": item.timestamp is not None,
            "track_id": item.track_id or "",
            "identity": item.identity or "",
            "has_identity": item.identity is not None,
            "metadata": item.metadata,
            "vector": vector.tolist(),
        }

    @staticmethod
    def _item(entity: dict[str, Any], item_id: int, with_vector: bool) -> Item:
        vector = np.asarray(entity["vector"], dtype=np.float32) if with_vector else None
        return trusted_item(
            id=int(item_id),
            vector=vector,
            modality=int(entity["modality"]),
            camera=entity["camera"] or None,
            external_id=entity["external_id"] or None,
            timestamp=float(entity["timestamp"]) if entity["has_timestamp"] else None,
            track_id=entity["track_id"] or None,
            identity=entity["identity"] or None,
            metadata=dict(entity["metadata"] or {}),
        )

    def _query(self, expression: str, fields: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"filter": expression, "output_fields": fields, "timeout": self.timeout}
        if limit is not None:
            kwargs["limit"] = limit
        return list(self._client.query(self.collection, **kwargs))

    def _existing_ids(self, ids: Sequence[int]) -> list[int]:
        found: list[int] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = [int(i) for i in ids[start : start + _CHUNK]]
            found.extend(int(r["id"]) for r in self._query(f"id in {chunk}", ["id"], limit=len(chunk)))
        return found

    # -- writes -----------------------------------------------------------------------------------

    def add(self, items: Iterable[Item], *, embedding_version: str | None = None, keep_ids: bool = False) -> AddResult:
        self._check_writable()
        self._check_version(embedding_version)
        batch = list(items)
        if not batch:
            return AddResult(ids=[], created=0, existing=0)
        vectors = self._item_vectors(batch, keep_ids=keep_ids)
        for position, item in enumerate(batch):
            if len(json.dumps(item.metadata).encode()) > MAX_METADATA_BYTES:
                raise GalleryError(f"item {position}: metadata is larger than {MAX_METADATA_BYTES} bytes")
        with self._write_lock:
            self._check_writable()
            externals = list(dict.fromkeys(item.external_id for item in batch if item.external_id))
            known: dict[str, int] = {}
            labels: dict[str, tuple[str | None, int]] = {}
            for start in range(0, len(externals), _CHUNK):
                chunk = externals[start : start + _CHUNK]
                rows = self._query(
                    f"external_id in {_literal_list(chunk)}",
                    ["id", "external_id", "camera", "modality"],
                    limit=len(chunk),
                )
                known.update({r["external_id"]: int(r["id"]) for r in rows})
                labels.update({r["external_id"]: (r["camera"] or None, int(r["modality"])) for r in rows})
            check_same_labels(batch, labels)
            stored: set[int] = set()
            if keep_ids:
                stored = set(self._existing_ids(list(dict.fromkeys(int(item.id) for item in batch))))  # type: ignore[arg-type]
            fresh = iter(self._ids.take(0 if keep_ids else len(batch)))
            ids, positions = assign_ids(batch, known, stored, keep_ids=keep_ids, fresh=fresh)
            rows_out = [self._row(ids[p], batch[p], vectors[p]) for p in positions]
            if rows_out:
                try:
                    self._client.insert(self.collection, rows_out, timeout=self.timeout)
                except Exception as exc:
                    raise GalleryStateError(f"Milvus refused the batch: {exc}") from exc
        return AddResult(ids=ids, created=len(rows_out), existing=len(ids) - len(rows_out))

    def remove(self, ids: Iterable[int]) -> int:
        self._check_writable()
        wanted = list(dict.fromkeys(self._check_ids(ids)))
        if not wanted:
            return 0
        with self._write_lock:
            present = self._existing_ids(wanted)
            for start in range(0, len(present), _CHUNK):
                self._client.delete(self.collection, ids=present[start : start + _CHUNK], timeout=self.timeout)
        return len(present)

    def update(self, item_id: int, **fields: Any) -> Item:
        self._check_writable()
        (item_id,) = self._check_ids([item_id])
        values = normalize_update(fields)
        with self._write_lock:
            item = self.get(item_id, with_vector=True)
            if item is None:
                raise ItemNotFoundError(f"no item with id {item_id}")
            for name, value in values.items():
                setattr(item, name, value)
            assert item.vector is not None
            self._client.upsert(self.collection, [self._row(item_id, item, item.vector)], timeout=self.timeout)
        return item

    # -- reads ------------------------------------------------------------------------------------

    def get(self, item_id: int, *, with_vector: bool = True) -> Item | None:
        self._check_open()
        (item_id,) = self._check_ids([item_id])
        fields = _SCALAR_FIELDS + (["vector"] if with_vector else [])
        rows = self._client.get(self.collection, ids=[item_id], output_fields=fields, timeout=self.timeout)
        return self._item(rows[0], item_id, with_vector) if rows else None

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
        fields = _SCALAR_FIELDS + (["vector"] if with_vectors else [])
        answer = self._client.search(
            self.collection,
            data=queries.tolist(),
            limit=top_k,
            filter=filter_expression(filters),
            output_fields=fields,
            search_params={"metric_type": "IP", "params": self.search_params},
            timeout=self.timeout,
        )
        return [
            [
                SearchHit(
                    id=int(hit["id"]),
                    score=float(hit["distance"]),
                    item=self._item(hit["entity"], hit["id"], with_vectors),
                )
                for hit in row
            ]
            for row in answer
        ]

    def _count(self, expression: str = "") -> int:
        rows = self._query(expression, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def stats(self) -> dict[str, Any]:
        self._check_open()
        return {
            "backend": self.backend,
            "uri": self.uri,
            "collection": self.collection,
            "count": self._count(),
            "dim": self.dim,
            "embedding_version": self.embedding_version,
            "by_modality": {"visible": self._count("modality == 0"), "infrared": self._count("modality == 1")},
            "with_identity": self._count("has_identity == true"),
            "index": {"kind": self.index_type, "search_params": self.search_params},
            "read_only": self.read_only,
        }

    def iter_items(self, batch_size: int = 10000, *, with_vectors: bool = True) -> Iterator[list[Item]]:
        self._check_open()
        fields = _SCALAR_FIELDS + (["vector"] if with_vectors else [])
        iterator = self._client.query_iterator(
            self.collection, batch_size=min(batch_size, 16384), filter="", output_fields=fields, timeout=self.timeout
        )
        try:
            while True:
                rows = iterator.next()
                if not rows:
                    break
                yield [self._item(row, row["id"], with_vectors) for row in rows]
        finally:
            iterator.close()

    def find_ids(self, criteria: EraseFilter) -> list[int]:
        """Matching ids; ``older_than`` uses the capture time only (this back-end records no ingest
        time), so items without a timestamp are never erased by retention here."""
        self._check_open()
        terms = []
        if criteria.identity is not None:
            terms.append(f"identity == {json.dumps(criteria.identity, ensure_ascii=False)}")
        if criteria.track_id is not None:
            terms.append(f"track_id == {json.dumps(criteria.track_id, ensure_ascii=False)}")
        if criteria.cameras is not None:
            terms.append(f"camera in {_literal_list(criteria.cameras)}" if criteria.cameras else "id < 0")
        if criteria.since is not None:
            terms.append(f"(has_timestamp == true and timestamp >= {criteria.since!r})")
        if criteria.until is not None:
            terms.append(f"(has_timestamp == true and timestamp <= {criteria.until!r})")
        if criteria.older_than is not None:
            terms.append(f"(has_timestamp == true and timestamp < {criteria.older_than!r})")
        return sorted(int(row["id"]) for row in self._query(" and ".join(terms), ["id"]))

    def compact(self, *, vacuum: bool = False) -> dict[str, Any]:
        """Flush, then ask Milvus to compact the collection (it drops deleted rows from its segments in
        the background, on its own schedule; Milvus Lite may not support it, which is logged).
        ``vacuum`` has no meaning here."""
        self._check_writable()
        with self._write_lock:
            self._client.flush(self.collection, timeout=self.timeout)
            try:
                job = self._client.compact(self.collection, timeout=self.timeout)
            except Exception as exc:  # Milvus Lite: not implemented
                logger.warning("Milvus did not accept a compaction of %s: %s", self.collection, exc)
                return {"complete": False, "compaction": None}
        return {"complete": False, "compaction": job}

    def snapshot(self) -> dict[str, Any]:
        """Flush inserted data into sealed segments (Milvus's own persistence step)."""
        self._check_writable()
        with self._write_lock:
            self._client.flush(self.collection, timeout=self.timeout)
        return {"flushed": self.collection}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except Exception:  # closing must not fail the caller's shutdown
            logger.exception("closing the Milvus client failed")

    def __repr__(self) -> str:
        return f"MilvusGallery({self.uri!r}, collection={self.collection!r}, dim={getattr(self, 'dim', None)})"
