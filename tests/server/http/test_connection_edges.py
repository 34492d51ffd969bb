"""What happens before a handler runs: ``Expect: 100-continue`` on every route (answered only
after authentication) and malformed requests (logged briefly, rate-limited, no traceback)."""

from __future__ import annotations

import asyncio
import logging

from server.http.access_log import ProtocolErrorLogger
from server.http.middlewares import PUBLIC_PATHS, PUBLIC_PREFIXES
from tests.helpers import AUTH

#: generous bound for a busy machine (not a speed target)
ANSWER_S = 30.0


async def first_answer(cl, request: bytes) -> bytes:
    """The first bytes the server sends after ``request`` (headers only; no body is sent)."""
    reader, writer = await asyncio.open_connection(cl.host, cl.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_S)
    finally:
        writer.close()


def expecting(method: str, path: str, auth: bool) -> bytes:
    key = f"Authorization: {AUTH['Authorization']}\r\n" if auth else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{key}Expect: 100-continue\r\n"
        "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    ).encode()


def authenticated_routes(cl) -> list[tuple[str, str]]:
    """(method, path) of every route behind auth, its variables filled in."""
    out = []
    for route in cl.server.app.router.routes():
        path = route.resource.canonical.replace("{id}", "x").replace("{name}", "x")
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if route.method not in ("HEAD", "GET") and not public:
            out.append((route.method, path))
    return out


async def test_no_route_sends_100_continue_before_auth(client):
    routes = authenticated_routes(client)
    assert ("DELETE", "/v1/images/jobs/x") in routes and ("POST", "/v1/images/edits") in routes
    for method, path in routes:
        answer = await first_answer(client, expecting(method, path, auth=False))
        assert answer.startswith(b"HTTP/1.1 401"), (method, path, answer[:80])


async def test_100_continue_after_auth(client):
    answer = await first_answer(client, expecting("DELETE", "/v1/images/jobs/x", auth=True))
    assert answer.startswith(b"HTTP/1.1 100 Continue"), answer[:80]
    # a public route needs no key
    answer = await first_answer(client, expecting("GET", "/health", auth=False))
    assert answer.startswith(b"HTTP/1.1 100 Continue"), answer[:80]


MALFORMED = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBroken Header\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
)


async def test_malformed_requests_are_logged_briefly(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        for _ in range(10):
            for request in MALFORMED:
                status_line = (await first_answer(client, request)).split(b"\r\n")[0]
                assert status_line.split(b" ")[1] == b"400", status_line
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert all(r.levelno < logging.WARNING and not r.exc_info for r in records), [
        (r.levelname, r.getMessage()) for r in records
    ]
    # 30 malformed requests within a minute: one line (the next minute's says how many more)
    assert len(records) == 1
    assert records[0].getMessage().startswith("malformed request from 127.0.0.1 answered 400")


def test_the_next_line_counts_what_was_left_out(caplog):
    from aiohttp.http_exceptions import BadStatusLine

    now = [0.0]
    logger = ProtocolErrorLogger(
        logging.getLogger("test.protocol"), every_s=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="test.protocol"):
        for step in range(5):
            now[0] = step * 20.0  # 0, 20, 40: one line; 60: the next, counting two
            logger.exception(
                "Error handling request from %s", "192.0.2.1", exc_info=BadStatusLine("x")
            )
        logger.exception("Unhandled exception", exc_info=RuntimeError("a bug"))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["INFO", "INFO", "ERROR"]
    assert lines[1][1].endswith("(2 more since the last such line)")
    assert caplog.records[2].exc_info is not None  # a real fault keeps its traceback
