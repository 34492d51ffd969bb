"""Writing an edit's answer under a deadline (``--write-timeout``).

A client that stops reading makes each write wait (the kernel's and the transport's buffers
fill, then aiohttp waits for them to drain). Without a deadline the request would keep its
memory reservation, its decoded images and its encoded answer for as long as the client
likes: a few such clients fill the memory budget and every other edit gets 429. Past the
deadline the connection is aborted (its unsent bytes dropped) and ``ClientGone`` is raised,
so that the handler ends and releases what it holds; the request counts under
``CLIENT_CLOSED`` in the metrics, as does one whose client hung up.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..deadline import deadline

#: the status label of a request whose client hung up or stopped reading (nginx's 499)
CLIENT_CLOSED = 499
#: an answer is written in pieces of this size, each within the deadline: the deadline bounds a
#: stall (no piece accepted for that long), not the time a slow but reading client needs
WRITE_PIECE = 256 * 1024


class ClientGone(Exception):
    """The client stopped reading its answer (write deadline) or hung up while it was written;
    the connection is closed. ``response``: the (prepared) response, for aiohttp to finish."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client stopped reading its answer")
        self.response = response


def abort(request: web.Request) -> None:
    """Close the connection now, dropping what was not sent yet."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def write_within(
    request: web.Request,
    response: web.StreamResponse,
    data: bytes,
    timeout: float,
    *,
    eof: bool = False,
) -> None:
    """Write ``data`` (then the end of the response when ``eof``), each ``WRITE_PIECE`` of it
    within ``timeout`` seconds, else abort the connection and raise ``ClientGone``."""
    view = memoryview(data)
    try:
        if not response.prepared:
            async with deadline(timeout):
                await response.prepare(request)
        for start in range(0, len(view), WRITE_PIECE):
            async with deadline(timeout):
                await response.write(view[start : start + WRITE_PIECE])
        if eof:
            async with deadline(timeout):
                await response.write_eof()
    except (asyncio.TimeoutError, ConnectionError) as exc:
        abort(request)
        raise ClientGone(response) from exc


async def send_answer(
    request: web.Request, body: bytes, timeout: float, content_type: str = "application/json"
) -> web.StreamResponse:
    """A whole answer (``body``: its bytes) written before this returns (no piece of it stalling
    past ``timeout`` seconds), so that the caller's memory reservation covers it until sent."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(body)
    await write_within(request, response, body, timeout, eof=True)
    return response


async def copy_within(
    request: web.Request,
    response: web.StreamResponse,
    read,
    size: int,
    piece: int,
    timeout: float,
    what: str,
) -> None:
    """Write ``size`` bytes that ``read(n)`` (a coroutine: at most ``n`` bytes, ``b""`` at the
    end) gives, ``piece`` bytes at a time, each write within ``timeout`` (``write_within``).
    A source that ends early (``what``: for the message) aborts the answer: its length was
    already promised in Content-Length."""
    left = size
    while left > 0:
        chunk = await read(min(piece, left))
        if not chunk:  # the object shrank under us: the answer cannot be completed
            raise ConnectionAbortedError(f"{what} ended {left} bytes early")
        await write_within(request, response, chunk, timeout)
        left -= len(chunk)
