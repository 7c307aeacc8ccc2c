"""The interface every gallery back-end implements, and the input checks they share."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from clipmc.gallery.errors import (
    DimensionMismatchError,
    ExternalIdConflictError,
    GalleryError,
    GalleryStateError,
    VersionMismatchError,
)
from clipmc.gallery.items import MAX_ITEM_ID, MAX_TOP_K, AddResult, EraseFilter, Filters, Item, SearchHit

#: Vectors must be L2-normalised (DESIGN.md section 2); this is how far from 1 a norm may be.
DEFAULT_NORM_TOLERANCE = 1e-2


def check_new_gallery(where: object, dim: int | None, embedding_version: str | None) -> None:
    """Refuse to create a gallery at ``where`` without a usable ``dim`` and ``embedding_version``."""
    if dim is None or embedding_version is None:
        raise GalleryError(f"creating a gallery at {where} needs dim and embedding_version")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise GalleryError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(embedding_version, str) or not embedding_version.strip():
        raise GalleryError("embedding_version must be a non-empty string")


def check_stored_matches(
    where: object, dim: int | None, embedding_version: str | None, stored_dim: int, stored_version: str
) -> None:
    """Refuse to open an existing gallery with another ``dim`` or ``embedding_version`` than it holds."""
    if dim is not None and int(dim) != stored_dim:
        raise DimensionMismatchError(f"the gallery at {where} holds dimension {stored_dim}, not {dim}")
    if embedding_version is not None and embedding_version != stored_version:
        raise VersionMismatchError(
            f"the gallery at {where} holds embedding_version {stored_version!r}, not {embedding_version!r}"
        )


def check_same_labels(items: Sequence[Item], stored: dict[str, tuple[str | None, int]]) -> None:
    """Refuse an item whose external id is stored with another camera or modality.

    ``stored`` maps external ids already in the gallery to their (camera, modality code).
    """
    for position, item in enumerate(items):
        if item.external_id is None or item.external_id not in stored:
            continue
        camera, modality = stored[item.external_id]
        if camera != item.camera or int(modality) != int(item.modality):
            raise ExternalIdConflictError(
                f"item {position}: external_id {item.external_id!r} is stored with camera {camera!r} and modality "
                f"{int(modality)}, this item has camera {item.camera!r} and modality {int(item.modality)}; "
                "a repeated external_id must name the same crop (give each crop its own external_id)"
            )


def assign_ids(
    items: Sequence[Item], known: dict[str, int], stored: set[int], *, keep_ids: bool, fresh: Iterator[int]
) -> tuple[list[int], list[int]]:
    """The ids of a batch in input order, and the positions of the items to create.

    ``known`` maps the stored external ids to their ids; with ``keep_ids``, ``stored`` holds which of the
    items' own ids are stored already. An item whose external id is known (stored, or earlier in the
    batch) gets that id; with ``keep_ids`` an item keeps its own id (existing when already stored);
    otherwise it takes the next id from ``fresh``. Both back-ends' idempotent ``add`` rests on this.
    """
    ids: list[int] = []
    created: list[int] = []
    for position, item in enumerate(items):
        if item.external_id is not None and item.external_id in known:
            ids.append(known[item.external_id])
            continue
        if keep_ids:
            assert item.id is not None  # checked by BaseGallery._item_vectors
            if item.id in stored:
                ids.append(item.id)
                continue
            new_id = item.id
            stored.add(new_id)
        else:
            new_id = next(fresh)
        if item.external_id is not None:
            known[item.external_id] = new_id
        ids.append(new_id)
        created.append(position)
    return ids, created


class BaseGallery(abc.ABC):
    """A durable store of embeddings with metadata and filtered inner-product search.

    Implementations are safe for many concurrent readers and one writer at a time (writers are
    serialised internally), so the service may call them from a thread pool.
    """

    backend: str = ""
    dim: int
    embedding_version: str
    norm_tolerance: float | None = DEFAULT_NORM_TOLERANCE
    read_only: bool = False
    _closed: bool = False

    # -- the interface ----------------------------------------------------------------------------

    @abc.abstractmethod
    def add(self, items: Iterable[Item], *, embedding_version: str | None = None, keep_ids: bool = False) -> AddResult:
        """Store a batch atomically (all or nothing); idempotent on ``external_id``."""

    @abc.abstractmethod
    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id; unknown ids are ignored. Returns how many were removed."""

    @abc.abstractmethod
    def get(self, item_id: int, *, with_vector: bool = True) -> Item | None:
        """The stored item, or None when there is no item with that id."""

    @abc.abstractmethod
    def update(self, item_id: int, **fields: Any) -> Item:
        """Change an item's labels (identity, track_id, camera, timestamp, metadata); not its vector."""

    @abc.abstractmethod
    def search(
        self,
        vectors: np.ndarray | Sequence[float],
        top_k: int = 10,
        filters: Filters | None = None,
        *,
        embedding_version: str | None = None,
        with_vectors: bool = False,
    ) -> list[list[SearchHit]]:
        """Best matches by inner product, best first, one list per query row (a 1-D vector is one query).

        Filters are applied before the top-k is taken, so a query gets ``top_k`` hits whenever that
        many items match.
        """

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts and settings; always has ``count``, ``dim``, ``embedding_version`` and ``backend``."""

    @abc.abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """Persist whatever makes the next open fast (index snapshot, flush)."""

    @abc.abstractmethod
    def find_ids(self, criteria: EraseFilter) -> list[int]:
        """The ids of the stored items that match ``criteria`` (for bulk erasure and retention)."""

    @abc.abstractmethod
    def compact(self, *, vacuum: bool = False) -> dict[str, Any]:
        """Make removals final on disk: no copy of a removed item's vector or labels stays in the
        gallery's files once this returns (see each back-end for what that covers)."""

    def erase(self, criteria: EraseFilter) -> list[int]:
        """Remove every item matching ``criteria``; returns their ids (call :meth:`compact` to make it final)."""
        if not isinstance(criteria, EraseFilter):
            raise GalleryError(f"criteria must be a gallery EraseFilter, got {type(criteria).__name__}")
        ids = self.find_ids(criteria)
        if ids:
            self.remove(ids)
        return ids

    @abc.abstractmethod
    def iter_items(self, batch_size: int = 10000, *, with_vectors: bool = True) -> Iterator[list[Item]]:
        """All items in batches (for export), each with its id."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources; further calls raise :class:`~gallery.errors.GalleryStateError`."""

    def __enter__(self) -> BaseGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.stats()["count"])

    # -- shared checks ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryStateError(f"{self!r} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise GalleryStateError(f"{self!r} is open read-only")

    def _search_args(
        self,
        vectors: np.ndarray | Sequence[float],
        top_k: int,
        filters: Filters | None,
        embedding_version: str | None,
    ) -> tuple[np.ndarray, int, Filters]:
        """The checks every ``search`` makes first: (query array, top_k, filters) or a clear error."""
        self._check_open()
        self._check_version(embedding_version)
        queries = self._query_vectors(vectors)
        top_k = self._check_top_k(top_k)
        if filters is None:
            filters = Filters()
        elif not isinstance(filters, Filters):
            raise GalleryError(f"filters must be a gallery.Filters, got {type(filters).__name__}")
        return queries, top_k, filters

    def _check_version(self, embedding_version: str | None) -> None:
        if embedding_version is not None and embedding_version != self.embedding_version:
            raise VersionMismatchError(
                f"vectors are from embedding_version {embedding_version!r} but this gallery holds "
                f"{self.embedding_version!r}; re-embed them with the same model or use another gallery"
            )

    def _check_vectors(self, array: np.ndarray, what: str) -> None:
        """Refuse non-finite or non-unit vectors; we never renormalise silently (scores would lie)."""
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise GalleryError(f"{what} {bad} has a NaN or infinite value")
        if self.norm_tolerance is not None and len(array):
            norms = np.linalg.norm(array, axis=1)
            off = np.abs(norms - 1.0) > self.norm_tolerance
            if off.any():
                bad = int(np.flatnonzero(off)[0])
                raise GalleryError(
                    f"{what} {bad} has L2 norm {norms[bad]:.4f}; the gallery stores L2-normalised "
                    "embeddings (norm 1) so that inner products are cosine similarities"
                )

    def max_kept_id(self) -> int:
        """The largest id an item may keep (``keep_ids``: imports)."""
        return MAX_ITEM_ID

    def _item_vectors(self, items: Sequence[Item], *, keep_ids: bool = False) -> np.ndarray:
        """Stack the items' vectors into a checked ``[n, dim]`` float32 array (and check ids to be kept)."""
        for position, item in enumerate(items):
            if not isinstance(item, Item):
                raise GalleryError(f"item {position} is a {type(item).__name__}, not a gallery.Item")
            if keep_ids and (item.id is None or item.id <= 0):
                raise GalleryError(f"item {position} needs a positive id to be kept, got {item.id}")
            if keep_ids and item.id > MAX_ITEM_ID:  # type: ignore[operator]
                raise GalleryError(
                    f"item {position} has id {item.id}, above 2**53-1 (ids must stay exact in JavaScript); "
                    "import it with new ids"
                )
            if keep_ids and item.id > self.max_kept_id():  # type: ignore[operator]
                raise GalleryError(
                    f"item {position} has id {item.id}, above the {self.max_kept_id()} this "
                    f"{type(self).__name__} can keep (its filters are arrays indexed by id); import with new "
                    "ids (`clipmc gallery import --ids new`, or keep_ids=False)"
                )
            if item.vector is None:
                raise GalleryError(f"item {position} has no vector")
            if item.vector.shape != (self.dim,):
                raise DimensionMismatchError(
                    f"item {position} has a vector of dimension {item.vector.shape[0]}, "
                    f"this gallery holds dimension {self.dim}"
                )
        array = np.ascontiguousarray(np.stack([item.vector for item in items]), dtype=np.float32)
        self._check_vectors(array, "item")
        return array

    def _query_vectors(self, vectors: np.ndarray | Sequence[float]) -> np.ndarray:
        """A checked ``[nq, dim]`` float32 array from one vector or a batch."""
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise GalleryError(f"query vectors are not numeric: {exc}") from None
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise GalleryError(f"query vectors must be 1-D or 2-D, got shape {array.shape}")
        if array.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"query vectors have dimension {array.shape[1]}, this gallery holds dimension {self.dim}"
            )
        array = np.ascontiguousarray(array)
        self._check_vectors(array, "query")
        return array

    @staticmethod
    def _check_top_k(top_k: int) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise GalleryError(f"top_k must be an integer, got {top_k!r}")
        if not 1 <= int(top_k) <= MAX_TOP_K:
            raise GalleryError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        return int(top_k)

    @staticmethod
    def _check_ids(ids: Iterable[int]) -> list[int]:
        out = []
        for value in ids:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise GalleryError(f"item ids are integers, got {value!r}")
            if not 0 <= int(value) < 2**63:  # SQLite and FAISS ids are signed 64-bit
                raise GalleryError(f"item id {value} is outside 0..2**63-1")
            out.append(int(value))
        return out
