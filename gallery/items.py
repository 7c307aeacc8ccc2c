"""The gallery's data types: items, filters, search hits and add results.

Everything here validates on construction, so a bad value coming from a request becomes a
:class:`~gallery.errors.GalleryError` naming the field instead of a failure deep inside the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Re-exported (the `X as X` form): the gallery's callers import these from here.
from clipmc.contract import INFRARED as INFRARED
from clipmc.contract import MAX_TOP_K as MAX_TOP_K
from clipmc.contract import MODALITY_NAMES, ModalityError
from clipmc.contract import VISIBLE as VISIBLE
from clipmc.contract import parse_modality as _parse_modality
from clipmc.gallery.errors import GalleryError

MAX_EXTERNAL_ID_CHARS = 512
MAX_LABEL_CHARS = 256
MAX_METADATA_BYTES = 65536
#: Largest item id either back-end assigns or keeps: 2**53 - 1, the largest integer a JavaScript number
#: (and so the web page, and any JSON client that reads numbers as doubles) holds exactly.
MAX_ITEM_ID = 2**53 - 1
#: Nesting levels of an item's metadata (the object itself is level 1). JSON much deeper than this
#: cannot be serialised back by every client (Python's json, pydantic, browsers stop at a few hundred).
MAX_METADATA_DEPTH = 16
#: Keys in an item's metadata, counted over every nested object.
MAX_METADATA_KEYS = 1024


def parse_modality(value: Any, field_name: str = "modality") -> int:
    """Return 0 (visible) or 1 (infrared) from an int or any spelling of ``clipmc.contract``."""
    try:
        return _parse_modality(value, field_name)
    except ModalityError as exc:
        raise GalleryError(str(exc)) from None


def modality_name(value: int) -> str:
    """The name of a modality code (``0 -> "visible"``)."""
    return MODALITY_NAMES[value]


def _label(value: Any, field_name: str, max_chars: int = MAX_LABEL_CHARS) -> str | None:
    """Normalise an optional id-like field to a non-empty string or None (ints are accepted)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise GalleryError(f"{field_name} must be a string or an int, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        return None
    if len(text) > max_chars:
        raise GalleryError(f"{field_name} is longer than {max_chars} characters")
    if "\x00" in text:
        raise GalleryError(f"{field_name} contains a NUL character")
    return text


def _timestamp(value: Any, field_name: str = "timestamp") -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise GalleryError(f"{field_name} must be epoch seconds (a number), got {value!r}")
    try:
        ts = float(value)
    except (TypeError, ValueError):
        raise GalleryError(f"{field_name} must be epoch seconds (a number), got {value!r}") from None
    if not math.isfinite(ts):
        raise GalleryError(f"{field_name} must be finite, got {value!r}")
    return ts


def check_metadata_shape(value: Any) -> None:
    """Refuse metadata nested deeper than :data:`MAX_METADATA_DEPTH` or with more than
    :data:`MAX_METADATA_KEYS` keys; iterative, so a hostile depth cannot exhaust the stack here."""
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
            keys += len(node)
            if keys > MAX_METADATA_KEYS:
                raise GalleryError(f"metadata has more than {MAX_METADATA_KEYS} keys (counting nested objects)")
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > MAX_METADATA_DEPTH:
            raise GalleryError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GalleryError(f"metadata must be a JSON object, got {type(value).__name__}")
    if not value:
        return value
    check_metadata_shape(value)
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"metadata is not JSON-serialisable: {exc}") from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise GalleryError(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
    return value


@dataclass
class Item:
    """One gallery entry: an embedding plus what is known about the sighting.

    ``modality`` is stored as 0 (visible) / 1 (infrared); the names are accepted too. ``camera``,
    ``track_id`` and ``identity`` are stored as strings (ints are accepted and converted), empty strings
    become None. ``external_id`` is the caller's idempotency key: adding an item whose external id is
    already stored adds nothing and returns the stored id. ``id`` is assigned by the gallery and filled
    in on items it returns; it is ignored by ``add`` unless ``keep_ids=True`` (imports).
    ``vector`` is None on items returned by a search unless vectors were asked for.
    """

    vector: np.ndarray | None
    modality: int | str
    camera: str | int | None = None
    external_id: str | None = None
    timestamp: float | None = None
    track_id: str | int | None = None
    identity: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def __post_init__(self) -> None:
        if self.vector is not None:
            vector = np.asarray(self.vector, dtype=np.float32)
            if vector.ndim != 1:
                raise GalleryError(f"an item's vector must be one-dimensional, got shape {vector.shape}")
            self.vector = vector
        self.modality = parse_modality(self.modality)
        self.camera = _label(self.camera, "camera")
        self.external_id = _label(self.external_id, "external_id", MAX_EXTERNAL_ID_CHARS)
        self.timestamp = _timestamp(self.timestamp)
        self.track_id = _label(self.track_id, "track_id")
        self.identity = _label(self.identity, "identity")
        self.metadata = _metadata(self.metadata)
        if self.id is not None:
            if isinstance(self.id, (bool, np.bool_)) or not isinstance(self.id, (int, np.integer)):
                raise GalleryError(f"id must be an int, got {self.id!r}")
            self.id = int(self.id)

    def to_dict(self) -> dict[str, Any]:
        """The item's fields without the vector, JSON-ready (modality as its name)."""
        return {
            "id": self.id,
            "external_id": self.external_id,
            "modality": modality_name(int(self.modality)),
            "camera": self.camera,
            "timestamp": self.timestamp,
            "track_id": self.track_id,
            "identity": self.identity,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], vector: np.ndarray | None = None) -> Item:
        """Build an item from :meth:`to_dict` output (or a request body); unknown keys are an error."""
        allowed = {"id", "external_id", "modality", "camera", "timestamp", "track_id", "identity", "metadata"}
        unknown = set(data) - allowed
        if unknown:
            raise GalleryError(f"unknown item field(s): {', '.join(sorted(unknown))}")
        if "modality" not in data:
            raise GalleryError("an item needs a modality")
        return cls(vector=vector, **data)


def _camera_list(value: Iterable[str | int] | None, field_name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    cameras = []
    for camera in value:
        label = _label(camera, field_name)
        if label is None:
            raise GalleryError(f"{field_name} contains an empty camera id")
        cameras.append(label)
    return tuple(cameras)


@dataclass(frozen=True)
class EraseFilter:
    """Which items a bulk erasure deletes. Every condition that is set must hold (AND); at least one
    must be set, so that no call erases a whole gallery by omission.

    - ``identity`` / ``track_id``: exact labels.
    - ``cameras``: camera ids (str or int).
    - ``since`` / ``until``: inclusive bounds on the capture timestamp (items without one never match).
    - ``older_than``: epoch seconds; items captured before it, or, when they carry no capture time,
      ingested before it (the retention rule). Back-ends that do not record ingest times use the
      capture time only and say so in their documentation.
    """

    identity: str | None = None
    track_id: str | None = None
    cameras: Sequence[str | int] | None = None
    since: float | None = None
    until: float | None = None
    older_than: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", _label(self.identity, "identity"))
        object.__setattr__(self, "track_id", _label(self.track_id, "track_id"))
        object.__setattr__(self, "cameras", _camera_list(self.cameras, "cameras"))
        for name in ("since", "until", "older_than"):
            object.__setattr__(self, name, _timestamp(getattr(self, name), name))
        if self.since is not None and self.until is not None and self.since > self.until:
            raise GalleryError(f"since ({self.since}) is after until ({self.until})")
        if self.is_empty():
            raise GalleryError("an erasure needs at least one condition (identity, track_id, cameras, time range)")

    def is_empty(self) -> bool:
        return all(
            getattr(self, name) is None for name in ("identity", "track_id", "cameras", "since", "until", "older_than")
        )


@dataclass(frozen=True)
class Filters:
    """What a search may return. Every condition that is set must hold (AND).

    - ``modality``: only this modality (0/1 or the names); None for both.
    - ``cameras`` / ``exclude_cameras``: camera ids (str or int) to keep / to drop. An empty ``cameras``
      list matches nothing.
    - ``since`` / ``until``: inclusive bounds on the timestamp (epoch seconds); items without a
      timestamp never match a time bound.
    - ``has_identity``: True for items with an identity label, False for those without.
    """

    modality: int | str | None = None
    cameras: Sequence[str | int] | None = None
    exclude_cameras: Sequence[str | int] | None = None
    since: float | None = None
    until: float | None = None
    has_identity: bool | None = None

    def __post_init__(self) -> None:
        if self.modality is not None:
            object.__setattr__(self, "modality", parse_modality(self.modality, "filters.modality"))
        object.__setattr__(self, "cameras", _camera_list(self.cameras, "filters.cameras"))
        object.__setattr__(self, "exclude_cameras", _camera_list(self.exclude_cameras, "filters.exclude_cameras"))
        since = _timestamp(self.since, "filters.since")
        until = _timestamp(self.until, "filters.until")
        if since is not None and until is not None and since > until:
            raise GalleryError(f"filters.since ({since}) is after filters.until ({until})")
        object.__setattr__(self, "since", since)
        object.__setattr__(self, "until", until)
        if self.has_identity is not None and not isinstance(self.has_identity, (bool, np.bool_)):
            raise GalleryError(f"filters.has_identity must be a boolean, got {self.has_identity!r}")

    def is_empty(self) -> bool:
        """True when the filters let every item through."""
        return (
            self.modality is None
            and self.cameras is None
            and self.exclude_cameras is None
            and self.since is None
            and self.until is None
            and self.has_identity is None
        )

    def matches(self, item: Item) -> bool:
        """Whether one item passes (the reference semantics that the back-ends implement in bulk)."""
        if self.modality is not None and item.modality != self.modality:
            return False
        if self.cameras is not None and item.camera not in self.cameras:
            return False
        if self.exclude_cameras is not None and item.camera in self.exclude_cameras:
            return False
        if self.since is not None and (item.timestamp is None or item.timestamp < self.since):
            return False
        if self.until is not None and (item.timestamp is None or item.timestamp > self.until):
            return False
        return self.has_identity is None or (item.identity is not None) == bool(self.has_identity)


@dataclass(frozen=True)
class SearchHit:
    """One search result: the item's id, its inner-product score with the query, and the item."""

    id: int
    score: float
    item: Item


@dataclass(frozen=True)
class AddResult:
    """What ``add`` did: the ids in input order, and how many items were new vs already stored."""

    ids: list[int]
    created: int
    existing: int


def trusted_item(
    *,
    id: int | None,
    vector: np.ndarray | None,
    modality: int,
    camera: str | None,
    external_id: str | None,
    timestamp: float | None,
    track_id: str | None,
    identity: str | None,
    metadata: dict[str, Any],
) -> Item:
    """Build an :class:`Item` from values a back-end already validated when they were stored.

    Skips ``__post_init__``: re-validating every hit of a top-1000 search costs more than the search.
    """
    item = Item.__new__(Item)
    item.__dict__.update(
        vector=vector,
        modality=int(modality),
        camera=camera,
        external_id=external_id,
        timestamp=timestamp,
        track_id=track_id,
        identity=identity,
        metadata=metadata,
        id=id,
    )
    return item


#: The fields ``update`` may change; the vector and modality define the embedding (re-add instead).
UPDATABLE_FIELDS = ("camera", "timestamp", "track_id", "identity", "metadata")


def normalize_update(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate the fields of an ``update`` call the same way :class:`Item` validates them."""
    unknown = set(fields) - set(UPDATABLE_FIELDS)
    if unknown:
        raise GalleryError(
            f"cannot update {', '.join(sorted(unknown))}; updatable fields: {', '.join(UPDATABLE_FIELDS)}"
        )
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "timestamp":
            out[name] = _timestamp(value)
        elif name == "metadata":
            out[name] = _metadata(value)
        else:
            out[name] = _label(value, name)
    return out
