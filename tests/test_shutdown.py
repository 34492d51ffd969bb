"""Graceful shutdown: SIGTERM lets in-flight edits finish, new ones get 503, the process exits 0."""

from __future__ import annotations

import io
import signal
import threading
import time
import urllib.request

import numpy as np
from PIL import Image

from benchmarks.server_process import ServerProcess
from server.config import make_config


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "----testboundary7"
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        )
    for k, data in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def test_sigterm_finishes_in_flight_edit_and_exits_zero(tmp_path):
    srv = ServerProcess(
        ["--no-auth", "--models-dir", str(tmp_path), "--shutdown-grace", "20"],
        tmp_path / "server.log",
    )
    port = srv.port
    proc = srv.proc
    try:
        srv.wait_ready(30)
        # A slow edit: a large region of a large image keeps the built-in model busy ~1 s.
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
        mask = np.full((2048, 2048, 4), 255, np.uint8)
        mask[200:1800, 200:1800, 3] = 0
        body, ctype = _multipart({"prompt": "fill"}, {"image": _png(image), "mask": _png(mask)})
        result: dict = {}

        def call():
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/images/edits",
                data=body,
                headers={"Content-Type": ctype},
                method="POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    result["status"] = resp.status
            except urllib.error.HTTPError as err:
                result["status"] = err.code

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.8)  # the upload is in and the edit is running
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result.get("status") == 200, result
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_draining_app_answers_503(aiohttp_client):
    from server.http.app import create_app
    from server.http.state import STATE

    app = create_app(make_config(no_auth=True))
    client = await aiohttp_client(app)
    app[STATE].draining = True
    resp = await client.post("/v1/images/edits", data={"prompt": "x"})
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "shutting_down"
    assert (await client.get("/ready")).status == 503
    assert (await client.get("/health")).status == 200
