"""Graceful shutdown of the real server: SIGTERM lets in-flight edits finish and the process exits
0. (New edits while draining get 503: tests/server/http/test_faults.py.)"""

from __future__ import annotations

import io
import signal
import threading
import time
import urllib.request

import numpy as np
from PIL import Image


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


def test_sigterm_finishes_in_flight_edit_and_exits_zero(start_server, tmp_path):
    srv, _ = start_server(
        ["--no-auth", "--models-dir", str(tmp_path), "--shutdown-grace", "20"], ready_s=30
    )
    port = srv.port
    proc = srv.proc
    try:
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
