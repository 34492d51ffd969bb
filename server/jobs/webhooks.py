"""Webhooks as the Standard Webhooks specification defines them: who may be called, how a
call is signed, how it is sent, when it is retried.

- **Signature:** headers ``webhook-id`` (the same on every retry of one event),
  ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature:
  v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; the key is the base64 part of the
  ``whsec_`` secret (``--webhook-secret``), decoded.
- **Who may be called (SSRF):** ``http``/``https`` URLs only, no credentials in them; the host's
  addresses must all be public (``server/netpolicy.py``: no special-purpose range, also not
  inside an IPv6 translation prefix) unless ``--webhook-allow-private``. The check is
  made at submission and again at each delivery, and the connection goes to the address that
  was checked (a DNS answer that changes in between cannot redirect it). Redirects are not
  followed.
- **Retries:** an attempt fails on a non-2xx status, a timeout or a connection error; the
  next one comes ``backoff(attempt)`` seconds later, at most ``--webhook-retries`` times.
- **Sending:** ``post`` is a coroutine whose whole attempt (resolution, connection, TLS,
  request, the answer's status line) is bounded by ``--webhook-timeout``; only the name
  lookup runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import ssl
from concurrent.futures import Executor
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

from .. import netpolicy
from ..deadline import deadline
from ..protocol import ProtocolError
from .model import WEBHOOK_FIELD

SECRET_PREFIX = "whsec_"
#: the longest a retry waits, whatever the backoff doubling reaches
MAX_BACKOFF_S = 600.0
#: bytes of a receiver's answer read (and dropped) before the connection is closed
MAX_ANSWER_BYTES = 64 * 1024
HOW_TO_MAKE_A_SECRET = (
    "python -c \"import base64, secrets; print('whsec_' + "
    'base64.b64encode(secrets.token_bytes(32)).decode())"'
)


def parse_secret(secret: str) -> bytes:
    """The signing key of a ``whsec_<base64>`` secret (24..64 bytes, as the spec asks);
    ValueError saying how to make one."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise ValueError(
            "--webhook-secret: expected whsec_ followed by the base64 of 24 to 64 random "
            f"bytes; make one with: {HOW_TO_MAKE_A_SECRET}"
        )
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "inpaint-server-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }


def event_body(event_type: str, data: dict, now: float) -> bytes:
    """The Standard Webhooks envelope: ``{"type", "timestamp" (ISO 8601), "data"}``."""
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}).encode()


def backoff(attempt: int, first_s: float) -> float:
    """Seconds before the attempt after attempt number ``attempt`` (1-based) failed."""
    return min(MAX_BACKOFF_S, first_s * 2 ** (attempt - 1))


# ---------------------------------------------------------------- who may be called


def refuse(message: str) -> ProtocolError:
    return ProtocolError(f"Invalid '{WEBHOOK_FIELD}': {message}", WEBHOOK_FIELD, "invalid_value")


def check_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an acceptable webhook URL (``netpolicy.split_url``);
    ``ProtocolError`` otherwise."""
    try:
        return netpolicy.split_url(url)
    except netpolicy.AddressRefused as exc:
        hint = "; verify the signature instead" if "credentials" in str(exc) else ""
        raise refuse(f"{exc}{hint}.") from None


def allowed_addresses(host: str, infos: list, allow_private: bool) -> list[str]:
    """The addresses (from ``getaddrinfo``) a webhook may connect to; ``ProtocolError`` when
    there are none or, by default, when any of them is refused (``server/netpolicy.py``)."""
    try:
        return netpolicy.addresses_of(host, infos, allow_private)
    except netpolicy.AddressRefused as exc:
        raise _refused(exc) from None


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """Blocking ``getaddrinfo`` (none for a literal address) + ``allowed_addresses``."""
    try:
        return netpolicy.resolve(host, port, allow_private)
    except netpolicy.AddressRefused as exc:
        raise _refused(exc) from None


def _refused(exc: netpolicy.AddressRefused) -> ProtocolError:
    return refuse(
        f"{exc} (its operator can allow non-public addresses with --webhook-allow-private)."
    )


# ---------------------------------------------------------------- sending


#: a status line ``HTTP/1.1 204 No Content``: the status is all an attempt needs
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r?\n|$)")


def request_head(url: str, host: str, port: int, scheme: str, headers: dict[str, str], size: int):
    """The request line and headers of one attempt (``Connection: close``: one request per
    connection). Non-ASCII in the path is percent-encoded; ``check_url`` has refused spaces and
    control characters, so nothing here can split a header."""
    parts = urlsplit(url)
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_SAFE)
    name = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    default = 443 if scheme == "https" else 80
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {name}" + ("" if port == default else f":{port}"),
        f"Content-Length: {size}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


#: characters left as they are in a webhook URL's path and query (the rest is percent-encoded)
_SAFE = "/?&=;:@!$'()*+,~%-._"


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    allow_private: bool,
    *,
    resolver: Executor | None = None,
    tls: ssl.SSLContext | None = None,
):
    """POST ``body`` to ``url`` at an address ``resolve`` allowed; the response status, or
    the exception that ended the attempt.

    The whole attempt (name resolution, connection, TLS handshake, sending, and the answer's
    status line) has ``timeout_s`` seconds: a receiver that answers a byte at a time cannot
    make it last longer (``TimeoutError``). Only the status is read, then the connection is
    dropped. ``resolver``: the executor of the blocking ``resolve`` (an abandoned lookup
    finishes in its thread, no longer awaited); ``tls``: the context for https URLs (default:
    the system's CAs)."""
    loop = asyncio.get_running_loop()
    writer = None
    try:
        async with deadline(timeout_s):
            scheme, host, port = check_url(url)
            addresses = await loop.run_in_executor(resolver, resolve, host, port, allow_private)
            context = None
            if scheme == "https":
                context = tls or ssl.create_default_context()
            reader, writer = await asyncio.open_connection(
                addresses[0], port, ssl=context, server_hostname=host if context else None
            )
            writer.write(request_head(url, host, port, scheme, headers, len(body)) + body)
            await writer.drain()
            return await _status(reader)
    except (OSError, ValueError, ProtocolError, EOFError, asyncio.TimeoutError) as exc:
        return exc
    finally:
        if writer is not None:
            writer.transport.abort()  # no wait for a polite close: the attempt is over


async def _status(reader: asyncio.StreamReader) -> int:
    """The final status of the answer (informational 1xx answers skipped)."""
    while True:
        line = await reader.readline()
        found = _STATUS_LINE.match(line)
        if found is None:
            raise ValueError(f"not an HTTP/1.x status line: {line[:40]!r}")
        status = int(found.group(1))
        if status >= 200:
            return status
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # the 1xx answer's headers
