"""A webhook receiver for tests: a real HTTP server on loopback (``http.server`` in a thread)
that records each POST and answers with the statuses it is given, and a signature verifier
written from the Standard Webhooks specification (independently of ``server/jobs/webhooks.py``,
so that a bug there cannot hide in both).

The spec, as implemented by ``verify``: the signed content is ``"{webhook-id}.{webhook-timestamp}.
{body}"``; the key is the base64 decoding of the secret after its ``whsec_`` prefix; the
signature is HMAC-SHA256, base64-encoded; ``webhook-signature`` is a space-separated list of
``v1,<signature>`` entries, any of which may match; the timestamp must be within a tolerance
of now (5 minutes) to refuse replays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


class InvalidSignature(Exception):
    pass


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> None:
    """Raise InvalidSignature unless ``body`` with ``headers`` is signed with ``secret``."""
    headers = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not stamp or not signatures:
        raise InvalidSignature("missing webhook headers")
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > TOLERANCE_S:
        raise InvalidSignature("timestamp outside the tolerance")
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for entry in signatures.split(" "):
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected):
            return
    raise InvalidSignature("no matching v1 signature")


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """``with Receiver([500, 500]) as r:`` POSTs to ``r.url`` get 500, 500, then 204 forever;
    ``r.calls`` lists what arrived; ``r.wait(n)`` blocks until n calls have."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.calls: list[Call] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._arrived:
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                    receiver.calls.append(Call(self.path, dict(self.headers), body, time.time()))
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/inpaint?x=1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def wait(self, n: int, timeout: float = 30.0) -> list[Call]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.calls) >= n, timeout)
            return list(self.calls)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class DripReceiver:
    """A hostile receiver: it accepts every connection and answers one byte every ``every_s``
    seconds (a status line, then an endless header), never finishing, until it is closed. An
    HTTP client that bounds only each socket read waits on it forever.

    ``with DripReceiver() as r:`` POST to ``r.url``; ``r.connections`` counts the connections
    accepted (``r.wait(n)`` blocks until n have been)."""

    def __init__(self, every_s: float = 0.3) -> None:
        self.every_s = every_s
        self.connections = 0
        self._arrived = threading.Condition()
        self._closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/slow"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._arrived:
                self.connections += 1
                self._arrived.notify_all()
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
        with conn:
            for i in range(len(answer)):
                if self._closed.wait(self.every_s):
                    return
                try:
                    conn.sendall(answer[i : i + 1])
                except OSError:
                    return

    def wait(self, n: int, timeout: float = 30.0) -> int:
        with self._arrived:
            self._arrived.wait_for(lambda: self.connections >= n, timeout)
            return self.connections

    def __enter__(self) -> DripReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._sock.close()
