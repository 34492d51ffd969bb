"""HTTP load against a real ``python -m server`` subprocess on 127.0.0.1 (never elsewhere).

- ``ServerProcess``: starts the server on a free loopback port with ``--no-auth``, a models dir
  holding only the model under test, ``--provider``, ``--threads`` and ``--max-batch-size``;
  waits for ``/ready``; stops it with SIGTERM (SIGKILL after a grace period); reports the peak
  RSS (VmHWM) of the server process.
- ``closed_loop``: ``concurrency`` clients, each sending its next request as soon as its last
  one returned, ``total`` requests in all: throughput (images/s) and per-request latency.
- ``open_loop``: Poisson arrivals (exponential gaps, seeded) at ``rate`` requests/s, ``n``
  requests, latency from the scheduled send time. Bounded: at most ``max_in_flight`` requests
  outstanding (more are counted as ``shed`` and not sent) and a wall-clock ``deadline_s``.
- ``sdk_edit``: one request through the official OpenAI SDK (the documented client path),
  checking that the returned image decodes at the requested size.

Requests are raw aiohttp multipart posts (a single event loop: the client must stay light on
2 cores; it still takes a little CPU from the server, as a real co-located client would).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .memory import vm_hwm_mb
from .stats import summarize

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
ENV_DROP = (
    "API_KEYS",
    "API_KEYS_FILE",
    "NO_AUTH",
    "MODELS_DIR",
    "DEFAULT_MODEL",
    "HOST",
    "PORT",
    "MAX_BATCH_SIZE",
    "THREADS",
    "PROVIDER",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def check_loopback(base_url: str) -> None:
    from urllib.parse import urlparse

    host = urlparse(base_url).hostname
    if host != LOOPBACK:
        raise ValueError(f"the load generator only targets {LOOPBACK}, not {host!r}")


@dataclass
class Payload:
    """One edit request's multipart content (bytes reused; a fresh form is built per request)."""

    image_png: bytes
    mask_png: bytes
    fields: dict[str, str]


class ServerProcess:
    def __init__(
        self,
        model_folder: Path,
        model_name: str,
        *,
        provider: str,
        threads: int | None,
        max_batch_size: int,
        request_timeout_s: float,
        max_queue: int = 64,
        log_dir: Path | None = None,
        ready_timeout_s: float = 1200,
    ):
        self.model_folder = Path(model_folder)
        self.model_name = model_name
        self.provider = provider
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.request_timeout_s = request_timeout_s
        self.max_queue = max_queue
        self.ready_timeout_s = ready_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-server-")
        self.log_path = Path(log_dir or self._tmp.name) / (
            f"server-{model_name}-{provider.replace(':', '_')}-b{max_batch_size}.log"
        )
        self.port = free_port()
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.peak_rss_mb: float | None = None

    def cmd(self, models_dir: Path) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "server",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--no-auth",
            "--models-dir",
            str(models_dir),
            "--default-model",
            self.model_name,
            "--provider",
            self.provider,
            "--max-batch-size",
            str(self.max_batch_size),
            "--max-queue",
            str(self.max_queue),
            "--request-timeout",
            str(self.request_timeout_s),
            "--shutdown-grace",
            "5",
            "--log-level",
            "WARNING",
        ]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def __enter__(self) -> ServerProcess:
        models_dir = Path(self._tmp.name) / "models"
        models_dir.mkdir()
        (models_dir / self.model_name).symlink_to(self.model_folder.resolve())
        env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd(models_dir), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_ready(self) -> None:
        end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"server not ready after {self.ready_timeout_s:.0f} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.peak_rss_mb = vm_hwm_mb(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def __exit__(self, *exc) -> None:
        self.stop()
        self._tmp.cleanup()


# ----------------------------------------------------------------------------- requests


def _form(payload: Payload):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("image", payload.image_png, filename="image.png", content_type="image/png")
    form.add_field("mask", payload.mask_png, filename="mask.png", content_type="image/png")
    for k, v in payload.fields.items():
        form.add_field(k, str(v))
    return form


async def _one(session, url: str, payload: Payload) -> tuple[float, int, str]:
    """(latency s, HTTP status or 0 for a client error, error text)."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=_form(payload)) as resp:
            body = await resp.read()
            status = resp.status
    except (asyncio.TimeoutError, OSError, Exception) as exc:  # noqa: BLE001
        return time.perf_counter() - t0, 0, f"{type(exc).__name__}: {exc}"[:200]
    latency = time.perf_counter() - t0
    if status == 200 and b'"b64_json"' not in body:
        return latency, status, "200 without b64_json"
    return latency, status, "" if status == 200 else body[:200].decode(errors="replace")


def _session(limit: int, timeout_s: float):
    import aiohttp

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=limit + 4),
    )


def _result(latencies: list[float], errors: Counter, wall_s: float, **extra) -> dict[str, Any]:
    return {
        **extra,
        "ok": len(latencies),
        "errors": dict(errors),
        "wall_s": wall_s,
        "throughput_img_s": len(latencies) / wall_s if wall_s > 0 else None,
        "latency_s": summarize(latencies),
        "latencies_s": list(latencies),
    }


async def closed_loop(
    base: str, payload: Payload, concurrency: int, total: int, timeout_s: float
) -> dict[str, Any]:
    check_loopback(base)
    url = base + "/v1/images/edits"
    latencies: list[float] = []
    errors: Counter = Counter()
    counter = itertools.count()

    async with _session(concurrency, timeout_s) as session:

        async def client() -> None:
            while next(counter) < total:
                lat, status, err = await _one(session, url, payload)
                if status == 200 and not err:
                    latencies.append(lat)
                else:
                    errors[str(status)] += 1
                    _LAST_ERROR[0] = err

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    out = _result(latencies, errors, wall, concurrency=concurrency, requests=total)
    if errors:
        out["last_error"] = _LAST_ERROR[0]
    return out


_LAST_ERROR = [""]


def poisson_schedule(rate: float, n: int, seed: int = 0) -> list[float]:
    """Send times (s from start) of ``n`` Poisson arrivals at ``rate`` per second."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


async def open_loop(
    base: str,
    payload: Payload,
    rate: float,
    n: int,
    timeout_s: float,
    deadline_s: float,
    max_in_flight: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    check_loopback(base)
    url = base + "/v1/images/edits"
    schedule = poisson_schedule(rate, n, seed)
    latencies: list[float] = []
    errors: Counter = Counter()
    shed = 0
    in_flight = 0
    async with _session(max_in_flight, timeout_s) as session:
        t0 = time.perf_counter()

        async def send(at: float) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                lat, status, err = await _one(session, url, payload)
                # latency from the scheduled time: includes any client-side lateness
                lat += max(0.0, (time.perf_counter() - t0 - lat) - at)
                if status == 200 and not err:
                    latencies.append(lat)
                else:
                    errors[str(status)] += 1
                    _LAST_ERROR[0] = err
            finally:
                in_flight -= 1

        tasks = []
        for at in schedule:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - t0 > deadline_s:
                break
            if in_flight >= max_in_flight:
                shed += 1
                continue
            tasks.append(asyncio.ensure_future(send(at)))
        left = max(1.0, deadline_s - (time.perf_counter() - t0))
        done, pending = await asyncio.wait(tasks, timeout=left) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - t0
    out = _result(
        latencies,
        errors,
        wall,
        rate_rps=rate,
        requests=n,
        sent=len(tasks),
        shed=shed,
        unfinished=len(pending),
    )
    out["offered_rps"] = rate
    return out


def sdk_edit(
    base: str, payload: Payload, model: str, width: int, height: int, timeout_s: float
) -> dict[str, Any]:
    """One request through the OpenAI SDK; checks the image decodes at width x height."""
    check_loopback(base)
    from openai import OpenAI
    from PIL import Image

    client = OpenAI(base_url=base + "/v1", api_key="sk-benchmark", timeout=timeout_s, max_retries=0)
    f = payload.fields
    t0 = time.perf_counter()
    result = client.images.edit(
        model=model,
        image=("image.png", payload.image_png, "image/png"),
        mask=("mask.png", payload.mask_png, "image/png"),
        prompt=f["prompt"],
        n=1,
        size=f["size"],
        response_format="b64_json",
        extra_body={k: f[k] for k in ("seed", "steps", "guidance_scale") if k in f},
    )
    latency = time.perf_counter() - t0
    img = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    if img.size != (width, height):
        raise RuntimeError(f"SDK response image is {img.size}, wanted {(width, height)}")
    return {
        "latency_s": latency,
        "size": list(img.size),
        "usage": result.usage.model_dump() if result.usage else None,
    }
