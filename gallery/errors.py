"""Exceptions raised by the gallery.

Input problems subclass :class:`GalleryError` (a ``ValueError``) so that the service can map every one of
them to a 4xx answer without knowing the details. Problems with the gallery itself (closed, opened by
another process, read-only) are :class:`GalleryStateError` (a ``RuntimeError``): not the caller's fault.
"""

from __future__ import annotations


class GalleryError(ValueError):
    """Bad input to the gallery: a malformed item, vector, filter or argument."""


class DimensionMismatchError(GalleryError):
    """A vector (or a gallery being opened) has another dimension than the gallery."""


class VersionMismatchError(GalleryError):
    """A vector comes from another ``embedding_version`` than the gallery holds.

    Mixing two models' vectors silently ruins retrieval, so the gallery refuses them instead.
    """


class ExternalIdConflictError(GalleryError):
    """An ``external_id`` already stored with another camera or modality than the new item says.

    Idempotent ``add`` returns the stored id for a repeated external id; when the labels differ, the
    two crops are not the same one (two camera folders with the same layout, say), and skipping the
    new one silently would lose it.
    """


class ItemNotFoundError(GalleryError, LookupError):
    """No item with that id (it never existed or was removed)."""


class GalleryStateError(RuntimeError):
    """The gallery cannot do this now: closed, read-only, locked by another process or unusable."""
