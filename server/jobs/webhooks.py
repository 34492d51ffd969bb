"""Webhooks as the Standard Webhooks specification defines them: who may be called, how a
call is signed, how it is sent, when it is retried.

- **Signature:** headers ``webhook-id`` (the same on every retry of one event),
  ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature:
  v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; the key is the base64 part of the
  ``whsec_`` secret (``--webhook-secret``), decoded.
- **Who may be called (SSRF):** ``http``/``https`` URLs only, no credentials in them; the host's
  addresses must all be public (``is_global``) unless ``--webhook-allow-private``. The check is
  made at submission and again at each delivery, and the connection goes to the address that
  was checked (a DNS answer that changes in between cannot redirect it). Redirects are not
  followed.
- **Retries:** an attempt fails on a non-2xx status, a timeout or a connection error; the
  next one comes ``backoff(attempt)`` seconds later, at most ``--webhook-retries`` times.

Delivery blocks (sockets): run it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ..protocol import ProtocolError
from .model import WEBHOOK_FIELD

SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048
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
    """``(scheme, host, port)`` of an acceptable webhook URL; ``ProtocolError`` otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise refuse(f"longer than {MAX_URL_CHARS} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("use an absolute http:// or https:// URL.")
    if parts.username is not None or parts.password is not None:
        raise refuse("credentials in the URL are not supported; verify the signature instead.")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise refuse("the URL contains spaces or control characters.")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def allowed_addresses(host: str, infos: list, allow_private: bool) -> list[str]:
    """The addresses (from ``getaddrinfo``) a webhook may connect to; ``ProtocolError`` when
    there are none or, by default, when any of them is not public."""
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise refuse(f"the host {host[:80]!r} has no address.")
    if not allow_private:
        private = [a for a in addresses if not _public(a)]
        if private:
            raise refuse(
                f"the host {host[:80]!r} resolves to a non-public address ({private[0]}); "
                "this server calls only public addresses (its operator can allow others with "
                "--webhook-allow-private)."
            )
    return addresses


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """Blocking ``getaddrinfo`` + ``allowed_addresses``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise refuse(f"the host {host[:80]!r} does not resolve.") from None
    return allowed_addresses(host, infos, allow_private)


# ---------------------------------------------------------------- sending


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, allow_private: bool):
    """POST ``body`` to ``url`` at an address ``resolve`` allowed; the response status, or
    the exception that ended the attempt. Blocking."""
    try:
        scheme, host, port = check_url(url)
        address = resolve(host, port, allow_private)[0]
        sock = socket.create_connection((address, port), timeout=timeout_s)
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        conn.sock = sock  # connected to the checked address; Host names the URL's host
        try:
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(MAX_ANSWER_BYTES)
            return response.status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ProtocolError) as exc:
        return exc
