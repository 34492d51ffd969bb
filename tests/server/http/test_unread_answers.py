"""Clients that do not read their answer, hang up, or pause a chunked upload: what they hold is
counted in the memory budget, for a bounded time (``--write-timeout``), and they are counted
under status 499 in the metrics, not 500.

The clients here are raw sockets with a 4 KiB receive buffer: an answer of several MB (noise
images compress to nothing) fills the kernel's buffers, and the server's writes wait."""

from __future__ import annotations

import asyncio
import re
import socket

import numpy as np
import pytest

from server.http.state import BUDGET
from tests.helpers import AUTH, EDITS, FakeModel, alpha_mask, edit_form, png, registry

SIDE = 1024
#: noise: its PNG does not compress, so n=3 answers hold ~12 MB of base64
NOISE = png(np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
NOISE_MASK = png(alpha_mask(SIDE, SIDE, (100, 100, 300, 300)))
#: generous bounds for a busy 2-core machine (not speed targets)
SETTLE_S = 60.0


async def app_client(make_client, **settings):
    return await make_client(registry(FakeModel(), default="fake"), **settings)


async def raw_request(cl, head: str, body: bytes = b"", rcvbuf: int = 4096) -> socket.socket:
    """A socket with a tiny receive buffer that has sent ``head`` (lines, no blank line) and
    ``body``; the caller decides whether it ever reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: no autotune
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (cl.host, cl.port))
    await loop.sock_sendall(sock, head.encode() + b"\r\n" + body)
    return sock


async def unread_edit(cl, **fields) -> socket.socket:
    """A big edit (n=3 noise images, ~12 MB answer) sent on a socket that never reads."""
    mp = edit_form(NOISE, NOISE_MASK, n=3, **fields)
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {mp.content_type}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {len(mp.body)}\r\n"
    )
    return await raw_request(cl, head, mp.body)


async def readable(sock: socket.socket) -> None:
    """Until the socket has bytes to read (it is not read)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, SETTLE_S)
    finally:
        loop.remove_reader(sock.fileno())


async def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), SETTLE_S)
        except ConnectionResetError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


async def edit_statuses(cl) -> dict[str, float]:
    """The metrics' request counts of the edits route, by status label."""
    text = await (await cl.get("/metrics")).text()
    found = re.findall(
        r'inpaint_requests_total\{route="/v1/images/edits",status="(\d+)"\} (\S+)', text
    )
    return {status: float(count) for status, count in found}


async def until(condition, what: str) -> None:
    """Poll the async ``condition`` until true, within the generous ``SETTLE_S``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + SETTLE_S
    while not await condition():
        assert loop.time() < end, f"not within {SETTLE_S} s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unread_answer_is_cut_at_the_write_deadline(make_client, stream):
    cl = await app_client(make_client, write_timeout=1.0)
    budget = cl.server.app[BUDGET]
    sock = await unread_edit(cl, stream=str(stream).lower())
    try:
        await until(lambda: _has_status(cl), "the edit ended")
        # the client never read: the answer was cut, counted as the client's hang-up
        assert await edit_statuses(cl) == {"499": 1.0}
        assert budget.used == 0  # its reservation went with it
        answer = await read_all(sock)  # what the buffers held, then the end of the connection
    finally:
        sock.close()
    # what the kernel's buffers held, then a closed connection: far less than the ~12 MB answer
    assert len(answer) < 8 << 20
    # the server goes on answering
    assert (await cl.get("/health")).status == 200


async def _has_status(cl) -> bool:
    return bool(await edit_statuses(cl))


async def test_an_unread_answer_stays_in_the_memory_budget(make_client):
    # one big edit fits (~84 MB estimated + its body + its ~12 MB answer), two do not
    cl = await app_client(make_client, memory_budget_mb=150, write_timeout=600.0)
    budget = cl.server.app[BUDGET]
    sock = await unread_edit(cl)
    try:
        await readable(sock)  # the answer is being written; the client reads none of it
        assert budget.used > 8 << 20
        mp = edit_form(NOISE, NOISE_MASK, n=3)
        resp = await cl.post(EDITS, data=mp.body, headers=mp.headers())
        assert resp.status == 429, await resp.text()
        assert resp.headers["Retry-After"]
    finally:
        sock.close()  # the client hangs up: the write fails, the reservation goes
    await until(lambda: _released(budget), "the reservation was released")
    await until(lambda: _has_status(cl), "the edit was counted")
    assert await edit_statuses(cl) == {"429": 1.0, "499": 1.0}
    resp = await cl.post(EDITS, data=mp.body, headers=mp.headers())
    assert resp.status == 200
    assert len(await resp.read()) > 8 << 20


async def _released(budget) -> bool:
    return budget.used == 0


async def test_a_client_that_hangs_up_during_the_edit_counts_as_499(make_client):
    model = FakeModel(delay=1.0)
    cl = await make_client(registry(model, default="fake"))
    mp = edit_form(NOISE, NOISE_MASK)
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {mp.content_type}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {len(mp.body)}\r\n"
    )
    sock = await raw_request(cl, head, mp.body)
    await until(lambda: _started(model), "the model is running the edit")
    sock.close()
    await until(lambda: _has_status(cl), "the edit ended")
    assert await edit_statuses(cl) == {"499": 1.0}


async def _started(model: FakeModel) -> bool:
    return model.started.is_set()


async def test_a_paused_chunked_upload_is_refused_once_the_budget_is_full(make_client):
    # bytes of a chunked body count as they arrive: past the 1 MB budget, 429 mid-upload
    # (before: nothing counted until the end, and a paused upload waited for --read-timeout)
    cl = await app_client(make_client, memory_budget_mb=1, read_timeout=20.0)
    mp = edit_form(NOISE, NOISE_MASK)
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {mp.content_type}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nTransfer-Encoding: chunked\r\n"
    )
    part = mp.body[: 3 << 19]  # 1.5 MB of it, in 64 KiB chunks, then a pause
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part[i : i + 65536]), part[i : i + 65536])
        for i in range(0, len(part), 65536)
    )
    sock = await raw_request(cl, head, b"", rcvbuf=1 << 16)
    loop = asyncio.get_running_loop()
    try:
        try:
            await loop.sock_sendall(sock, chunks)
        except ConnectionError:
            pass  # refused mid-way: the answer is waiting all the same
        answer = await read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    assert b"rate_limit_exceeded" in answer
    await until(lambda: _released(cl.server.app[BUDGET]), "the reservation was released")
