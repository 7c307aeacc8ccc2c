"""The FastAPI application (DESIGN.md section 8).

``create_app(settings, embedder=None, gallery=None)`` builds one app from one settings object; what
is not passed in is built from the settings when the app starts (``clipmc serve`` builds both first,
so that configuration errors end the command with one line instead of a traceback). Everything the
routes need lives on ``app.state.service`` (:mod:`clipmc.service.state`); the routes are three
APIRouters (:mod:`clipmc.service.routers`: search, gallery, operations) that receive it through
dependencies. No module-level state, so tests run several apps side by side.

Start-up: the gallery is opened and checked against the model's ``embedding_version`` (a mismatch
refuses to start), the calibration is loaded and checked against it too (``calibration`` setting, else
the checkpoint directory's ``calibration.json``, else none), the dynamic batcher starts, and the model
is warmed up at its micro-batch sizes in the background; ``/readyz`` says 503 until that is done, and
/query and /gallery/ingest answer 503 ``not_ready`` meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from clipmc.export import Embedder, create_embedder
from clipmc.gallery import BaseGallery, IndexConfig, open_gallery
from clipmc.model.calibration import Calibration, CalibrationError, find_calibration, load_calibration
from clipmc.service import schemas
from clipmc.service.auth import FailedAuthLimiter, KeyRing, LoopbackOnlyMiddleware
from clipmc.service.batching import DynamicBatcher
from clipmc.service.errors import install_error_handlers
from clipmc.service.images import ImageLimits
from clipmc.service.limits import BodySizeLimitMiddleware
from clipmc.service.maintenance import maintenance_loop
from clipmc.service.metrics import Metrics, MetricsMiddleware
from clipmc.service.routers import gallery_router, operations_router, query_router
from clipmc.service.routers.operations import STATIC_DIR
from clipmc.service.search_batching import SearchBatcher
from clipmc.service.settings import Settings
from clipmc.service.state import ServiceState
from clipmc.service.thumbnails import ThumbnailStore

log = logging.getLogger("clipmc.service")


def build_embedder(settings: Settings) -> Embedder:
    """The embedder the settings name (may download "openai" weights on a connected machine)."""
    return create_embedder(
        settings.backend,
        settings.weights,
        device=settings.device,
        precision=settings.precision,
        batch_sizes=settings.batch_sizes,
        engine_dir=settings.engine_dir,
    )


def open_service_gallery(settings: Settings, embedder: Embedder) -> BaseGallery:
    """Open (or create) the gallery for this model; another embedding_version refuses to open."""
    location = settings.milvus_uri if settings.gallery_backend == "milvus" and settings.milvus_uri else settings.gallery
    options: dict[str, Any] = {}
    if settings.gallery_backend == "faiss":
        options["index"] = IndexConfig(
            exact_scan=settings.gallery_exact_scan,
            batch_scan=settings.gallery_batch_scan,
            ivf_scan=settings.gallery_ivf_scan,
        )
    return open_gallery(location, embedder.embedding_dim, embedder.embedding_version,
                        backend=settings.gallery_backend, **options)  # fmt: skip


def check_compatible(embedder: Embedder, gallery: BaseGallery) -> None:
    """Refuse to serve a gallery built by another model: its vectors would silently not match."""
    if gallery.embedding_version != embedder.embedding_version:
        raise ValueError(
            f"the gallery holds vectors of embedding_version {gallery.embedding_version!r} but the model "
            f"produces {embedder.embedding_version!r}: serve it with the model that built it, or use another "
            "gallery directory (--gallery / CLIPMC_GALLERY) and re-ingest"
        )
    if int(gallery.dim) != int(embedder.embedding_dim):
        raise ValueError(f"the gallery holds {gallery.dim}-d vectors, the model produces {embedder.embedding_dim}-d")


def load_service_calibration(settings: Settings, embedder: Embedder) -> Calibration | None:
    """The calibration to serve with: the ``calibration`` setting, else the checkpoint directory's, else None.

    Raises:
        CalibrationError: the file is unreadable or malformed, or was fitted for another
            ``embedding_version`` (its probabilities would describe another model's similarities).
    """
    if settings.calibration is not None:
        calibration = load_calibration(settings.calibration)
        where = str(settings.calibration)
    else:
        calibration = find_calibration(settings.weights)
        where = f"{settings.weights}/calibration.json"
    if calibration is not None and calibration.embedding_version != embedder.embedding_version:
        raise CalibrationError(
            f"the calibration {where} was fitted for embedding_version {calibration.embedding_version!r} but the "
            f"model produces {embedder.embedding_version!r}: run clipmc calibrate for this model, or serve without it"
        )
    return calibration


def create_app(
    settings: Settings,
    embedder: Embedder | None = None,
    gallery: BaseGallery | None = None,
    *,
    calibration: Calibration | Literal["settings"] | None = "settings",
) -> FastAPI:
    """The service for these settings; ``embedder`` / ``gallery`` are built at start-up if not given.

    Args:
        calibration: a loaded calibration (or None for none); by default it is found from the settings at
            start-up by :func:`load_service_calibration`.
    """
    if embedder is not None and gallery is not None:
        check_compatible(embedder, gallery)
    if (
        isinstance(calibration, Calibration)
        and embedder is not None
        and calibration.embedding_version != embedder.embedding_version
    ):
        raise CalibrationError(
            f"the calibration was fitted for embedding_version {calibration.embedding_version!r}, "
            f"the model produces {embedder.embedding_version!r}"
        )
    state = ServiceState(
        settings=settings,
        keyring=KeyRing(settings.api_keys),
        metrics=Metrics(),
        limits=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            formats=settings.image_formats,
        ),
        embedder=embedder,
        gallery=gallery,
        calibration=None if calibration == "settings" else calibration,
        calibration_resolved=calibration != "settings",
        thumbnails=ThumbnailStore(settings.thumbnails_path),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(state)
        try:
            yield
        finally:
            await _stop(state)

    # FastAPIOffline serves Swagger UI and ReDoc from packaged files: /docs works on an air-gapped host.
    app = FastAPIOffline(
        title="CLIP-MC re-identification service",
        summary="Visible-infrared person re-identification: query a crop, get the matching sightings.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = state
    app.state.keyring = state.keyring
    app.state.auth_limiter = FailedAuthLimiter(settings.auth_failure_limit, settings.auth_failure_window_s)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    if not state.keyring.enabled:
        app.add_middleware(LoopbackOnlyMiddleware)  # outermost but for metrics: before reading any body
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=app.router.routes)
    app.include_router(operations_router)
    app.include_router(query_router)
    app.include_router(gallery_router)
    _customise_openapi(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory service.app:create_app_from_env`` (settings from CLIPMC_* / CLIPMC_CONFIG)."""
    return create_app(Settings())


# -- start and stop --------------------------------------------------------------------------------


async def _start(state: ServiceState) -> None:
    settings = state.settings
    if not state.keyring.enabled:
        log.warning(
            "auth is OFF: no API key configured (CLIPMC_API_KEYS); only loopback clients are served, "
            "each with every scope"
        )
    if state.embedder is None:
        state.status = "loading the model"
        state.embedder = await run_in_threadpool(build_embedder, settings)
        state.owns_embedder = True
    if state.gallery is None:
        state.status = "opening the gallery"
        state.gallery = await run_in_threadpool(open_service_gallery, settings, state.embedder)
        state.owns_gallery = True
    check_compatible(state.embedder, state.gallery)
    embedder = state.embedder
    if not state.calibration_resolved:
        state.calibration = await run_in_threadpool(load_service_calibration, settings, embedder)
        state.calibration_resolved = True
    if state.calibration is not None:
        log.info(
            "calibration loaded: threshold %.4f at a false-match rate of %g (true-match rate %.3f on validation)",
            state.calibration.threshold,
            state.calibration.target_fmr,
            state.calibration.tmr_at_threshold,
        )
    if settings.max_batch > max(embedder.batch_sizes):
        log.warning(
            "max_batch %d is larger than the embedder's largest micro-batch %d: each call is split",
            settings.max_batch,
            max(embedder.batch_sizes),
        )
    state.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipmc-embed")
    state.batcher = DynamicBatcher(
        embedder.embed,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        executor=state.executor,
        metrics=state.metrics,
    )
    state.batcher.start()
    state.searcher = SearchBatcher(state.gallery.search, max_batch=settings.search_max_batch)
    state.searcher.start()
    state.metrics.info.labels(embedder.embedding_version, embedder.backend, str(embedder.embedding_dim)).set(1)
    state.status = f"warming up the model at batch sizes {list(embedder.batch_sizes)}"
    state.warmup_task = asyncio.get_running_loop().create_task(_warm_up(state), name="clipmc-warmup")
    if not state.gallery.read_only:
        state.maintenance_task = asyncio.get_running_loop().create_task(
            maintenance_loop(state), name="clipmc-maintenance"
        )


#: Longest wait between two warm-up attempts.
WARMUP_MAX_BACKOFF_S = 60.0


async def _warm_up(state: ServiceState) -> None:
    """Warm the model up; a failure (device busy, out of memory) is retried with exponential back-off,
    and ``/readyz`` says what failed and when the next attempt is, instead of staying unready forever."""
    assert state.embedder is not None and state.executor is not None and state.gallery is not None
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    delay = state.settings.warmup_backoff_s
    attempt = 1
    while True:
        try:
            await loop.run_in_executor(state.executor, state.embedder.warmup)
            stats = await run_in_threadpool(state.gallery.stats)
            break
        except Exception as exc:
            state.status = f"warm-up attempt {attempt} failed: {exc!r}; retrying in {delay:g} s"
            log.error("warm-up attempt %d failed, retrying in %g s: %r", attempt, delay, exc, exc_info=exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, WARMUP_MAX_BACKOFF_S)
            attempt += 1
    state.metrics.gallery_items.set(stats["count"])
    state.ready = True
    state.status = "ready"
    state.metrics.ready.set(1)
    log.info(
        "ready: %s back-end, embedding_version %s, gallery of %d items; warm-up took %.1f s",
        state.embedder.backend,
        state.embedder.embedding_version,
        stats["count"],
        time.perf_counter() - start,
    )


async def _stop(state: ServiceState) -> None:
    state.ready = False
    state.metrics.ready.set(0)
    for task in (state.warmup_task, state.maintenance_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if state.batcher is not None:
        await state.batcher.stop()
    if state.searcher is not None:
        await state.searcher.stop()
    if state.executor is not None:
        await run_in_threadpool(state.executor.shutdown, True)
    if state.owns_gallery and state.gallery is not None:
        await run_in_threadpool(state.gallery.close)
    if state.owns_embedder and state.embedder is not None:
        await run_in_threadpool(state.embedder.close)  # TensorRT engines, ORT sessions, device memory


def _customise_openapi(app: FastAPI) -> None:
    """Add the JSON request models (read by hand, so FastAPI does not see them) to the components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (schemas.QueryJSON, schemas.IngestJSON, schemas.EraseRequest):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
