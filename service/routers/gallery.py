"""``/gallery/...``: ingest crops, read, delete, thumbnails, stats."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from clipmc.gallery import BaseGallery, EraseFilter, Item
from clipmc.service import schemas
from clipmc.service.bodies import decode_many, parse_ingest, parse_json_model
from clipmc.service.errors import APIError
from clipmc.service.maintenance import erase_ids, erase_matching
from clipmc.service.routers.common import (
    ADMIN_SCOPE,
    ERRORS,
    INGEST_SCOPE,
    QUERY_SCOPE,
    ItemId,
    body_doc,
    check_cameras,
    item_dict,
)
from clipmc.service.state import ReadyService, ServiceState, get_state, open_gallery_state, ready_service

log = logging.getLogger("clipmc.service")

router = APIRouter(prefix="/gallery", tags=["gallery"])


@router.post(
    "/ingest",
    summary="add crops with their metadata (all or nothing; idempotent on external_id)",
    response_model=schemas.IngestResponse,
    responses={**ERRORS, 409: {"model": schemas.ErrorResponse, "description": "embedding version mismatch"}},
    dependencies=[INGEST_SCOPE],
    openapi_extra=body_doc("IngestJSON", schemas.INGEST_FORM_SCHEMA),
)
async def ingest(request: Request, service: ReadyService = Depends(ready_service)) -> Any:
    state, embedder, gallery, batcher = service
    entries = await parse_ingest(request, state.settings)
    thumb_size = state.settings.thumbnail_size if state.thumbnails is not None else None
    decoded = await run_in_threadpool(decode_many, entries, state.limits, embedder.image_size, thumb_size)
    crops = np.stack([d.crop for d in decoded])
    modalities = [schemas.MODALITY_CODES[meta.modality] for meta, _, _ in entries]
    cameras = [meta.camera for meta, _, _ in entries]
    check_cameras(embedder, cameras)
    vectors = await batcher.embed(crops, modalities, cameras)
    items = [
        Item(
            vector=vector,
            modality=meta.modality,
            camera=meta.camera,
            external_id=meta.external_id,
            timestamp=meta.timestamp,
            track_id=meta.track_id,
            identity=meta.identity,
            metadata=meta.metadata or {},
        )
        for (meta, _, _), vector in zip(entries, vectors, strict=True)
    ]
    result = await run_in_threadpool(gallery.add, items, embedding_version=embedder.embedding_version)
    if state.thumbnails is not None:
        await run_in_threadpool(
            _put_thumbnails, state, gallery, [(i, d.thumbnail) for i, d in zip(result.ids, decoded, strict=True)]
        )
    if result.created:
        stats = await run_in_threadpool(gallery.stats)
        state.metrics.gallery_items.set(stats["count"])
    log.info("ingested %d crops: %d new, %d already stored", len(items), result.created, result.existing)
    return {"ids": [int(i) for i in result.ids], "created": result.created, "existing": result.existing}


@router.get(
    "/items/{item_id}",
    summary="one item's metadata",
    response_model=schemas.ItemResponse,
    responses={404: {"model": schemas.ErrorResponse}, **ERRORS},
    dependencies=[QUERY_SCOPE],
)
async def get_item(item_id: ItemId, gallery: BaseGallery = Depends(open_gallery_state)) -> Any:
    item = await run_in_threadpool(gallery.get, item_id, with_vector=False)
    if item is None:
        raise APIError(404, "not_found", f"no gallery item with id {item_id}")
    return item_dict(item, item_id)


@router.get(
    "/items/{item_id}/thumbnail",
    summary="the item's JPEG thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": schemas.ErrorResponse}},
    dependencies=[QUERY_SCOPE],
)
async def get_thumbnail(item_id: ItemId, state: ServiceState = Depends(get_state)) -> Response:
    data = await run_in_threadpool(state.thumbnails.get, item_id) if state.thumbnails is not None else None
    if data is None:
        raise APIError(404, "not_found", f"no thumbnail for gallery item {item_id}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.delete(
    "/items/{item_id}",
    summary="remove an item",
    response_model=schemas.DeleteResponse,
    responses={404: {"model": schemas.ErrorResponse}, **ERRORS},
    dependencies=[INGEST_SCOPE],
)
async def delete_item(
    item_id: ItemId,
    state: ServiceState = Depends(get_state),
    gallery: BaseGallery = Depends(open_gallery_state),
) -> Any:
    removed = await run_in_threadpool(erase_ids, state, gallery, [item_id], "delete")
    if not removed:
        raise APIError(404, "not_found", f"no gallery item with id {item_id}")
    return {"id": item_id, "deleted": True}


@router.post(
    "/erase",
    summary="delete every item matching a filter (identity, track, cameras, time range)",
    response_model=schemas.EraseResponse,
    responses=ERRORS,
    dependencies=[ADMIN_SCOPE],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EraseRequest"}}},
        }
    },
)
async def erase(
    request: Request,
    state: ServiceState = Depends(get_state),
    gallery: BaseGallery = Depends(open_gallery_state),
) -> Any:
    body = await parse_json_model(request, schemas.EraseRequest)
    criteria = EraseFilter(
        identity=body.identity, track_id=body.track_id, cameras=body.cameras, since=body.since, until=body.until
    )
    deleted = await run_in_threadpool(erase_matching, state, gallery, criteria, "filter")
    return {"deleted": deleted, "compaction_within_s": state.settings.maintenance_interval_s}


def _put_thumbnails(state: ServiceState, gallery: BaseGallery, pairs: list[tuple[int, bytes | None]]) -> None:
    """Write the thumbnails, then drop those whose item was deleted meanwhile.

    A DELETE removes the item, then its thumbnail; this writes the thumbnail, then checks the item.
    Whichever order the two interleave in, no thumbnail outlives its item.
    """
    assert state.thumbnails is not None
    state.thumbnails.put_many(pairs)
    for item_id, _ in pairs:
        if gallery.get(item_id, with_vector=False) is None:
            state.thumbnails.delete(item_id)


@router.get(
    "/stats",
    summary="gallery counts and the served model",
    responses=ERRORS,
    dependencies=[QUERY_SCOPE],
)
async def gallery_stats(
    state: ServiceState = Depends(get_state), gallery: BaseGallery = Depends(open_gallery_state)
) -> Any:
    stats = await run_in_threadpool(gallery.stats)
    out = jsonable_encoder(stats)
    if state.embedder is not None:
        out["model"] = state.embedder.describe()
    out["batching"] = {
        "max_batch": state.settings.max_batch,
        "max_wait_ms": state.settings.max_wait_ms,
        "queue_depth": state.batcher.depth if state.batcher is not None else 0,
    }
    return JSONResponse(out)
