"""The interface every gallery back-end implements, and the input checks they share."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from gallery.errors import DimensionMismatchError, GalleryError, VersionMismatchError
from gallery.items import MAX_TOP_K, AddResult, Filters, Item, SearchHit

#: Vectors must be L2-normalised (DESIGN.md section 2); this is how far from 1 a norm may be.
DEFAULT_NORM_TOLERANCE = 1e-2


class BaseGallery(abc.ABC):
    """A durable store of embeddings with metadata and filtered inner-product search.

    Implementations are safe for many concurrent readers and one writer at a time (writers are
    serialised internally), so the service may call them from a thread pool.
    """

    backend: str = ""
    dim: int
    embedding_version: str
    norm_tolerance: float | None = DEFAULT_NORM_TOLERANCE

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

    def _item_vectors(self, items: Sequence[Item]) -> np.ndarray:
        """Stack the items' vectors into a checked ``[n, dim]`` float32 array."""
        for position, item in enumerate(items):
            if not isinstance(item, Item):
                raise GalleryError(f"item {position} is a {type(item).__name__}, not a gallery.Item")
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
            out.append(int(value))
        return out
