"""The FastAPI application (DESIGN.md section 8).

``create_app(settings, embedder=None, gallery=None)`` builds one app from one settings object; what
is not passed in is built from the settings when the app starts (``clipmc serve`` builds both first,
so that configuration errors end the command with one line instead of a traceback). Everything the
routes need lives on ``app.state.service``: no module-level state, so tests run several apps side
by side.

Start-up: the gallery is opened and checked against the model's ``embedding_version`` (a mismatch
refuses to start), the dynamic batcher starts, and the model is warmed up at its micro-batch sizes
in the background; ``/readyz`` says 503 until that is done, and /query and /gallery/ingest answer
503 ``not_ready`` meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from clipmc.export import Embedder, create_embedder
from clipmc.gallery import Filters, Item, open_gallery
from clipmc.service import schemas
from clipmc.service.auth import KeyRing, require
from clipmc.service.batching import DynamicBatcher
from clipmc.service.errors import APIError, InputError, PayloadTooLarge, install_error_handlers
from clipmc.service.images import DecodedImage, ImageLimits, decode_base64, decode_image
from clipmc.service.limits import BodySizeLimitMiddleware
from clipmc.service.metrics import Metrics, MetricsMiddleware
from clipmc.service.search_batching import SearchBatcher
from clipmc.service.settings import Settings
from clipmc.service.thumbnails import ThumbnailStore

log = logging.getLogger("clipmc.service")

STATIC_DIR = Path(__file__).parent / "static"
# The web page loads nothing from elsewhere; thumbnails arrive as blob: URLs (fetched with the key).
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Gallery ids are positive SQLite / Milvus int64 keys: a larger number is a 422 here, not an overflow deeper down.
ItemId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="gallery item id")]
_ERRORS: dict[int | str, dict[str, Any]] = {
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


def open_service_gallery(settings: Settings, embedder: Embedder) -> Any:
    """Open (or create) the gallery for this model; another embedding_version refuses to open."""
    location = settings.milvus_uri if settings.gallery_backend == "milvus" and settings.milvus_uri else settings.gallery
    return open_gallery(location, embedder.embedding_dim, embedder.embedding_version, backend=settings.gallery_backend)


def check_compatible(embedder: Embedder, gallery: Any) -> None:
    """Refuse to serve a gallery built by another model: its vectors would silently not match."""
    if gallery.embedding_version != embedder.embedding_version:
        raise ValueError(
            f"the gallery holds vectors of embedding_version {gallery.embedding_version!r} but the model "
            f"produces {embedder.embedding_version!r}: serve it with the model that built it, or use another "
            "gallery directory (--gallery / CLIPMC_GALLERY) and re-ingest"
        )
    if int(gallery.dim) != int(embedder.embedding_dim):
        raise ValueError(f"the gallery holds {gallery.dim}-d vectors, the model produces {embedder.embedding_dim}-d")


@dataclass
class ServiceState:
    """Everything the routes use; one per app."""

    settings: Settings
    keyring: KeyRing
    metrics: Metrics
    limits: ImageLimits
    embedder: Embedder | None = None
    gallery: Any = None
    owns_embedder: bool = False  # built at start-up, so closed at shutdown (what was passed in, the caller closes)
    owns_gallery: bool = False
    batcher: DynamicBatcher | None = None
    searcher: SearchBatcher | None = None
    thumbnails: ThumbnailStore | None = None
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    ready: bool = False
    status: str = "starting"
    warmup_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def require_ready(self) -> tuple[Embedder, Any, DynamicBatcher]:
        if not self.ready or self.embedder is None or self.gallery is None or self.batcher is None:
            raise APIError(503, "not_ready", f"the service is not ready yet ({self.status})", {"Retry-After": "2"})
        return self.embedder, self.gallery, self.batcher


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def create_app(settings: Settings, embedder: Embedder | None = None, gallery: Any = None) -> FastAPI:
    """The service for these settings; ``embedder`` / ``gallery`` are built at start-up if not given."""
    if embedder is not None and gallery is not None:
        check_compatible(embedder, gallery)
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
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=app.router.routes)
    _add_routes(app)
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
        log.warning("auth is OFF: no API key configured (CLIPMC_API_KEYS); every client has every scope")
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


async def _warm_up(state: ServiceState) -> None:
    assert state.embedder is not None and state.executor is not None
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    try:
        await loop.run_in_executor(state.executor, state.embedder.warmup)
        stats = await run_in_threadpool(state.gallery.stats)
    except Exception as exc:
        state.status = f"warm-up failed: {exc!r}"
        log.error("warm-up failed, the service stays unready: %r", exc)
        return
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
    if state.warmup_task is not None:
        state.warmup_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.warmup_task
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


# -- request parsing --------------------------------------------------------------------------------


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _validate(model: type[BaseModel], data: Any, prefix: tuple[str | int, ...] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": (*prefix, *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"body is not valid JSON: {exc}", "invalid_json") from None


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise InputError("empty JSON body", "invalid_json")
    # In a thread, as the base64 decoding: a 64 MB body takes ~0.2 s of CPU, which would stall every
    # other request (and the batcher) on the event loop.
    return await run_in_threadpool(_loads, body)


def _unsupported(media: str) -> APIError:
    got = media or "no content type"
    return APIError(415, "unsupported_media_type", f"send multipart/form-data or application/json, not {got!r}")


async def _read_upload(value: Any, name: str) -> bytes:
    if not isinstance(value, UploadFile):
        raise InputError(f"{name} must be a file part (multipart filename=...)", "invalid_request")
    return await value.read()


async def _parse_query(request: Request, settings: Settings) -> tuple[schemas.QueryParams, bytes]:
    media = _media_type(request)
    if media == "multipart/form-data":
        async with request.form(max_files=2, max_fields=32, max_part_size=settings.max_request_bytes) as form:
            fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
            uploads = form.getlist("image")
            if not uploads:
                raise InputError("missing the 'image' file", "missing_image")
            if len(uploads) > 1:
                raise InputError("send exactly one 'image' file", "too_many_files", 413)
            data = await _read_upload(uploads[0], "image")
            fields.pop("image", None)
            unknown = [k for k, v in form.multi_items() if isinstance(v, UploadFile) and k != "image"]
            if unknown:
                raise InputError(f"unexpected file field(s): {', '.join(unknown)}", "invalid_request")
        return _validate(schemas.QueryParams, fields), data
    if media == "application/json":
        body = await _json_body(request)
        params = _validate(schemas.QueryJSON, body)
        data = await run_in_threadpool(decode_base64, params.image_base64, "image_base64")
        return params, data
    raise _unsupported(media)


async def _parse_ingest(request: Request, settings: Settings) -> list[tuple[schemas.IngestItem, bytes, str]]:
    """(metadata, image bytes, a label naming the image in error messages) per crop."""
    media = _media_type(request)
    max_files = settings.max_files
    if media == "multipart/form-data":
        async with request.form(
            max_files=max_files, max_fields=max_files + 8, max_part_size=settings.max_request_bytes
        ) as form:
            uploads = form.getlist("images")
            raw_items = form.getlist("items")
            if not uploads:
                raise InputError("missing the 'images' files", "missing_image")
            if len(raw_items) != 1 or not isinstance(raw_items[0], str):
                raise InputError("send one 'items' field: a JSON array, one object per image", "invalid_request")
            try:
                items = json.loads(raw_items[0])
            except json.JSONDecodeError as exc:
                raise InputError(f"'items' is not valid JSON: {exc}", "invalid_json") from None
            if not isinstance(items, list):
                raise InputError("'items' must be a JSON array, one object per image", "invalid_request")
            if len(items) != len(uploads):
                raise InputError(
                    f"{len(uploads)} images but {len(items)} items: send one item per image, in the same order",
                    "invalid_request",
                )
            if len(uploads) > max_files:
                raise PayloadTooLarge(f"{len(uploads)} files, at most {max_files} per request", "too_many_files")
            metas = [_validate(schemas.IngestItem, item, ("items", i)) for i, item in enumerate(items)]
            labels = [f"images[{i}]" for i in range(len(uploads))]
            datas = [await _read_upload(u, label) for u, label in zip(uploads, labels, strict=True)]
        return list(zip(metas, datas, labels, strict=True))
    if media == "application/json":
        body = await _json_body(request)
        if isinstance(body, dict) and isinstance(body.get("items"), list) and len(body["items"]) > max_files:
            raise PayloadTooLarge(f"{len(body['items'])} items, at most {max_files} per request", "too_many_files")
        parsed = _validate(schemas.IngestJSON, body)
        labels = [f"items[{i}].image_base64" for i in range(len(parsed.items))]
        datas = await run_in_threadpool(_decode_base64_many, [item.image_base64 for item in parsed.items], labels)
        # an IngestItemJSON is an IngestItem: its metadata is used as validated
        return list(zip(parsed.items, datas, labels, strict=True))
    raise _unsupported(media)


# -- routes -----------------------------------------------------------------------------------------


def _item_dict(item: Any, item_id: int) -> dict[str, Any]:
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


def _result(hit: Any) -> dict[str, Any]:
    return {**_item_dict(hit.item, hit.id), "score": float(hit.score)}


def _decode_base64_many(texts: list[str], labels: list[str]) -> list[bytes]:
    return [decode_base64(text, label) for text, label in zip(texts, labels, strict=True)]


def _decode_many(
    entries: list[tuple[schemas.IngestItem, bytes, str]], limits: ImageLimits, size: tuple[int, int], thumb: int | None
) -> list[DecodedImage]:
    return [decode_image(data, limits, size, thumbnail_size=thumb, what=label) for _, data, label in entries]


def _add_routes(app: FastAPI) -> None:
    query_scope = Depends(require("query"))
    ingest_scope = Depends(require("ingest"))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})

    @app.get("/healthz", tags=["operations"], summary="the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="model warmed up at its micro-batch sizes and gallery loaded",
        responses={503: {"model": schemas.ErrorResponse, "description": "not ready yet"}},
    )
    async def readyz(request: Request) -> Any:
        state = get_state(request)
        if not state.ready:
            raise APIError(503, "not_ready", state.status, {"Retry-After": "2"})
        assert state.embedder is not None
        return {"status": "ready", "embedder": state.embedder.describe()}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        state = get_state(request)
        if state.settings.metrics_require_auth:
            require("admin")(request, None)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/query",
        tags=["search"],
        summary="find the gallery sightings of the person in a crop",
        response_model=schemas.QueryResponse,
        responses=_ERRORS,
        dependencies=[query_scope],
        openapi_extra=_body_doc("QueryJSON", schemas.QUERY_FORM_SCHEMA),
    )
    async def query(request: Request) -> Any:
        start = time.perf_counter()
        state = get_state(request)
        embedder, _gallery, batcher = state.require_ready()
        params, data = await _parse_query(request, state.settings)
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
        assert state.searcher is not None  # started with the batcher
        hits = await state.searcher.search(vector, params.top_k, filters)
        state.metrics.search_latency.observe(time.perf_counter() - search_start)
        return {
            "query_modality": params.modality,
            "results": [_result(hit) for hit in hits],
            "took_ms": round((time.perf_counter() - start) * 1000.0, 3),
        }

    @app.post(
        "/gallery/ingest",
        tags=["gallery"],
        summary="add crops with their metadata (all or nothing; idempotent on external_id)",
        response_model=schemas.IngestResponse,
        responses={**_ERRORS, 409: {"model": schemas.ErrorResponse, "description": "embedding version mismatch"}},
        dependencies=[ingest_scope],
        openapi_extra=_body_doc("IngestJSON", schemas.INGEST_FORM_SCHEMA),
    )
    async def ingest(request: Request) -> Any:
        state = get_state(request)
        embedder, gallery, batcher = state.require_ready()
        entries = await _parse_ingest(request, state.settings)
        thumb_size = state.settings.thumbnail_size if state.thumbnails is not None else None
        decoded = await run_in_threadpool(_decode_many, entries, state.limits, embedder.image_size, thumb_size)
        crops = np.stack([d.crop for d in decoded])
        modalities = [schemas.MODALITY_CODES[meta.modality] for meta, _, _ in entries]
        vectors = await batcher.embed(crops, modalities)
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
                state.thumbnails.put_many, [(i, d.thumbnail) for i, d in zip(result.ids, decoded, strict=True)]
            )
        if result.created:
            stats = await run_in_threadpool(gallery.stats)
            state.metrics.gallery_items.set(stats["count"])
        log.info("ingested %d crops: %d new, %d already stored", len(items), result.created, result.existing)
        return {"ids": [int(i) for i in result.ids], "created": result.created, "existing": result.existing}

    @app.get(
        "/gallery/items/{item_id}",
        tags=["gallery"],
        summary="one item's metadata",
        response_model=schemas.ItemResponse,
        responses={404: {"model": schemas.ErrorResponse}, **_ERRORS},
        dependencies=[query_scope],
    )
    async def get_item(item_id: ItemId, request: Request) -> Any:
        gallery = _gallery(get_state(request))
        item = await run_in_threadpool(gallery.get, item_id, with_vector=False)
        if item is None:
            raise APIError(404, "not_found", f"no gallery item with id {item_id}")
        return _item_dict(item, item_id)

    @app.get(
        "/gallery/items/{item_id}/thumbnail",
        tags=["gallery"],
        summary="the item's JPEG thumbnail",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": schemas.ErrorResponse}},
        dependencies=[query_scope],
    )
    async def get_thumbnail(item_id: ItemId, request: Request) -> Response:
        state = get_state(request)
        data = await run_in_threadpool(state.thumbnails.get, item_id) if state.thumbnails is not None else None
        if data is None:
            raise APIError(404, "not_found", f"no thumbnail for gallery item {item_id}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.delete(
        "/gallery/items/{item_id}",
        tags=["gallery"],
        summary="remove an item",
        response_model=schemas.DeleteResponse,
        responses={404: {"model": schemas.ErrorResponse}, **_ERRORS},
        dependencies=[ingest_scope],
    )
    async def delete_item(item_id: ItemId, request: Request) -> Any:
        state = get_state(request)
        gallery = _gallery(state)
        removed = await run_in_threadpool(gallery.remove, [item_id])
        if not removed:
            raise APIError(404, "not_found", f"no gallery item with id {item_id}")
        if state.thumbnails is not None:
            await run_in_threadpool(state.thumbnails.delete, item_id)
        stats = await run_in_threadpool(gallery.stats)
        state.metrics.gallery_items.set(stats["count"])
        return {"id": item_id, "deleted": True}

    @app.get(
        "/gallery/stats",
        tags=["gallery"],
        summary="gallery counts and the served model",
        responses=_ERRORS,
        dependencies=[query_scope],
    )
    async def gallery_stats(request: Request) -> Any:
        state = get_state(request)
        gallery = _gallery(state)
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


def _gallery(state: ServiceState) -> Any:
    if state.gallery is None:
        raise APIError(503, "not_ready", f"the gallery is not open yet ({state.status})", {"Retry-After": "2"})
    return state.gallery


def _body_doc(json_model: str, form_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model}"}},
            },
        }
    }


def _customise_openapi(app: FastAPI) -> None:
    """Add the JSON request models (read by hand, so FastAPI does not see them) to the components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (schemas.QueryJSON, schemas.IngestJSON):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
