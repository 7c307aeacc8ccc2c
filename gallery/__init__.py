"""Gallery: a durable store of person-crop embeddings with metadata and filtered similarity search.

It knows nothing of models: it takes float32, L2-normalised vectors of one ``dim`` and one
``embedding_version`` (DESIGN.md section 2) and refuses any other (``DimensionMismatchError``,
``VersionMismatchError``; vectors that are non-finite or not unit-norm are refused too, never
silently renormalised). Scores are inner products (cosine similarities).

    from clipmc.gallery import Filters, Item, open_gallery

    with open_gallery("data/gallery", dim=1280, embedding_version=version) as gallery:
        result = gallery.add([Item(vector, modality="visible", camera=3, external_id="cam3/0001.jpg")])
        hits = gallery.search(query, top_k=10, filters=Filters(modality="visible"))[0]
        for hit in hits:
            print(hit.id, hit.score, hit.item.camera)

Back-ends (``open_gallery(..., backend=...)``, the one way in):

- ``faiss`` (default, :class:`FaissGallery`): a directory holding a SQLite database (WAL,
  ``synchronous=FULL``: a batch survives ``kill -9`` and power loss once ``add`` returns) which is the
  source of truth, and a FAISS index that is only a cache: exact ``IndexFlatIP`` by default, IVF past
  ``IndexConfig.ivf_threshold`` items (recall@10 measured at build), on the GPU when FAISS has one;
  snapshotted to ``index.faiss`` and rebuilt or replayed from the database on open.
- ``milvus`` (:class:`~gallery.milvus_backend.MilvusGallery`): the same interface over a Milvus
  collection (Milvus Lite in a directory, or a server URI), for galleries beyond one machine.

Semantics shared by both: ``add`` stores a batch all-or-nothing and is idempotent on
``Item.external_id`` (``AddResult(ids, created, existing)``); ids are assigned by the gallery;
``search`` applies ``Filters`` (modality, cameras in / not in, time range, identity present) before
taking the top-k (k up to 1000); many threads may search while one writes.
Erasure: ``remove`` deletes at once from search and from SQLite (``secure_delete``: the row's bytes
are zeroed); ``compact()`` also rewrites the index snapshot and truncates the WAL so that no file of
the gallery holds a removed vector; ``erase(EraseFilter(...))`` removes by identity, track, camera or
time (the service compacts on a schedule, see the README's "Erasure").
Command line: ``clipmc gallery stats|export|import|rebuild|compact|erase`` (``gallery/cli.py``).
"""

from __future__ import annotations

import os
from typing import Any

from clipmc.gallery.base import BaseGallery
from clipmc.gallery.errors import (
    DimensionMismatchError,
    ExternalIdConflictError,
    GalleryError,
    GalleryStateError,
    ItemNotFoundError,
    VersionMismatchError,
)
from clipmc.gallery.faiss_backend import FaissGallery
from clipmc.gallery.index import IndexConfig
from clipmc.gallery.items import (
    INFRARED,
    MAX_TOP_K,
    VISIBLE,
    AddResult,
    EraseFilter,
    Filters,
    Item,
    SearchHit,
    parse_modality,
)

BACKENDS = ("faiss", "milvus")

__all__ = [
    "BACKENDS",
    "INFRARED",
    "MAX_TOP_K",
    "VISIBLE",
    "AddResult",
    "BaseGallery",
    "DimensionMismatchError",
    "EraseFilter",
    "ExternalIdConflictError",
    "FaissGallery",
    "Filters",
    "GalleryError",
    "GalleryStateError",
    "IndexConfig",
    "Item",
    "ItemNotFoundError",
    "SearchHit",
    "VersionMismatchError",
    "open_gallery",
    "parse_modality",
]


def open_gallery(
    path: str | os.PathLike[str],
    dim: int | None = None,
    embedding_version: str | None = None,
    backend: str = "faiss",
    **options: Any,
) -> BaseGallery:
    """Open (or create) a gallery with the chosen back-end; ``options`` go to its constructor."""
    if backend == "faiss":
        return FaissGallery(path, dim, embedding_version, **options)
    if backend == "milvus":
        from clipmc.gallery.milvus_backend import MilvusGallery

        return MilvusGallery(path, dim, embedding_version, **options)
    raise GalleryError(f"unknown gallery back-end {backend!r}; choose one of {', '.join(BACKENDS)}")
