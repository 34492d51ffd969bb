"""Thin HTTP handlers: read the request, call protocol + serving, write JSON / SSE."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import APIError, invalid, shutting_down
from .keys import CONFIG, METRICS, REGISTRY, SERVICE, STATE, STORE
from .openapi import openapi_document
from .protocol import ModelCard, ModelList, ProtocolError, parse_edit_fields
from .serving import Upload

FILE_FIELDS = ("image", "image[]", "mask")

log = logging.getLogger("server.routes")
routes = web.RouteTableDef()


def _protocol_error(err: ProtocolError) -> APIError:
    return invalid(err.message, err.param, err.code)


def _read_timeout(seconds: float) -> APIError:
    return APIError(
        408,
        f"The request body arrived too slowly: no data for {seconds:g} s. Upload the whole "
        "request without pausing (or use a faster connection) and retry.",
        code="request_timeout",
    )


async def _timed(awaitable, seconds: float):
    """Await one read step of the request body; a step with no progress for ``seconds`` -> 408."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise _read_timeout(seconds) from None
    except ConnectionError:  # the client hung up mid-upload: nobody reads this answer
        log.info("client disconnected while sending the request body")
        raise APIError(
            400,
            "The connection was closed before the request body was complete.",
            code="client_disconnected",
        ) from None
    except HttpProcessingError as exc:  # aiohttp's multipart parser: bad part headers
        raise invalid(f"Malformed multipart body: {str(exc.message)[:200]}.", None) from None
    except (ValueError, AssertionError, LookupError) as exc:  # ... and other malformed bodies
        raise invalid(f"Malformed request body: {str(exc)[:200]}.", None) from None


async def _read_part(
    part: BodyPartReader, limit: int, too_big: APIError, budget: list[int], timeout_s: float
) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = await _timed(part.read_chunk(64 * 1024), timeout_s)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise APIError(
                413,
                "Request body too large. Send smaller images.",
                code="image_too_large",
                param="image",
            )
        if size > limit:
            raise too_big
        chunks.append(chunk)


async def read_multipart(
    request: web.Request,
) -> tuple[dict[str, str], list[Upload], Upload | None]:
    """Text fields (last value wins), image uploads in order, the mask upload."""
    limits = request.app[CONFIG].limits
    fields: dict[str, str] = {}
    images: list[Upload] = []
    mask: Upload | None = None
    budget = [limits.max_body_bytes]
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise invalid(f"Malformed multipart body: {exc}.", None) from None
    parts = 0
    while True:
        part = await _timed(reader.next(), limits.read_timeout_s)
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise invalid("Nested multipart bodies are not supported.", None)
        parts += 1
        if parts > limits.max_parts:
            raise invalid(f"Too many form parts: more than {limits.max_parts}.", None)
        name = part.name or ""
        if name in FILE_FIELDS or part.filename is not None:
            param = "mask" if name == "mask" else "image"
            too_big = invalid(
                f"'{param}' is larger than {limits.max_image_bytes // (1024 * 1024)} MB; "
                "send a smaller file.",
                param,
                "image_too_large",
            )
            data = await _read_part(
                part, limits.max_image_bytes, too_big, budget, limits.read_timeout_s
            )
            if name == "mask":
                mask = Upload("mask", data)
            elif name in ("image", "image[]"):
                images.append(Upload(name, data))
            # other file fields are ignored, like unknown text fields
            continue
        too_big = invalid(f"Field '{name[:40]}' is too long.", name[:40], "string_above_max_length")
        raw = await _read_part(part, limits.max_field_bytes, too_big, budget, limits.read_timeout_s)
        try:
            fields[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid(f"Field '{name[:40]}' is not valid UTF-8 text.", name[:40]) from None
    return fields, images, mask


def _data_url(value, param: str) -> bytes:
    url = value.get("image_url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise invalid(f'\'{param}\' must be {{"image_url": "data:image/png;base64,..."}}.', param)
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{param}' has invalid base64 data.", param, "invalid_image_file") from None


async def read_json(request: web.Request) -> tuple[dict[str, str], list[Upload], Upload | None]:
    """The JSON variant: {"images": [{"image_url": "data:..."}], "mask": {...}, "prompt": ...}."""
    limits = request.app[CONFIG].limits
    chunks, size = [], 0
    while True:  # StreamReader.read(n) returns what has arrived so far: loop to the end
        chunk = await _timed(request.content.read(64 * 1024), limits.read_timeout_s)
        if not chunk:
            break
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise APIError(413, "Request body too large.", code="image_too_large", param="image")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, over-long integers
        raise invalid("The body is not valid JSON.", None) from None
    if not isinstance(body, dict):
        raise invalid("The JSON body must be an object.", None)
    listed = body.get("images") or []
    if not isinstance(listed, list):
        raise invalid('\'images\' must be a list of {"image_url": "data:..."} objects.', "images")
    images = [Upload("image", _data_url(v, "images")) for v in listed]
    mask = Upload("mask", _data_url(body["mask"], "mask")) if body.get("mask") else None
    fields = {
        k: (
            json.dumps(v)
            if isinstance(v, (dict, list))
            else str(v).lower()
            if isinstance(v, bool)
            else str(v)
        )
        for k, v in body.items()
        if k not in ("images", "mask") and v is not None
    }
    return fields, images, mask


def _base_url(request: web.Request) -> str:
    configured = request.app[CONFIG].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


@routes.post("/v1/images/edits")
async def images_edits(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.draining:
        raise shutting_down()
    limits = request.app[CONFIG].limits
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise APIError(
            413,
            f"Request body too large: over {limits.max_body_bytes} bytes.",
            code="image_too_large",
            param="image",
        )
    ctype = request.content_type
    if ctype == "multipart/form-data":
        fields, images, mask = await read_multipart(request)
    elif ctype == "application/json":
        fields, images, mask = await read_json(request)
    else:
        raise invalid(
            "Send the request as multipart/form-data (or application/json with data "
            "URLs); got Content-Type " + repr(ctype[:60]) + ".",
            None,
        )
    try:
        edit = parse_edit_fields(fields, limits.max_prompt_chars)
    except ProtocolError as err:
        raise _protocol_error(err) from None
    if not images:
        raise invalid("Missing required parameter: 'image'. Upload the image to edit.", "image")
    service = request.app[SERVICE]
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    prepared = await loop.run_in_executor(None, service.prepare, edit, images, mask)
    if edit.user:  # accounting: the caller's end-user id goes to the log, nowhere else
        log.info("edit model=%s n=%d user=%s", prepared.model.name, edit.n, edit.user[:128])

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    if edit.stream:
        return await _stream(request, service, prepared, gone)
    images_out = await service.generate(prepared, gone)
    result = await service.finish(prepared, images_out, _base_url(request))
    request.app[METRICS].latency.labels(prepared.model.name).observe(time.perf_counter() - started)
    body = {
        "created": result.created,
        "data": [d.model_dump(exclude_none=True) for d in result.data],
        "background": result.background,
        "output_format": result.output_format,
        "quality": result.quality,
        "size": result.size,
        "usage": result.usage.model_dump(),
    }
    return web.json_response(body)


async def _stream(request, service, prepared, gone) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    started = False
    try:
        async for event in service.stream(prepared, gone):
            if not started:
                await response.prepare(request)
                started = True
            await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    except APIError as err:
        if not started:
            raise
        await response.write(f"event: error\ndata: {json.dumps(err.body())}\n\n".encode())
    if not started:
        await response.prepare(request)
    await response.write_eof()
    return response


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    created = request.app[STATE].started
    cards = []
    for name, model in registry.models.items():
        meta = model.describe()
        cards.append(
            ModelCard(
                id=name,
                created=created,
                owned_by="local",
                default=(name == registry.default),
                **meta,
            )
        )
    body = ModelList(data=cards).model_dump()
    body["unavailable"] = [{"id": f.name, "reason": f.reason} for f in registry.failures]
    return web.json_response(body)


@routes.get("/v1/models/{name}")
async def get_model(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    name = request.match_info["name"]
    if name not in registry.models:
        raise APIError(
            404, f"The model '{name}' does not exist.", code="model_not_found", param="model"
        )
    model = registry.models[name]
    card = ModelCard(id=name, created=request.app[STATE].started, **model.describe())
    return web.json_response(card.model_dump())


@routes.get("/v1/images/files/{name}")
async def get_file(request: web.Request) -> web.StreamResponse:
    found = request.app[STORE].get(request.match_info["name"])
    if found is None:
        raise APIError(
            404,
            "No such image file: it never existed or has expired (60 minutes).",
            code="file_not_found",
        )
    path, content_type = found
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, max-age=3600"}
    )


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    registry = request.app.get(REGISTRY)
    if state.draining or registry is None or not state.ready:
        return web.json_response({"status": "not ready"}, status=503)
    return web.json_response(
        {
            "status": "ready",
            "models": registry.names(),
            "default_model": registry.default,
            "unavailable": [f.name for f in registry.failures],
        }
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
