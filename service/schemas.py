"""Request and response shapes (DESIGN.md section 8): clients and tests rely on them, keep them.

The request models validate both content types of an endpoint: the multipart form fields (after
splitting comma lists) and the JSON body go through the same model, so both get the same checks and
the same error messages.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from clipmc.contract import MAX_TOP_K, MODALITY_ALIASES, MODALITY_NAMES
from clipmc.gallery.errors import GalleryError
from clipmc.gallery.items import check_metadata_shape

#: The capture times an ingested crop may carry (epoch seconds): 1970-01-01 to 2100-01-01 UTC. A value
#: outside is almost always another unit (milliseconds, microseconds), which would sort and filter
#: wrongly and which browsers cannot show as a date.
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 4_102_444_800.0


def _canonical_modality(value: Any) -> Any:
    """Any spelling of clipmc.contract (``ir``, ``rgb``, ``1``, ...) -> its canonical name; other values pass
    through for the Literal to refuse with its usual message."""
    if isinstance(value, str) and value.strip().lower() in MODALITY_ALIASES:
        return MODALITY_NAMES[MODALITY_ALIASES[value.strip().lower()]]
    return value


#: A modality as requests spell it (every alias of clipmc.contract) and responses say it (canonical).
Modality = Annotated[Literal["visible", "infrared"], BeforeValidator(_canonical_modality)]
#: Most crops one tracklet query may send (their embedding is one batch); more is a 413.
MAX_TRACKLET_CROPS = 32
#: canonical name -> code
MODALITY_CODES: dict[str, int] = {name: code for code, name in MODALITY_NAMES.items()}


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a number, a numeric string or ISO 8601 (a naive time is taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected epoch seconds or an ISO 8601 time, got a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            ts = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            ts = moment.timestamp()
    else:
        raise ValueError(f"expected epoch seconds or an ISO 8601 time, got {type(value).__name__}")
    if not math.isfinite(ts):
        raise ValueError("time must be finite")
    return ts


def _label(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a string or an integer, got a boolean")
    return str(value) if isinstance(value, int) else value


def _camera_list(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
        return value or None
    if isinstance(value, (list, tuple)):
        return [_label(v) for v in value]
    return value


class QueryParams(BaseModel):
    """Fields of ``POST /query`` (multipart form fields or a JSON body)."""

    model_config = ConfigDict(extra="forbid")

    modality: Modality = Field("infrared", description="modality of the query crop")
    camera: str | None = Field(
        None, max_length=256, description="the query crop's camera (models with a camera input; none: unknown camera)"
    )
    target_modality: Literal["opposite", "visible", "infrared", "any"] = Field(
        "opposite", description="which gallery items to search"
    )
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)
    cameras: list[str] | None = Field(None, description="only these cameras (comma list in multipart)")
    exclude_cameras: list[str] | None = Field(None, description="not these cameras (comma list in multipart)")
    since: float | None = Field(None, description="epoch seconds or ISO 8601 (inclusive)")
    until: float | None = Field(None, description="epoch seconds or ISO 8601 (inclusive)")
    group_by: Literal["none", "track"] = Field(
        "none", description="'track': one result per gallery track (camera + track_id), its best crop"
    )
    rerank: Literal["none", "k-reciprocal", "aqe"] = Field(
        "none",
        description="re-rank the best max(top_k, 100) candidates with their stored vectors: k-reciprocal "
        "(k1 20, k2 6, lambda 0.3) or average query expansion (k 5); the response labels it",
    )

    @field_validator("cameras", "exclude_cameras", mode="before")
    @classmethod
    def _cameras(cls, value: Any) -> Any:
        return _camera_list(value)

    @field_validator("camera", mode="before")
    @classmethod
    def _camera(cls, value: Any) -> Any:
        return _label(value)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _times(cls, value: Any) -> float | None:
        return parse_time(value)

    @model_validator(mode="after")
    def _range(self) -> QueryParams:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until")
        return self

    def target_code(self) -> int | None:
        """Gallery modality to search (None: both)."""
        if self.target_modality == "any":
            return None
        if self.target_modality == "opposite":
            return 1 - MODALITY_CODES[self.modality]
        return MODALITY_CODES[self.target_modality]


class QueryJSON(QueryParams):
    """``POST /query`` as JSON: the same fields plus the crop, or a tracklet's crops, in base64."""

    image_base64: str | None = Field(None, description="the crop (JPEG, PNG, ...) in base64, or a data: URL")
    images_base64: list[str] | None = Field(
        None,
        min_length=1,
        description=f"several crops of one person (a tracklet, at most {MAX_TRACKLET_CROPS}), searched with "
        "their fused feature; instead of image_base64",
    )

    @model_validator(mode="after")
    def _one_source(self) -> QueryJSON:
        if (self.image_base64 is None) == (self.images_base64 is None):
            raise ValueError("send either image_base64 (one crop) or images_base64 (a tracklet's crops)")
        return self

    def crops_base64(self) -> list[str]:
        """The crop(s) to embed, in order."""
        return [self.image_base64] if self.image_base64 is not None else list(self.images_base64 or [])


class IngestItem(BaseModel):
    """One crop's metadata in ``POST /gallery/ingest``."""

    model_config = ConfigDict(extra="forbid")

    external_id: str | None = Field(None, max_length=512, description="idempotency key (e.g. a file path)")
    modality: Modality
    camera: str | None = Field(None, max_length=256)
    timestamp: float | None = Field(None, description="epoch seconds or ISO 8601")
    track_id: str | None = Field(None, max_length=256)
    identity: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] | None = None

    @field_validator("external_id", "camera", "track_id", "identity", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return _label(value)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _time(cls, value: Any) -> float | None:
        ts = parse_time(value)
        if ts is not None and not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:
            raise ValueError(
                f"timestamp {ts:g} is outside 1970-01-01..2100-01-01 in epoch seconds "
                f"({MIN_TIMESTAMP:.0f}..{MAX_TIMESTAMP:.0f}); milliseconds or microseconds?"
            )
        return ts

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_shape(cls, value: Any) -> Any:
        # Before pydantic walks it: bounded depth and key count (the byte size is the gallery's check).
        if isinstance(value, dict):
            try:
                check_metadata_shape(value)
            except GalleryError as exc:
                raise ValueError(str(exc)) from None
        return value


class IngestItemJSON(IngestItem):
    image_base64: str = Field(..., description="the crop in base64, or a data: URL")


class IngestJSON(BaseModel):
    """``POST /gallery/ingest`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    items: list[IngestItemJSON] = Field(..., min_length=1)


class IngestResponse(BaseModel):
    ids: list[int] = Field(
        description="gallery ids, in the order of the request's items; below 2**53 with either back-end, so "
        "exact as JavaScript numbers"
    )
    created: int
    existing: int


class ItemResponse(BaseModel):
    id: int = Field(description="gallery id, below 2**53 (exact as a JavaScript number) with either back-end")
    external_id: str | None
    modality: Modality
    camera: str | None
    timestamp: float | None
    track_id: str | None
    identity: str | None
    metadata: dict[str, Any]


class QueryResult(ItemResponse):
    """A gallery item with its score (inner product with the query, higher is closer).

    The optional fields appear only when they apply (the single-crop answer is unchanged without them).
    """

    score: float
    match_probability: float | None = Field(
        None, description="calibrated same-person probability; only with a calibration loaded"
    )
    is_match: bool | None = Field(None, description="score >= the calibration's threshold; only with a calibration")
    rerank_distance: float | None = Field(None, description="re-ranked distance (smaller is closer); only with rerank")
    track_crops: int | None = Field(
        None, description="with group_by=track: how many of this track's crops were among the candidates"
    )


class CalibrationSummary(BaseModel):
    """The decision rule of the loaded calibration (fitted on validation identities by clipmc calibrate)."""

    threshold: float
    target_fmr: float = Field(description="false-match rate the threshold was chosen for (validation pairs)")
    fmr_at_threshold: float | None = Field(description="false-match rate measured at the threshold (validation)")
    tmr_at_threshold: float = Field(description="true-match rate measured at the threshold (validation)")
    embedding_version: str


class RerankSummary(BaseModel):
    kind: Literal["k-reciprocal", "aqe"]
    label: str = Field(description="what the results are: re-ranked, and how")
    candidates: int = Field(description="how many retrieved candidates were re-ranked")
    parameters: dict[str, Any]


class QueryResponse(BaseModel):
    """The answer of ``POST /query``; the optional fields appear only when the request or service uses them."""

    query_modality: Modality
    results: list[QueryResult] = Field(description="best first")
    took_ms: float
    query_crops: int | None = Field(None, description="crops fused into the query (a tracklet query)")
    group_by: Literal["track"] | None = None
    rerank: RerankSummary | None = Field(None, description="present when the results are re-ranked")
    calibration: CalibrationSummary | None = Field(None, description="present when a calibration is loaded")


class DeleteResponse(BaseModel):
    id: int
    deleted: bool


class EraseRequest(BaseModel):
    """``POST /gallery/erase``: every item matching all the given conditions is deleted (at least one)."""

    model_config = ConfigDict(extra="forbid")

    identity: str | None = Field(None, max_length=256)
    track_id: str | None = Field(None, max_length=256)
    cameras: list[str] | None = Field(None, description="camera ids")
    since: float | None = Field(None, description="epoch seconds or ISO 8601 (inclusive, capture time)")
    until: float | None = Field(None, description="epoch seconds or ISO 8601 (inclusive, capture time)")

    @field_validator("identity", "track_id", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return _label(value)

    @field_validator("cameras", mode="before")
    @classmethod
    def _cameras(cls, value: Any) -> Any:
        return _camera_list(value)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _times(cls, value: Any) -> float | None:
        return parse_time(value)

    @model_validator(mode="after")
    def _some_condition(self) -> EraseRequest:
        if all(getattr(self, name) is None for name in ("identity", "track_id", "cameras", "since", "until")):
            raise ValueError("give at least one of identity, track_id, cameras, since, until")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until")
        return self


class EraseResponse(BaseModel):
    deleted: int = Field(description="items deleted now; their vectors leave the disk at the next compaction")
    compaction_within_s: float = Field(description="the documented bound for the vectors to leave every file")


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(None, description="on 500 and 503 storage errors: the id in the server log")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Multipart bodies, for the OpenAPI document only (the handlers read the form themselves).
QUERY_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "maxItems": MAX_TRACKLET_CROPS,
            "description": "the query crop, or several crops of one person (a tracklet: repeat the part)",
        },
        "modality": {"type": "string", "enum": ["infrared", "visible"], "default": "infrared"},
        "camera": {"type": "string", "description": "the crop's camera (models with a camera input)"},
        "target_modality": {
            "type": "string",
            "enum": ["opposite", "visible", "infrared", "any"],
            "default": "opposite",
        },
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 10},
        "cameras": {"type": "string", "description": "comma-separated camera ids"},
        "exclude_cameras": {"type": "string", "description": "comma-separated camera ids"},
        "since": {"type": "string", "description": "epoch seconds or ISO 8601"},
        "until": {"type": "string", "description": "epoch seconds or ISO 8601"},
        "group_by": {"type": "string", "enum": ["none", "track"], "default": "none"},
        "rerank": {"type": "string", "enum": ["none", "k-reciprocal", "aqe"], "default": "none"},
    },
}

INGEST_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["images", "items"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "the crops"},
        "items": {
            "type": "string",
            "description": "JSON array of IngestItem objects, one per image, in the same order",
        },
    },
}
