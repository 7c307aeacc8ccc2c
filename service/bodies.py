"""Reading request bodies: multipart forms and JSON for /query and /gallery/ingest, into validated models.

The handlers read the body themselves (both content types go through the same pydantic models, so
both get the same checks and messages); this module turns every malformed body into an
:class:`~clipmc.service.errors.InputError` or a ``RequestValidationError``, never a 500.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from clipmc.service import schemas
from clipmc.service.errors import APIError, InputError, PayloadTooLarge
from clipmc.service.images import DecodedImage, ImageLimits, decode_base64, decode_image
from clipmc.service.settings import Settings


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _validate(model: type[BaseModel], data: Any, prefix: tuple[str | int, ...] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": (*prefix, *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _loads(body: bytes | str, what: str = "body") -> Any:
    """Parse JSON; malformed, non-UTF-8 or absurdly nested text is a 422 naming ``what``."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:  # Python's parser recurses per nesting level: thousands of '[' exhaust the stack
        raise InputError(f"{what} is nested too deeply to be parsed", "invalid_json") from None


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, noting the text fields that are not valid in their charset.

    Starlette falls back to Latin-1 for such a field, which would store a garbled string; the
    service refuses it instead, as it refuses a JSON body that is not UTF-8.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undecodable: list[str] = []

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                self.undecodable.append(part.field_name)
        super().on_part_end()


@contextlib.asynccontextmanager
async def _multipart(
    request: Request, *, max_files: int, max_fields: int, max_part_size: int
) -> AsyncIterator[FormData]:
    """The multipart form (as ``request.form``), closed on exit; a text field not in UTF-8 is a 422."""
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            parser = _StrictMultiPartParser(
                request.headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
            )
            form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message) from None
    try:
        if parser.undecodable:
            names = ", ".join(repr(name) for name in dict.fromkeys(parser.undecodable))
            raise InputError(f"form field {names} is not valid UTF-8 text", "invalid_encoding")
        yield form
    finally:
        await form.close()


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


async def parse_json_model(request: Request, model: type[BaseModel]) -> Any:
    """A JSON-only body validated by ``model`` (415 for another content type, 422 for bad JSON)."""
    media = _media_type(request)
    if media != "application/json":
        got = media or "no content type"
        raise APIError(415, "unsupported_media_type", f"send application/json, not {got!r}")
    return _validate(model, await _json_body(request))


def _refuse_repeated_external_ids(items: list[Any]) -> None:
    """Two crops of one request with one external_id would be merged into one item: refuse the request."""
    first: dict[str, int] = {}
    for position, item in enumerate(items):
        if item.external_id is None:
            continue
        if item.external_id in first:
            raise InputError(
                f"items[{position}] repeats the external_id {item.external_id!r} of items[{first[item.external_id]}]: "
                "each crop of a request needs its own external_id",
                "duplicate_external_id",
            )
        first[item.external_id] = position


async def parse_query(request: Request, settings: Settings) -> tuple[schemas.QueryParams, list[bytes], list[str]]:
    """The query's fields, its crop(s) as bytes (several for a tracklet) and a label naming each in errors."""
    media = _media_type(request)
    limit = schemas.MAX_TRACKLET_CROPS
    if media == "multipart/form-data":
        async with _multipart(
            request, max_files=limit + 1, max_fields=32, max_part_size=settings.max_request_bytes
        ) as form:
            fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
            uploads = form.getlist("image")
            if not uploads:
                raise InputError("missing the 'image' file", "missing_image")
            if len(uploads) > limit:
                raise PayloadTooLarge(
                    f"{len(uploads)} 'image' files, at most {limit} crops per tracklet query", "too_many_files"
                )
            labels = ["image"] if len(uploads) == 1 else [f"image[{i}]" for i in range(len(uploads))]
            datas = [await _read_upload(u, label) for u, label in zip(uploads, labels, strict=True)]
            fields.pop("image", None)
            unknown = [k for k, v in form.multi_items() if isinstance(v, UploadFile) and k != "image"]
            if unknown:
                raise InputError(f"unexpected file field(s): {', '.join(unknown)}", "invalid_request")
        return _validate(schemas.QueryParams, fields), datas, labels
    if media == "application/json":
        body = await _json_body(request)
        many = body.get("images_base64") if isinstance(body, dict) else None
        if isinstance(many, list) and len(many) > limit:
            raise PayloadTooLarge(
                f"{len(many)} images_base64, at most {limit} crops per tracklet query", "too_many_files"
            )
        params = _validate(schemas.QueryJSON, body)
        texts = params.crops_base64()
        if params.image_base64 is not None:
            labels = ["image_base64"]
        else:
            labels = [f"images_base64[{i}]" for i in range(len(texts))]
        datas = await run_in_threadpool(_decode_base64_many, texts, labels)
        return params, datas, labels
    raise _unsupported(media)


async def parse_ingest(request: Request, settings: Settings) -> list[tuple[schemas.IngestItem, bytes, str]]:
    """(metadata, image bytes, a label naming the image in error messages) per crop."""
    media = _media_type(request)
    max_files = settings.max_files
    if media == "multipart/form-data":
        async with _multipart(
            request, max_files=max_files, max_fields=max_files + 8, max_part_size=settings.max_request_bytes
        ) as form:
            uploads = form.getlist("images")
            raw_items = form.getlist("items")
            if not uploads:
                raise InputError("missing the 'images' files", "missing_image")
            if len(raw_items) != 1 or not isinstance(raw_items[0], str):
                raise InputError("send one 'items' field: a JSON array, one object per image", "invalid_request")
            items = _loads(raw_items[0], "'items'")
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
            _refuse_repeated_external_ids(metas)
            labels = [f"images[{i}]" for i in range(len(uploads))]
            datas = [await _read_upload(u, label) for u, label in zip(uploads, labels, strict=True)]
        return list(zip(metas, datas, labels, strict=True))
    if media == "application/json":
        body = await _json_body(request)
        if isinstance(body, dict) and isinstance(body.get("items"), list) and len(body["items"]) > max_files:
            raise PayloadTooLarge(f"{len(body['items'])} items, at most {max_files} per request", "too_many_files")
        parsed = _validate(schemas.IngestJSON, body)
        _refuse_repeated_external_ids(parsed.items)
        labels = [f"items[{i}].image_base64" for i in range(len(parsed.items))]
        datas = await run_in_threadpool(_decode_base64_many, [item.image_base64 for item in parsed.items], labels)
        # an IngestItemJSON is an IngestItem: its metadata is used as validated
        return list(zip(parsed.items, datas, labels, strict=True))
    raise _unsupported(media)


def _decode_base64_many(texts: list[str], labels: list[str]) -> list[bytes]:
    return [decode_base64(text, label) for text, label in zip(texts, labels, strict=True)]


def decode_many(
    entries: list[tuple[schemas.IngestItem, bytes, str]], limits: ImageLimits, size: tuple[int, int], thumb: int | None
) -> list[DecodedImage]:
    """Decode and check every crop of an ingest request (the first bad one is a 4xx naming it)."""
    return [decode_image(data, limits, size, thumbnail_size=thumb, what=label) for _, data, label in entries]
