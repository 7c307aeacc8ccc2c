"""Export a gallery to a portable directory and import it back (into either back-end).

Layout of an export directory:

- ``manifest.json``: format name and version, ``dim``, ``embedding_version``, ``count``, the vector
  dtype and shape, and the SHA-256 of the two data files.
- ``items.jsonl``: one JSON object per item (``Item.to_dict()``: id, external_id, modality, camera,
  timestamp, track_id, identity, metadata), in the same order as the vectors.
- ``vectors.f32``: the vectors, raw little-endian float32, row-major ``[count, dim]``
  (``numpy.fromfile(path, "<f4").reshape(count, dim)``).

Both files are written streaming, so exporting a gallery of millions needs little memory, and the
checksums let an import refuse a truncated or altered copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipmc.gallery.base import BaseGallery
from clipmc.gallery.errors import DimensionMismatchError, GalleryError
from clipmc.gallery.items import Item

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "clipmc-gallery-export"
EXPORT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ITEMS_NAME = "items.jsonl"
VECTORS_NAME = "vectors.f32"


class _HashingWriter:
    """A binary file that also hashes what goes through it."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.sha256.update(data)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_gallery(gallery: BaseGallery, out_dir: str | os.PathLike[str], *, batch_size: int = 10000) -> dict[str, Any]:
    """Write every item of ``gallery`` to ``out_dir`` (which must not exist or be empty)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GalleryError(f"export target {out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    items_file = _HashingWriter(out / ITEMS_NAME)
    vectors_file = _HashingWriter(out / VECTORS_NAME)
    count = max_id = 0
    try:
        with tqdm(desc="export", unit="item", disable=None, leave=False) as bar:
            for batch in gallery.iter_items(batch_size, with_vectors=True):
                lines = "".join(json.dumps(item.to_dict(), ensure_ascii=False) + "\n" for item in batch)
                items_file.write(lines.encode())
                vectors = np.stack([item.vector for item in batch]).astype("<f4", copy=False)  # type: ignore[misc]
                vectors_file.write(vectors.tobytes())
                count += len(batch)
                max_id = max(max_id, *(int(item.id or 0) for item in batch))
                bar.update(len(batch))
    finally:
        items_file.close()
        vectors_file.close()
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "dim": gallery.dim,
        "embedding_version": gallery.embedding_version,
        "count": count,
        "max_id": max_id,  # what an importer checks before keeping the ids
        "vectors": {"file": VECTORS_NAME, "dtype": "<f4", "shape": [count, gallery.dim]},
        "items": {"file": ITEMS_NAME},
        "sha256": {ITEMS_NAME: items_file.sha256.hexdigest(), VECTORS_NAME: vectors_file.sha256.hexdigest()},
        "source_backend": gallery.backend,
        "exported_at": time.time(),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    logger.info("exported %d items to %s", count, out)
    return manifest


def read_manifest(src_dir: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """The manifest of an export, checked for format, sizes and (with ``verify``) checksums."""
    src = Path(src_dir)
    try:
        manifest = json.loads((src / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        raise GalleryError(f"{src} is not a gallery export (no {MANIFEST_NAME})") from None
    except ValueError as exc:
        raise GalleryError(f"{src / MANIFEST_NAME} is not valid JSON: {exc}") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise GalleryError(f"{src} is not a gallery export (format {manifest.get('format')!r})")
    if manifest.get("version") != EXPORT_VERSION:
        raise GalleryError(f"{src} is export version {manifest.get('version')!r}; this code reads {EXPORT_VERSION}")
    try:
        count, dim = int(manifest["count"]), int(manifest["dim"])
        str(manifest["embedding_version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GalleryError(f"{src / MANIFEST_NAME} lacks a field: {exc}") from None
    vectors = src / VECTORS_NAME
    if not vectors.is_file() or vectors.stat().st_size != count * dim * 4:
        raise GalleryError(f"{vectors} is missing or does not hold {count} x {dim} float32 values")
    if verify:
        for name in (ITEMS_NAME, VECTORS_NAME):
            if _sha256(src / name) != manifest.get("sha256", {}).get(name):
                raise GalleryError(f"{src / name} does not match the checksum in the manifest")
    return manifest


def iter_export(
    src_dir: str | os.PathLike[str], batch_size: int = 10000, *, verify: bool = True
) -> Iterator[list[Item]]:
    """The items of an export (with vectors and their original ids), in batches."""
    src = Path(src_dir)
    manifest = read_manifest(src, verify=verify)
    count, dim = int(manifest["count"]), int(manifest["dim"])
    vectors = np.memmap(src / VECTORS_NAME, dtype="<f4", mode="r", shape=(count, dim)) if count else None
    batch: list[Item] = []
    row = 0
    with (src / ITEMS_NAME).open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if row >= count:
                raise GalleryError(f"{src / ITEMS_NAME} has more items than the manifest's {count}")
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise GalleryError(f"{src / ITEMS_NAME} line {line_number} is not JSON: {exc}") from None
            assert vectors is not None
            batch.append(Item.from_dict(data, vector=np.array(vectors[row], dtype=np.float32)))
            row += 1
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch
    if row != count:
        raise GalleryError(f"{src / ITEMS_NAME} has {row} items, the manifest says {count}")


def import_gallery(
    gallery: BaseGallery,
    src_dir: str | os.PathLike[str],
    *,
    keep_ids: bool | None = None,
    batch_size: int = 10000,
    verify: bool = True,
) -> dict[str, Any]:
    """Add an export's items to ``gallery``; returns counts.

    ``keep_ids`` (default: when the gallery is empty) stores items under their exported ids, so ids
    that clients hold stay valid, and an id already present counts as existing; otherwise the gallery
    assigns new ids. Items are also matched on ``external_id`` as with any add. To finish an
    interrupted import, run it again with ``keep_ids=True``: nothing is stored twice.
    """
    manifest = read_manifest(src_dir, verify=verify)
    gallery._check_version(manifest["embedding_version"])
    if int(manifest["dim"]) != gallery.dim:
        raise DimensionMismatchError(f"the export holds dimension {manifest['dim']}, the gallery {gallery.dim}")
    top = manifest.get("max_id")
    if top is None:  # an export written before "max_id" was recorded: one pass over its ids
        top = max((int(item.id or 0) for batch in iter_export(src_dir, batch_size, verify=False) for item in batch),
                  default=0)  # fmt: skip
    fits = int(top) <= gallery.max_kept_id()
    if keep_ids is None:
        # Keep the exported ids into an empty gallery, unless they are more than it can keep (a FAISS gallery
        # keeps ids below 2**26: an export from Milvus, with 53-bit ids, gets new ids instead).
        keep_ids = int(gallery.stats()["count"]) == 0 and fits
        if not fits:
            logger.warning("%s: the exported ids (up to %d) are more than %s can keep; importing with new ids",
                           src_dir, top, type(gallery).__name__)  # fmt: skip
    elif keep_ids and not fits:  # refused before anything is stored, not halfway through
        raise GalleryError(f"{src_dir}: the exported ids go up to {top}, above the {gallery.max_kept_id()} "
                           f"{type(gallery).__name__} can keep; import with new ids (`--ids new`)")  # fmt: skip
    created = existing = 0
    with tqdm(total=int(manifest["count"]), desc="import", unit="item", disable=None, leave=False) as bar:
        for batch in iter_export(src_dir, batch_size, verify=False):
            result = gallery.add(batch, embedding_version=manifest["embedding_version"], keep_ids=keep_ids)
            created += result.created
            existing += result.existing
            bar.update(len(batch))
    logger.info("imported %s: %d created, %d already present", src_dir, created, existing)
    return {"count": int(manifest["count"]), "created": created, "existing": existing, "kept_ids": keep_ids}
