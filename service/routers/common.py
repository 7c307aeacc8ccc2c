"""Pieces the routers share: documented error answers, the item id path parameter, item bodies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from fastapi import Path as PathParam

from clipmc.export import EmbedderError
from clipmc.gallery import Item, SearchHit
from clipmc.model.calibration import Calibration
from clipmc.service import schemas
from clipmc.service.auth import require
from clipmc.service.errors import InputError

# Gallery ids are positive SQLite / Milvus int64 keys: a larger number is a 422 here, not an overflow deeper down.
ItemId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="gallery item id")]

#: Scope dependencies, for a route's ``dependencies=[...]``.
QUERY_SCOPE = Depends(require("query"))
INGEST_SCOPE = Depends(require("ingest"))
ADMIN_SCOPE = Depends(require("admin"))

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": text}
    for status, text in (
        (401, "missing or invalid API key"),
        (403, "the API key lacks the scope"),
        (413, "body, image or file count too large"),
        (415, "unsupported content type or image format"),
        (422, "invalid field or image"),
        (503, "not ready, overloaded or shutting down"),
    )
}


def item_dict(item: Item, item_id: int) -> dict[str, Any]:
    """An item as the API shows it (``ItemResponse``)."""
    return {
        "id": int(item_id),
        "external_id": item.external_id,
        "modality": schemas.MODALITY_NAMES[int(item.modality)],
        "camera": item.camera,
        "timestamp": item.timestamp,
        "track_id": item.track_id,
        "identity": item.identity,
        "metadata": item.metadata,
    }


def result_dict(hit: SearchHit) -> dict[str, Any]:
    """A search hit as the API shows it (``QueryResult``)."""
    return {**item_dict(hit.item, hit.id), "score": float(hit.score)}


def calibration_summary(calibration: Calibration) -> dict[str, Any]:
    """The decision rule of a calibration as responses and /readyz show it (``CalibrationSummary``)."""
    return {
        "threshold": float(calibration.threshold),
        "target_fmr": float(calibration.target_fmr),
        "fmr_at_threshold": getattr(calibration, "fmr_at_threshold", None),
        "tmr_at_threshold": float(calibration.tmr_at_threshold),
        "embedding_version": calibration.embedding_version,
    }


def body_doc(json_model: str, form_schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI request body of a route that reads multipart or JSON by hand."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model}"}},
            },
        }
    }


def check_cameras(embedder: Any, cameras: list[str | None]) -> None:
    """The crops' camera names against the model's camera map, before they are queued: a name the
    model cannot embed (unknown, and no unknown-camera index) is a 422 `unknown_camera`. Models without
    a camera input (and embedders without a camera map) accept any camera: it does not enter the vector."""
    prepare = getattr(embedder, "prepare_camera", None)
    if prepare is None:
        return
    try:
        prepare(cameras, len(cameras))
    except EmbedderError as exc:
        raise InputError(str(exc), "unknown_camera") from None
