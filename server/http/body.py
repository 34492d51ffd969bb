"""Reading an edit request's body under limits: multipart/form-data (what every SDK sends) or
the JSON variant with data URLs. Returns text fields, image uploads in order, and the mask.

Every read step has a stall timeout (408); sizes are counted while reading (413 / 400).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import Limits
from ..errors import APIError, invalid
from ..service import Upload

#: file form fields; other file parts are ignored like unknown text fields
IMAGE_FIELDS = ("image", "image[]")
FILE_FIELDS = (*IMAGE_FIELDS, "mask")
CHUNK = 64 * 1024

log = logging.getLogger("server.http")

Body = tuple[dict[str, str], list[Upload], Upload | None]


def body_too_large(limits: Limits) -> APIError:
    return APIError(
        413,
        f"Request body too large: over {limits.max_body_bytes} bytes. Send smaller images.",
        code="image_too_large",
        param="image",
    )


async def read_edit_body(request: web.Request, limits: Limits) -> Body:
    """Dispatch on Content-Type; a declared length over the limit is refused before reading."""
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise body_too_large(limits)
    ctype = request.content_type
    if ctype == "multipart/form-data":
        return await read_multipart(request, limits)
    if ctype == "application/json":
        return await read_json(request, limits)
    raise invalid(
        "Send the request as multipart/form-data (or application/json with data "
        "URLs); got Content-Type " + repr(ctype[:60]) + ".",
        None,
    )


async def _timed(awaitable, seconds: float):
    """Await one read step of the request body; a step with no progress for ``seconds`` -> 408."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise APIError(
            408,
            f"The request body arrived too slowly: no data for {seconds:g} s. Upload the whole "
            "request without pausing (or use a faster connection) and retry.",
            code="request_timeout",
        ) from None
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
    part: BodyPartReader, limit: int, too_big: APIError, budget: list[int], limits: Limits
) -> bytes:
    """One part's bytes; over ``limit`` -> ``too_big``; the whole body over budget -> 413."""
    chunks, size = [], 0
    while True:
        chunk = await _timed(part.read_chunk(CHUNK), limits.read_timeout)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise body_too_large(limits)
        if size > limit:
            raise too_big
        chunks.append(chunk)


async def read_multipart(request: web.Request, limits: Limits) -> Body:
    """Text fields (last value wins), image uploads in order, the mask upload."""
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
        part = await _timed(reader.next(), limits.read_timeout)
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
                f"'{param}' is larger than {limits.max_image_mb:g} MB; send a smaller file.",
                param,
                "image_too_large",
            )
            data = await _read_part(part, limits.max_image_bytes, too_big, budget, limits)
            if name == "mask":
                mask = Upload("mask", data)
            elif name in IMAGE_FIELDS:
                images.append(Upload(name, data))
            continue
        too_big = invalid(f"Field '{name[:40]}' is too long.", name[:40], "string_above_max_length")
        raw = await _read_part(part, limits.max_field_bytes, too_big, budget, limits)
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


def _field_text(value) -> str:
    """A JSON value as the text a form field would carry."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


async def read_json(request: web.Request, limits: Limits) -> Body:
    """The JSON variant: {"images": [{"image_url": "data:..."}], "mask": {...}, "prompt": ...}."""
    chunks, size = [], 0
    while True:  # StreamReader.read(n) returns what has arrived so far: loop to the end
        chunk = await _timed(request.content.read(CHUNK), limits.read_timeout)
        if not chunk:
            break
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise body_too_large(limits)
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
        k: _field_text(v) for k, v in body.items() if k not in ("images", "mask") and v is not None
    }
    return fields, images, mask
