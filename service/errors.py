"""Error answers: every failure becomes ``{"error": {"code", "message"}}`` with a fitting status.

Only the project's own input errors are the client's fault: :class:`APIError` / :class:`InputError`,
request validation, and the bad-input classes of the gallery (:class:`GalleryError`), the image
decoder (:class:`ImageDecodeError`) and the embedder (:class:`EmbedderError`) map to 4xx. Storage
failures (``sqlite3.Error``, ``OSError``: disk full, database locked, I/O error) and an unusable
gallery are 503s with a code saying which. Anything else, a plain ``ValueError`` included, is a bug:
a 500 whose body and log line carry the same request id, with the traceback in the log.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipmc.export import EmbedderError
from clipmc.gallery.errors import (
    DimensionMismatchError,
    ExternalIdConflictError,
    GalleryError,
    GalleryStateError,
    ItemNotFoundError,
    VersionMismatchError,
)
from clipmc.model.preprocess import ImageDecodeError

log = logging.getLogger("clipmc.service")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class APIError(Exception):
    """An error answer with its HTTP status, a stable machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class InputError(APIError, ValueError):
    """Bad request content (422 unless said otherwise)."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 422) -> None:
        super().__init__(status, code, message)


class PayloadTooLarge(InputError):
    def __init__(self, message: str, code: str = "payload_too_large") -> None:
        super().__init__(message, code, 413)


def error_body(code: str, message: str, **extra: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: str
) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# The project's bad-input exceptions and their answers, most specific class first (subclasses before
# GalleryError). A ValueError of any other class is not the client's fault: it is a 500.
INPUT_ERRORS: tuple[tuple[type[ValueError], int, str], ...] = (
    (VersionMismatchError, 409, "embedding_version_mismatch"),
    (DimensionMismatchError, 409, "dimension_mismatch"),
    (ExternalIdConflictError, 409, "external_id_conflict"),
    (ItemNotFoundError, 404, "not_found"),
    (GalleryError, 422, "invalid_item"),
    (ImageDecodeError, 422, "invalid_image"),
    (EmbedderError, 422, "embedding_failed"),
)


def classify_input_error(exc: ValueError) -> tuple[int, str]:
    """Status and code of one of the project's bad-input exceptions; the most specific class wins."""
    for kind, status, code in INPUT_ERRORS:
        if isinstance(exc, kind):
            return status, code
    raise TypeError(f"{type(exc).__name__} is not one of the project's input errors")


def classify_storage_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a storage failure: the disk is full, the database is locked, or another I/O error."""
    text = str(exc)
    lowered = text.lower()
    if "disk is full" in lowered or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return "storage_full", f"the gallery's storage is full; nothing was stored ({text})"
    if "locked" in lowered or "busy" in lowered:
        return "database_locked", f"the gallery database is busy; try again ({text})"
    return "storage_error", f"the gallery's storage failed; nothing was stored ({text})"


def new_request_id() -> str:
    """A short random id that ties an error answer to its log line."""
    return uuid.uuid4().hex[:16]


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; the project's ValueErrors (images, gallery, embedder) map to 4xx."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        if exc.status_code == 400 and "Too many files" in str(exc.detail):
            return error_response(413, "too_many_files", str(exc.detail))
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", _format_validation(exc))

    async def _input_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValueError)
        status, code = classify_input_error(exc)
        log.info("request refused: %s %s", code, exc)
        return error_response(status, code, str(exc))

    for kind, _, _ in INPUT_ERRORS:
        app.add_exception_handler(kind, _input_error)

    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = new_request_id()
        if isinstance(exc, TimeoutError):  # an OSError too, but no storage failure
            code, message = "timeout", "the operation timed out; try again"
        else:
            code, message = classify_storage_error(exc)
        log.error(
            "storage failure on %s %s (request %s): %r", request.method, request.url.path, request_id, exc, exc_info=exc
        )
        return error_response(503, code, message, {"Retry-After": "5"}, request_id=request_id)

    app.add_exception_handler(sqlite3.Error, _storage_error)
    app.add_exception_handler(OSError, _storage_error)

    @app.exception_handler(GalleryStateError)
    async def _gallery_state(request: Request, exc: GalleryStateError) -> JSONResponse:
        log.error("gallery unavailable: %s", exc)
        return error_response(503, "gallery_unavailable", str(exc))

    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request.method, request.url.path, exc)

    # For what escapes the middleware stack (Starlette's ServerErrorMiddleware, which re-raises); the
    # routes' own bugs are answered by InternalErrorMiddleware without re-raising.
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(InternalErrorMiddleware)


def internal_error_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """Log ``exc`` with its traceback under a new request id; the 500 answer that carries that id."""
    request_id = new_request_id()
    log.error("internal error on %s %s (request %s): %r", method, path, request_id, exc, exc_info=exc)
    return error_response(
        500,
        "internal_error",
        f"internal server error (request id {request_id}; the traceback is in the server log)",
        {"X-Request-ID": request_id},
        request_id=request_id,
    )


class InternalErrorMiddleware:
    """Answers an exception no handler claimed (a bug) with a logged 500, and does not re-raise it.

    Starlette's own last-resort handler re-raises after answering, and uvicorn then drops the
    connection, so a client can see a reset instead of the answer; here the answer is complete and the
    connection stays usable. It sits inside the other middlewares, so metrics count the 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:  # too late for an answer: let the server close the connection
                raise
            response = internal_error_response(scope.get("method", "?"), scope.get("path", "?"), exc)
            await response(scope, receive, send)
