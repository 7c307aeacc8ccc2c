"""Operations: the web page, liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from clipmc.service import schemas
from clipmc.service.auth import require
from clipmc.service.errors import APIError
from clipmc.service.routers.common import calibration_summary
from clipmc.service.state import ServiceState, get_state

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The web page loads nothing from elsewhere; thumbnails arrive as blob: URLs (fetched with the key).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

router = APIRouter(tags=["operations"])


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/healthz", summary="the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="model warmed up at its micro-batch sizes and gallery loaded",
    responses={503: {"model": schemas.ErrorResponse, "description": "not ready yet"}},
)
async def readyz(state: ServiceState = Depends(get_state)) -> Any:
    if not state.ready or state.embedder is None:
        raise APIError(503, "not_ready", state.status, {"Retry-After": "2"})
    calibration = calibration_summary(state.calibration) if state.calibration is not None else None
    # "calibration": null says the service answers without match_probability / is_match
    return {"status": "ready", "embedder": state.embedder.describe(), "calibration": calibration}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, state: ServiceState = Depends(get_state)) -> Response:
    if state.settings.metrics_require_auth:
        require("admin")(request, None)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
