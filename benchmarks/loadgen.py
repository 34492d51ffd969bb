"""HTTP load against a real ``python -m server`` subprocess on 127.0.0.1 (never elsewhere).

- ``ModelServer``: the one launcher (``server_process.ServerProcess``) with ``--no-auth``, a
  models dir holding only the model under test, ``--provider``, ``--threads``,
  ``--max-batch-size`` and ``--instances`` (unset: the server measures it); reports the peak
  RSS (VmHWM) of the server process and ``card()``, the model's ``/v1/models`` entry.
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
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .server_process import LOOPBACK, ServerProcess
from .stats import summarize


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


class ModelServer(ServerProcess):
    """The server with ``--no-auth`` and a models dir holding only ``model_folder`` (linked as
    ``model_name``), the given provider, threads and batching; the models dir goes with it."""

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
        instances: int | None = None,
        static_shapes: int | None = None,
    ):
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-server-")
        models_dir = Path(self._tmp.name) / "models"
        models_dir.mkdir()
        (models_dir / model_name).symlink_to(Path(model_folder).resolve())
        args = [
            "--no-auth",
            "--models-dir",
            str(models_dir),
            "--default-model",
            model_name,
            "--provider",
            provider,
            "--max-batch-size",
            str(max_batch_size),
            "--max-queue",
            str(max_queue),
            "--request-timeout",
            str(request_timeout_s),
            "--shutdown-grace",
            "5",
            "--log-level",
            "WARNING",
        ]
        if threads:
            args += ["--threads", str(threads)]
        if instances is not None:
            args += ["--instances", str(instances)]
        if static_shapes is not None:  # None: the server's default (auto measures)
            args += ["--static-shapes", str(static_shapes)]
        self.model_name = model_name
        log = Path(log_dir or self._tmp.name) / (
            f"server-{model_name}-{provider.replace(':', '_')}-b{max_batch_size}.log"
        )
        super().__init__(args, log, ready_timeout_s=ready_timeout_s)

    def card(self) -> dict[str, Any]:
        """The model's ``GET /v1/models/{name}`` entry (what it runs with: provider, instances)."""
        import json
        import urllib.request

        url = f"{self.base}/v1/models/{self.model_name}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def stop(self, timeout: float = 30.0) -> int:
        rc = super().stop(timeout)
        self._tmp.cleanup()
        return rc


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
    """One request through the OpenAI SDK, with the payload's ``quality`` when it has one (the
    fast preset is reached as ``quality="low"``); checks the image decodes at width x height."""
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
        **({"quality": f["quality"]} if "quality" in f else {}),
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
