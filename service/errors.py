"""Error answers: every failure becomes ``{"error": {"code", "message"}}`` with a fitting status.

Bad input anywhere (a request field, an image, a gallery item) raises a ``ValueError`` subclass with a
message that names the problem; the handlers here turn each kind into its 4xx, so none of them reaches
a 500 and the server stays up.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipmc.export import EmbedderError
from clipmc.gallery.errors import (
    DimensionMismatchError,
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


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# Bad-input exceptions and their answers, most specific class first (subclasses before GalleryError).
_VALUE_ERRORS: tuple[tuple[type[ValueError], int, str], ...] = (
    (VersionMismatchError, 409, "embedding_version_mismatch"),
    (DimensionMismatchError, 409, "dimension_mismatch"),
    (ItemNotFoundError, 404, "not_found"),
    (GalleryError, 422, "invalid_item"),
    (ImageDecodeError, 422, "invalid_image"),
    (EmbedderError, 422, "embedding_failed"),
)


def classify_value_error(exc: ValueError) -> tuple[int, str]:
    """Status and code of a bad-input exception; the most specific class wins."""
    for kind, status, code in _VALUE_ERRORS:
        if isinstance(exc, kind):
            return status, code
    return 422, "invalid_request"


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

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        status, code = classify_value_error(exc)
        log.info("request refused: %s %s", code, exc)
        return error_response(status, code, str(exc))

    @app.exception_handler(GalleryStateError)
    async def _gallery_state(request: Request, exc: GalleryStateError) -> JSONResponse:
        log.error("gallery unavailable: %s", exc)
        return error_response(503, "gallery_unavailable", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Reached only by bugs: answers in the same JSON shape; Starlette logs and re-raises.
        log.error("unexpected error on %s %s: %r", request.method, request.url.path, exc)
        return error_response(500, "internal_error", "internal server error (logged)")
