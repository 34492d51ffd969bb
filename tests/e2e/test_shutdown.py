"""Graceful shutdown of the real server: SIGTERM lets in-flight edits finish and the process exits
0. (New edits while draining get 503: tests/server/http/test_faults.py.)"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest

from tests.helpers import form, png


def _multipart(fields: dict[str, str], image: bytes, mask: bytes) -> tuple[bytes, str]:
    """(multipart/form-data body, its Content-Type) of an edit: the image, the mask, ``fields``."""
    mp = form(fields, [("image", image)], mask)
    return mp.body, mp.content_type


def _post(port: int, body: bytes, ctype: str, timeout: float = 60) -> tuple[int, bytes]:
    """POST an edit without auth; (status, body), error statuses included."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/images/edits",
        data=body,
        headers={"Content-Type": ctype},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.slow
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
        body, ctype = _multipart({"prompt": "fill"}, png(image), png(mask))
        result: dict = {}

        def call():
            result["status"] = _post(port, body, ctype)[0]

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


@pytest.mark.slow
def test_requests_outlasting_the_grace_get_503_and_the_process_exits_in_time(
    start_server, tiny_model_fp32, tmp_path
):
    """Several edits (JSON and stream) that outlast --shutdown-grace: each gets a clean 503 (an
    SSE error event on the stream), new edits get 503 at once while the listener is still up,
    and the process exits within grace + 2 s."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model_fp32, models / "tiny-sd")
    grace = 1.5
    srv, _ = start_server(
        [
            "--no-auth",
            "--models-dir",
            str(models),
            "--shutdown-grace",
            str(grace),
            "--max-batch-size",
            "1",
            "--max-queue",  # the 256x256 edits below cost more queue rows than the default holds
            "1000",
        ],
        ready_s=60,
    )
    port, proc = srv.port, srv.proc
    # 256x256: a 64x64 or 128x128 edit was short enough for a Zen 5 to finish the running
    # request within the grace. Slow CPUs do not lengthen the test: the shutdown aborts work at
    # its next step.
    image = png(np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    mask = np.full((256, 256, 4), 255, np.uint8)
    mask[64:192, 64:192, 3] = 0
    # 10 images x 150 steps each (the most steps), one row per UNet call: 1500 tiny-UNet calls
    # on 32x32 latents, seconds of work per request (the grace is 1.5 s)
    slow = {"prompt": "x", "steps": "150", "seed": "1", "n": "10"}
    json_body, ctype = _multipart(slow, image, png(mask))
    stream_body, _ = _multipart({**slow, "stream": "true"}, image, png(mask))
    results: dict[str, tuple[int, bytes]] = {}
    threads = [
        threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, _post(port, b, ctype)))
        for k, b in (("json-1", json_body), ("json-2", json_body), ("stream", stream_body))
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)  # all three are in: one running, two queued behind it
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = _post(port, json_body, ctype, timeout=5)  # the listener is still up
        assert status == 503 and b"shutting_down" in body
        for t in threads:
            t.join(30)
        code = proc.wait(30)
        elapsed = time.monotonic() - t0
        assert code == 0
        assert elapsed <= grace + 2.0, elapsed
        for key in ("json-1", "json-2"):
            status, body = results[key]
            assert status == 503, (key, status, body[:200])
            assert json.loads(body)["error"]["code"] == "shutting_down"
        status, body = results["stream"]
        assert status == 200  # the stream had started: its error travels as an event
        assert b"event: error" in body and b"shutting_down" in body
        log = srv.log.read_text()
        assert "outlast the" in log and "get 503" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
