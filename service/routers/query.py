"""``POST /query``: embed a crop or a tracklet's crops (through the dynamic batcher) and search the gallery.

The steps between the vectors and the answer (tracklet fusion, re-ranking, grouping by track) live in
:mod:`clipmc.service.search`; this route adds the calibrated probabilities when a calibration is loaded.
Fields that do not apply are left out of the answer, so a single-crop query without options gets the
shape of DESIGN.md section 8 unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from clipmc.gallery import Filters, SearchHit
from clipmc.model.rerank import RerankConfig
from clipmc.service import schemas
from clipmc.service.bodies import parse_query
from clipmc.service.errors import InputError
from clipmc.service.images import decode_image
from clipmc.service.routers.common import (
    ERRORS,
    QUERY_SCOPE,
    body_doc,
    calibration_summary,
    check_cameras,
    result_dict,
)
from clipmc.service.search import fuse_tracklet, search_query
from clipmc.service.state import ReadyService, ready_service

router = APIRouter(tags=["search"])


@router.post(
    "/query",
    summary="find the gallery sightings of the person in a crop, or in several crops of one person",
    response_model=schemas.QueryResponse,
    response_model_exclude_unset=True,  # optional fields appear only when they apply
    responses=ERRORS,
    dependencies=[QUERY_SCOPE],
    openapi_extra=body_doc("QueryJSON", schemas.QUERY_FORM_SCHEMA),
)
async def query(request: Request, service: ReadyService = Depends(ready_service)) -> Any:
    start = time.perf_counter()
    state, embedder, gallery, batcher = service
    params, datas, labels = await parse_query(request, state.settings)
    crops = await run_in_threadpool(_decode_all, datas, labels, state.limits, embedder.image_size)
    query_code = schemas.MODALITY_CODES[params.modality]
    check_cameras(embedder, [params.camera])
    vectors = await batcher.embed(crops, [query_code] * len(crops), [params.camera] * len(crops))
    try:
        vector = fuse_tracklet(vectors)
    except ValueError as exc:
        raise InputError(str(exc), "invalid_tracklet") from None
    filters = Filters(
        modality=params.target_code(),
        cameras=params.cameras,
        exclude_cameras=params.exclude_cameras,
        since=params.since,
        until=params.until,
    )
    rerank = RerankConfig(kind=params.rerank) if params.rerank != "none" else None

    async def search(n: int, with_vectors: bool) -> list[SearchHit]:
        if state.searcher is not None and not with_vectors:  # concurrent searches coalesce into one batch
            return await state.searcher.search(vector, n, filters)
        return (await run_in_threadpool(gallery.search, vector, n, filters, with_vectors=with_vectors))[0]

    search_start = time.perf_counter()
    outcome = await search_query(
        search, vector, params.top_k, rerank=rerank, group_by_track_=params.group_by == "track"
    )
    state.metrics.search_latency.observe(time.perf_counter() - search_start)

    results = []
    for ranked in outcome.results:
        entry = result_dict(ranked.hit)
        if ranked.rerank_distance is not None:
            entry["rerank_distance"] = ranked.rerank_distance
        if ranked.track_crops is not None:
            entry["track_crops"] = ranked.track_crops
        results.append(entry)
    body: dict[str, Any] = {"query_modality": params.modality, "results": results}
    calibration = state.calibration
    if calibration is not None and results:
        scores = np.array([r["score"] for r in results], np.float64)
        for entry, p, match in zip(results, calibration.probability(scores), calibration.is_match(scores), strict=True):
            entry["match_probability"] = round(float(p), 6)
            entry["is_match"] = bool(match)
    if calibration is not None:
        body["calibration"] = calibration_summary(calibration)
    if len(crops) > 1:
        body["query_crops"] = len(crops)
    if params.group_by == "track":
        body["group_by"] = "track"
    if rerank is not None:
        body["rerank"] = {
            "kind": rerank.kind,
            "label": rerank.label,
            "candidates": outcome.candidates,
            "parameters": _rerank_parameters(rerank),
        }
    body["took_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
    return body


def _decode_all(datas: list[bytes], labels: list[str], limits: Any, size: tuple[int, int]) -> np.ndarray:
    """Decode and check every crop (the first bad one is a 4xx naming it), stacked uint8 [N, H, W, 3]."""
    return np.stack([decode_image(d, limits, size, what=label).crop for d, label in zip(datas, labels, strict=True)])


def _rerank_parameters(config: RerankConfig) -> dict[str, Any]:
    if config.kind == "aqe":
        return {"aqe_k": config.aqe_k}
    return {"k1": config.k1, "k2": config.k2, "lambda": config.lambda_value}
