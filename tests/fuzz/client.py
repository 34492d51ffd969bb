"""A tiny raw HTTP/1.1 client for the fuzz corpus: sends exactly the bytes of a :class:`Case`
(hostile headers, lying Content-Length, chunked bodies) to a loopback server and reads one
response, with a hard timeout. No HTTP library in between that would fix the request up."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from .corpus import Case

LOOPBACK = "127.0.0.1"


@dataclass
class Answer:
    status: int  # 0 = no answer (connection closed without a status line)
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def is_openai_error(self) -> bool:
        body = self.json()
        return (
            isinstance(body, dict)
            and set(body) == {"error"}
            and isinstance(body["error"], dict)
            and {"message", "type", "param", "code"} <= set(body["error"])
        )


def _request_bytes(case: Case, port: int, auth: str | None) -> bytes:
    headers = {k.lower(): (k, v) for k, v in case.headers.items()}
    if case.auth and auth:
        headers["authorization"] = ("Authorization", auth)
    body = case.body
    if headers.get("transfer-encoding", ("", ""))[1].lower() == "chunked":
        chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    elif "content-length" not in headers and (body or case.method in ("POST", "PUT", "PATCH")):
        headers["content-length"] = ("Content-Length", str(len(body)))
    headers["host"] = ("Host", f"{LOOPBACK}:{port}")
    headers["connection"] = ("Connection", "close")
    lines = [f"{case.method} {case.path} HTTP/1.1".encode()]
    lines += [
        k.encode() + b": " + v.encode("utf-8", "surrogateescape") for k, v in headers.values()
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return status, headers, await reader.read()


async def send(
    case: Case, port: int, *, auth: str | None = None, timeout_s: float = 30.0
) -> Answer:
    """Send one case to 127.0.0.1:port; raise asyncio.TimeoutError if no full answer in time."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout_s)
    try:

        async def exchange():
            try:
                writer.write(_request_bytes(case, port, auth))
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the server may answer (413, 400) and close before reading everything
            return await _read_response(reader, case.method)

        try:
            status, headers, body = await asyncio.wait_for(exchange(), timeout_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            return Answer(0, {}, b"", loop.time() - t0)
        return Answer(status, headers, body, loop.time() - t0)
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
