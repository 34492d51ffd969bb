"""Reading an edit request's body on the event loop: bytes only, counted as they arrive.

The loop only moves bytes: it checks the Content-Type and the declared length, sends
``100 Continue`` only now (after auth and these checks passed), reads the raw body under four
limits (total bytes -> 413; a stall of ``read_timeout`` -> 408; the whole body within
``body_timeout``, and at least ``min_body_rate_kb`` KB/s once ``BODY_RATE_GRACE_S`` has passed
-> 408), then hands the bytes to ``forms.py`` in the request executor for parsing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from ..config import Limits
from ..errors import APIError, invalid
from ..service.admission import Reservation
from .forms import EditBody, malformed, parse_json, parse_multipart

CHUNK = 64 * 1024
#: seconds before the minimum body rate applies (connection set-up, slow start)
BODY_RATE_GRACE_S = 10.0

log = logging.getLogger("server.http")


def body_too_large(limits: Limits) -> APIError:
    return APIError(
        413,
        f"Request body too large: over {limits.max_body_bytes} bytes. Send smaller images.",
        code="image_too_large",
        param="image",
    )


def too_slow(why: str) -> APIError:
    return APIError(
        408,
        f"The request body arrived too slowly: {why}. Upload the whole request without "
        "pausing (or use a faster connection) and retry.",
        code="request_timeout",
    )


async def no_continue(request: web.Request) -> None:
    """The route's Expect handler: aiohttp's default would answer ``100 Continue`` before the
    middlewares run (before auth); ``read_edit_body`` sends it once the checks passed."""
    return None


async def send_continue(request: web.Request) -> None:
    """``100 Continue`` for a client that waits for it (as aiohttp's default handler sends)."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started


async def read_edit_body(
    request: web.Request, limits: Limits, executor: Executor, reservation: Reservation
) -> EditBody:
    """Check the Content-Type, read the bytes, parse them off the loop. The body's bytes are
    held until the answer is sent: they count against the memory budget (``reservation``),
    reserved from the declared length before ``100 Continue``, or as they arrive."""
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise body_too_large(limits)
    ctype = request.content_type
    if ctype == "multipart/form-data":
        boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get(
            "boundary", ""
        )
        if not boundary:
            raise malformed("the Content-Type has no boundary")
        parse = parse_multipart
        args: tuple = (boundary, limits, reservation)  # reserves the files it copies
    elif ctype == "application/json":
        parse, args = parse_json, (limits, reservation)  # reserves what it decodes
    else:
        raise invalid(
            "Send the request as multipart/form-data (or application/json with data "
            "URLs); got Content-Type " + repr(ctype[:60]) + ".",
            None,
        )
    declared = request.content_length or 0
    reservation.add(declared)
    await send_continue(request)
    raw = await read_raw(request, limits, reservation, declared)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, parse, raw, *args)


async def read_raw(
    request: web.Request, limits: Limits, reservation: Reservation | None = None, reserved: int = 0
) -> bytearray:
    """The whole body, under the size, stall, deadline and rate limits. Collected in one
    buffer as it arrives (no large copy on the loop at the end); each byte past the
    ``reserved`` ones is added to ``reservation`` as it arrives, so that a full memory budget
    refuses a chunked (or paused) upload with 429 mid-way instead of holding it."""
    data = bytearray()
    size = 0
    started = time.monotonic()
    deadline = started + limits.body_timeout
    min_rate = limits.min_body_rate_kb * 1024
    while True:
        now = time.monotonic()
        wait = min(limits.read_timeout, deadline - now)
        if wait <= 0:
            raise too_slow(f"not complete after {limits.body_timeout:g} s")
        try:
            chunk = await asyncio.wait_for(request.content.read(CHUNK), wait)
        except asyncio.TimeoutError:
            if time.monotonic() >= deadline:
                raise too_slow(f"not complete after {limits.body_timeout:g} s") from None
            raise too_slow(f"no data for {limits.read_timeout:g} s") from None
        except ConnectionError:  # the client hung up mid-upload: nobody reads this answer
            log.info("client disconnected while sending the request body")
            raise APIError(
                400,
                "The connection was closed before the request body was complete.",
                code="client_disconnected",
            ) from None
        if not chunk:
            return data
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise body_too_large(limits)
        data += chunk
        if reservation is not None and size > reserved:
            reservation.add(size - reserved)
            reserved = size
        elapsed = time.monotonic() - started
        if elapsed > BODY_RATE_GRACE_S and size < min_rate * elapsed:
            raise too_slow(f"{size / elapsed / 1024:.1f} KB/s, under {limits.min_body_rate_kb:g}")
