"""Small JPEG thumbnails of ingested crops, one file per gallery id, for the web page.

They are a convenience, not part of the gallery's durable state: written after the items are stored
(atomically, by rename), removed with the item, and a missing one is a 404, never an error elsewhere.
Gallery ids are never reused, so a file can never show another item's crop.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clipmc.contract import atomic_write

log = logging.getLogger("clipmc.service.thumbnails")


class ThumbnailStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, item_id: int) -> Path:
        return self.directory / f"{int(item_id)}.jpg"

    def put(self, item_id: int, jpeg: bytes, *, overwrite: bool = False) -> None:
        target = self.path(item_id)
        if target.exists() and not overwrite:
            return
        atomic_write(target, jpeg)

    def put_many(self, pairs: list[tuple[int, bytes | None]]) -> None:
        """Write what can be written; a failure only costs the page a picture, so it is logged."""
        for item_id, jpeg in pairs:
            if jpeg is None:
                continue
            try:
                self.put(item_id, jpeg)
            except OSError as exc:
                log.warning("could not write the thumbnail of item %d: %s", item_id, exc)

    def get(self, item_id: int) -> bytes | None:
        try:
            return self.path(item_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable: the page shows no picture (a 404), the service no 500
            log.warning("could not read the thumbnail of item %d: %s", item_id, exc)
            return None

    def delete(self, item_id: int) -> None:
        """Remove the file; a failure is logged, not raised: the gallery item is already gone."""
        try:
            self.path(item_id).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the thumbnail of item %d: %s", item_id, exc)
