"""``POST /query``: embed a crop (through the dynamic batcher) and search the gallery."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from clipmc.gallery import Filters
from clipmc.service import schemas
from clipmc.service.bodies import parse_query
from clipmc.service.images import decode_image
from clipmc.service.routers.common import ERRORS, QUERY_SCOPE, body_doc, result_dict
from clipmc.service.state import ReadyService, ready_service

router = APIRouter(tags=["search"])


@router.post(
    "/query",
    summary="find the gallery sightings of the person in a crop",
    response_model=schemas.QueryResponse,
    responses=ERRORS,
    dependencies=[QUERY_SCOPE],
    openapi_extra=body_doc("QueryJSON", schemas.QUERY_FORM_SCHEMA),
)
async def query(request: Request, service: ReadyService = Depends(ready_service)) -> Any:
    start = time.perf_counter()
    state, embedder, gallery, batcher = service
    params, data = await parse_query(request, state.settings)
    decoded = await run_in_threadpool(decode_image, data, state.limits, embedder.image_size, what="image")
    query_code = schemas.MODALITY_CODES[params.modality]
    vector = (await batcher.embed(decoded.crop[None], [query_code]))[0]
    filters = Filters(
        modality=params.target_code(),
        cameras=params.cameras,
        exclude_cameras=params.exclude_cameras,
        since=params.since,
        until=params.until,
    )
    search_start = time.perf_counter()
    if state.searcher is not None:  # concurrent requests' searches coalesce into one batched search
        hits = await state.searcher.search(vector, params.top_k, filters)
    else:
        hits = (await run_in_threadpool(gallery.search, vector, params.top_k, filters))[0]
    state.metrics.search_latency.observe(time.perf_counter() - search_start)
    return {
        "query_modality": params.modality,
        "results": [result_dict(hit) for hit in hits],
        "took_ms": round((time.perf_counter() - start) * 1000.0, 3),
    }
