"""Soak / overload test (``make soak``): the real server on loopback, driven at twice its measured
capacity for a bounded time with a mix of valid and invalid requests.

1. start ``python -m server`` on 127.0.0.1 (own port, key, files dir, small queue);
2. calibrate: closed loop, 2 x ``max_batch_size`` clients of valid edits -> capacity (requests/s);
3. load: open loop, valid rows offered at ``--load`` x capacity (default 2x) for ``--duration`` s or
   ``--max-requests``, whichever ends first: ~60% valid edits (b64 or url), ~35% invalid
   (truncated image, missing prompt, wrong key (from its own address, 127.0.0.2: the per-address
   throttle must stop it without locking out the rest), decompression-bomb header, body over the limit,
   bad size), ~5% clients that hang up mid-request, and hostile uploads: gzip bodies, a large
   JSON body, a megabyte of multipart preamble, and small files asking for a lot of pixels
   (2048x2048 and 4096x4096 canvases, n=2) that only the memory budget keeps in check;
   meanwhile a prober times ``GET /health`` every 50 ms;
4. settle, then compare with the state after warm-up: RSS of the server process (sampled every
   2 s), open file descriptors, threads, files in the files dir (exactly one per url image served,
   no partial writes).

Pass: every request answered with 200/400/401/413/415/429/504 (nothing else, no client timeout),
RSS growth <= ``--max-rss-growth-mb``, fd growth <= ``--max-fd-growth``, no orphan files, /health
200 at the end and its p99 latency under load <= ``--max-health-p99-ms``, peak RSS (VmHWM) no
more than ``--memory-budget-mb`` above the RSS after start-up. Exit status 0 = pass. Loopback
only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from PIL import Image

from .memory import vm_hwm_mb
from .server_process import ServerProcess

#: the source address of the wrong-key client (any 127/8 address reaches a loopback listener)
GUESSER_ADDRESS = "127.0.0.2"
EXPECTED = {200, 400, 401, 413, 415, 429, 504}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def make_payloads(side: int, region: int) -> dict[str, tuple[dict, list[tuple[str, bytes]]]]:
    """name -> (text fields, [(part name, bytes)]). A noisy image so the inpaint has work to do."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    mask = np.full((side, side, 4), 255, np.uint8)
    o = (side - region) // 2
    mask[o : o + region, o : o + region, 3] = 0
    img_png, mask_png = png(img), png(mask)
    bomb = png(np.zeros((8, 8, 3), np.uint8))
    bomb = bomb[:16] + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big") + bomb[24:]
    return {
        "valid": ({"prompt": "fill"}, [("image", img_png), ("mask", mask_png)]),
        "valid-url": (
            {"prompt": "fill", "response_format": "url"},
            [("image", img_png), ("mask", mask_png)],
        ),
        "valid-n2-jpeg": (
            {"prompt": "fill", "n": "2", "output_format": "jpeg"},
            [("image", img_png), ("mask", mask_png)],
        ),
        "truncated": ({"prompt": "x"}, [("image", img_png[: len(img_png) // 2])]),
        "no-prompt": ({}, [("image", img_png)]),
        "bomb-header": ({"prompt": "x"}, [("image", bomb)]),
        "bad-size": ({"prompt": "x", "size": "100x7"}, [("image", img_png)]),
        "too-big": ({"prompt": "x"}, [("image", img_png + os.urandom(3 * 1024 * 1024))]),
        # hostile uploads (see ``one`` for how the gzip, JSON and preamble ones are sent)
        "pixels-2k": (
            {"prompt": "x", "n": "2"},
            [("image", canvas(2048)), ("mask", canvas_mask(2048))],
        ),
        "pixels-4k": ({"prompt": "x"}, [("image", canvas(4096)), ("mask", canvas_mask(4096))]),
        "gzip": ({"prompt": "fill"}, [("image", img_png), ("mask", mask_png)]),
        "json-big": ({"prompt": "fill", "pad": "p" * (1536 * 1024)}, [("image", img_png)]),
        "preamble": ({"prompt": "fill"}, [("image", img_png), ("mask", mask_png)]),
    }


def canvas(side: int) -> bytes:
    """A smooth side x side image: a small PNG that decodes to many pixels."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    img = np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1).astype(np.uint8)
    return png(img)


def canvas_mask(side: int) -> bytes:
    mask = np.full((side, side, 4), 255, np.uint8)
    mask[side // 2 - 32 : side // 2 + 32, side // 2 - 32 : side // 2 + 32, 3] = 0
    return png(mask)


MIX = [
    ("valid", 45),
    ("valid-url", 10),
    ("valid-n2-jpeg", 5),
    ("truncated", 8),
    ("no-prompt", 7),
    ("bomb-header", 5),
    ("bad-size", 5),
    ("too-big", 3),
    ("wrong-key", 7),
    ("hang-up", 5),
    ("pixels-2k", 2),
    ("pixels-4k", 1),
    ("gzip", 2),
    ("json-big", 2),
    ("preamble", 2),
]


#: valid rows (images to compute) per request of the mix: valid 45%, url 10%, n=2 5% x 2
VALID_ROWS_PER_REQUEST = (45 + 10 + 5 * 2) / sum(w for _, w in MIX)


def form(fields: dict, files: list[tuple[str, bytes]]) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    for name, data in files:
        fd.add_field(name, data, filename=f"{name}.png", content_type="image/png")
    for k, v in fields.items():
        fd.add_field(k, v)
    return fd


class Stats:
    def __init__(self) -> None:
        self.status: Counter = Counter()
        self.by_kind: dict[str, Counter] = {}
        self.unexpected: list[str] = []
        self.url_ok = 0
        self.aborted = 0
        self.latency: list[float] = []

    def record(self, kind: str, status: int | str, seconds: float) -> None:
        self.status[status] += 1
        self.by_kind.setdefault(kind, Counter())[status] += 1
        if status == 200:
            self.latency.append(seconds)
        if status not in EXPECTED:
            self.unexpected.append(f"{kind}: {status}")


async def one(
    session: aiohttp.ClientSession,
    base: str,
    key: str,
    kind: str,
    payloads,
    stats: Stats,
    timeout_s: float,
) -> None:
    t0 = time.monotonic()
    name = "valid" if kind in ("wrong-key", "hang-up") else kind
    fields, files = payloads[name]
    headers = {"Authorization": f"Bearer {'sk-wrong' if kind == 'wrong-key' else key}"}
    data = hostile_body(kind, fields, files, headers)
    if data is None:
        data = form(fields, files)
    try:
        if kind == "hang-up":
            try:
                async with session.post(
                    f"{base}/v1/images/edits",
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=0.05),
                ):
                    pass
            except (asyncio.TimeoutError, aiohttp.ClientError):
                pass
            stats.aborted += 1
            return
        async with session.post(
            f"{base}/v1/images/edits",
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            body = await resp.read()
            # a 429 says when to retry, or that no retry helps (a request over the whole
            # memory budget: x-should-retry false)
            final = resp.headers.get("x-should-retry") == "false"
            if resp.status == 429 and "Retry-After" not in resp.headers and not final:
                stats.unexpected.append(f"{kind}: 429 with neither Retry-After nor x-should-retry")
            if resp.status >= 400:
                err = json.loads(body).get("error", {})
                if not {"message", "type", "param", "code"} <= set(err):
                    stats.unexpected.append(f"{kind}: {resp.status} body not OpenAI-shaped")
                if kind != "wrong-key" and "failed authentications" in str(err.get("message")):
                    stats.unexpected.append(f"{kind}: throttled for another address's failures")
            elif kind == "valid-url":
                stats.url_ok += 1
            stats.record(kind, resp.status, time.monotonic() - t0)
    except asyncio.TimeoutError:
        stats.record(kind, "client-timeout", time.monotonic() - t0)
    except aiohttp.ClientError as exc:
        # the server may answer 413 and close before the whole body is sent
        stats.record(kind, f"conn-error:{type(exc).__name__}", time.monotonic() - t0)


def hostile_body(kind: str, fields: dict, files: list, headers: dict) -> bytes | None:
    """Raw bodies for the hostile kinds that a form cannot express (``headers`` gets their
    Content-Type / Content-Encoding); None for the others."""
    boundary = "soakBoundary" + kind
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{n}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + d
        + b"\r\n"
        for n, d in files
    ) + b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    multipart = parts + f"--{boundary}--\r\n".encode()
    if kind == "gzip":
        headers.update(
            {
                "Content-Encoding": "gzip",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            }
        )
        return gzip.compress(multipart)
    if kind == "preamble":
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        return b"x" * (1024 * 1024) + b"\r\n" + multipart
    if kind == "json-big":
        headers["Content-Type"] = "application/json"
        url = "data:image/png;base64," + base64.b64encode(files[0][1]).decode()
        return json.dumps({**fields, "images": [{"image_url": url}]}).encode()
    return None


async def probe_health(base: str, stop: asyncio.Event, latencies: list[float]) -> None:
    """GET /health every 50 ms until ``stop``; each answer's seconds into ``latencies``
    (a failed probe counts as 10 s)."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                async with session.get(
                    f"{base}/health", timeout=aiohttp.ClientTimeout(total=10)
                ) as r:
                    await r.read()
                    latencies.append(time.monotonic() - t0 if r.status == 200 else 10.0)
            except (asyncio.TimeoutError, aiohttp.ClientError):
                latencies.append(10.0)
            await asyncio.sleep(0.05)


def server_state(proc: psutil.Process, files_dir: Path) -> dict:
    """The server's resources; ``files``: what the files dir holds besides the job database
    (``jobs.sqlite3`` and its WAL files live there by default), i.e. url images and partials."""
    from server.database import SQLITE_FILE

    files = list(files_dir.iterdir()) if files_dir.exists() else []
    files = [f for f in files if not f.name.startswith(SQLITE_FILE)]
    return {
        "rss_mb": proc.memory_info().rss / 2**20,
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "files": len(files),
        "partial_files": sum(1 for f in files if f.name.endswith(".part")),
    }


async def calibrate(base: str, key: str, payloads, clients: int, seconds: float) -> float:
    """Valid edits/s with ``clients`` closed-loop clients (enough to keep every batch full);
    the first 2 s (warm-up) are not counted."""
    done = 0
    start = time.monotonic() + 2.0
    end = start + seconds
    stats = Stats()
    async with aiohttp.ClientSession() as session:

        async def loop():
            nonlocal done
            while time.monotonic() < end:
                await one(session, base, key, "valid", payloads, stats, 60)
                if time.monotonic() > start:
                    done += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.monotonic() - start
    if stats.status.get(200, 0) == 0:
        raise RuntimeError(f"calibration got no 200: {dict(stats.status)}")
    return done / elapsed


async def load(
    base: str,
    key: str,
    payloads,
    rate: float,
    duration: float,
    max_requests: int,
    timeout_s: float,
    max_in_flight: int,
    proc: psutil.Process,
    files_dir: Path,
    samples: list,
) -> tuple[Stats, int, float]:
    stats = Stats()
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    rnd = random.Random(7)
    tasks: set[asyncio.Task] = set()
    sent = 0
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    # the key guesser comes from its own loopback address: the server's failed-authentication
    # throttle (per address) must stop it without locking out the other clients
    guesser = aiohttp.TCPConnector(limit=max_in_flight, local_addr=(GUESSER_ADDRESS, 0))
    t0 = time.monotonic()
    next_sample = t0
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        aiohttp.ClientSession(connector=guesser) as guessing,
    ):
        while sent < max_requests and time.monotonic() - t0 < duration:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, server_state(proc, files_dir)["rss_mb"]))
                next_sample = now + 2.0
            kind = rnd.choices(kinds, weights)[0]
            via = guessing if kind == "wrong-key" else session
            task = asyncio.ensure_future(one(via, base, key, kind, payloads, stats, timeout_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))  # open loop
        elapsed = time.monotonic() - t0
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 30)
    return stats, sent, elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=150.0, help="seconds of load (bounded)")
    ap.add_argument("--max-requests", type=int, default=20000, help="upper bound on requests sent")
    ap.add_argument(
        "--load", type=float, default=2.0, help="offered load as a multiple of capacity"
    )
    ap.add_argument("--calibrate", type=float, default=8.0, help="seconds of capacity measurement")
    ap.add_argument("--side", type=int, default=384, help="image side of valid requests")
    ap.add_argument("--region", type=int, default=160, help="edit region side of valid requests")
    ap.add_argument("--max-batch-size", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--request-timeout", type=float, default=15.0)
    ap.add_argument("--max-in-flight", type=int, default=128)
    ap.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of load before the baseline"
    )
    ap.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    ap.add_argument("--memory-budget-mb", type=float, default=512.0, help="the server's budget")
    ap.add_argument("--max-health-p99-ms", type=float, default=100.0)
    ap.add_argument("--max-fd-growth", type=int, default=16)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="inpaint-soak-"))
    files_dir = work / "files"
    key = "sk-soak-" + secrets.token_hex(8)
    server = ServerProcess.builtin_only(
        key,
        work,
        [
            "--max-batch-size",
            str(args.max_batch_size),
            "--max-queue",
            str(args.max_queue),
            "--request-timeout",
            str(args.request_timeout),
            "--max-body-mb",
            "2",
            "--memory-budget-mb",
            str(args.memory_budget_mb),
            "--log-level",
            "WARNING",
        ],
    )
    base = server.base
    failures: list[str] = []
    try:
        proc = psutil.Process(server.pid)
        server.wait_ready()
        payloads = make_payloads(args.side, args.region)
        before = server_state(proc, files_dir)
        clients = 2 * args.max_batch_size
        capacity = asyncio.run(calibrate(base, key, payloads, clients, args.calibrate))
        # offered valid work (rows) = load x capacity; the invalid requests come on top
        rate = args.load * capacity / VALID_ROWS_PER_REQUEST
        print(
            f"capacity {capacity:.1f} valid req/s (closed loop, {clients} clients); "
            f"offered {rate:.1f} req/s = {rate * VALID_ROWS_PER_REQUEST:.1f} valid rows/s "
            f"({args.load:g}x capacity) + invalid ones, for {args.duration:g} s "
            f"(max {args.max_requests} requests)"
        )
        samples: list[tuple[float, float]] = []
        health_latency: list[float] = []
        started_rss = before["rss_mb"]

        async def run_all():
            # warm-up at full load, then the baseline, then the measured soak
            warm, wsent, _ = await load(
                base,
                key,
                payloads,
                rate,
                args.warmup,
                args.max_requests,
                args.request_timeout + 30,
                args.max_in_flight,
                proc,
                files_dir,
                [],
            )
            await asyncio.sleep(2)
            baseline = server_state(proc, files_dir)
            stop = asyncio.Event()
            prober = asyncio.ensure_future(probe_health(base, stop, health_latency))
            res = await load(
                base,
                key,
                payloads,
                rate,
                args.duration,
                args.max_requests - wsent,
                args.request_timeout + 30,
                args.max_in_flight,
                proc,
                files_dir,
                samples,
            )
            stop.set()
            await prober
            return warm, baseline, res

        warm, baseline, (stats, sent, elapsed) = asyncio.run(run_all())
        time.sleep(3)  # connections close, the queue drains
        after = server_state(proc, files_dir)
        health = asyncio.run(_health(base))
        answered = sum(stats.status.values())
        ok = stats.status.get(200, 0)
        lat = sorted(stats.latency)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99)] if lat else float("nan")
        rss = [r for _, r in samples]
        print(
            f"sent {sent} in {elapsed:.0f} s ({sent / elapsed:.1f} req/s), answered {answered}, "
            f"hung up by the client on purpose {stats.aborted}; 200s {ok} "
            f"({ok / elapsed:.1f}/s), latency of 200s p50 {p50:.2f} s p99 {p99:.2f} s"
        )
        print("statuses: " + " ".join(f"{s}:{n}" for s, n in sorted(stats.status.items(), key=str)))
        for kind, c in sorted(stats.by_kind.items()):
            print(f"  {kind:14s} " + " ".join(f"{s}:{n}" for s, n in sorted(c.items(), key=str)))
        print(f"server before load: {_fmt(before)}")
        print(f"after warm-up:      {_fmt(baseline)}")
        print(f"after soak:         {_fmt(after)}")
        if rss:
            print(
                f"RSS during soak: min {min(rss):.0f} MB, max {max(rss):.0f} MB "
                f"({len(rss)} samples every 2 s)"
            )
        print(f"/health after: {health}")
        hl = sorted(health_latency)
        h99 = hl[int(len(hl) * 0.99)] * 1000 if hl else float("nan")
        print(
            f"/health under load: {len(hl)} probes, p50 {hl[len(hl) // 2] * 1000:.1f} ms, "
            f"p99 {h99:.1f} ms, max {hl[-1] * 1000:.1f} ms"
        )
        peak = vm_hwm_mb(server.pid)
        print(
            f"peak RSS (VmHWM) {peak:.0f} MB = {peak - started_rss:.0f} MB above start-up "
            f"(memory budget {args.memory_budget_mb:g} MB)"
        )
        if h99 > args.max_health_p99_ms:
            failures.append(f"/health p99 {h99:.0f} ms under load (> {args.max_health_p99_ms:g})")
        if peak - started_rss > args.memory_budget_mb:
            failures.append(
                f"peak RSS {peak - started_rss:.0f} MB above start-up > budget "
                f"{args.memory_budget_mb:g} MB"
            )
        growth = after["rss_mb"] - baseline["rss_mb"]
        if stats.unexpected:
            failures.append(
                f"{len(stats.unexpected)} unexpected answers, e.g. {stats.unexpected[:5]}"
            )
        if answered + stats.aborted != sent:
            failures.append(f"{sent - answered - stats.aborted} requests never answered")
        if growth > args.max_rss_growth_mb:
            failures.append(f"RSS grew {growth:.0f} MB (> {args.max_rss_growth_mb:g})")
        if after["fds"] - baseline["fds"] > args.max_fd_growth:
            failures.append(f"fds grew {baseline['fds']} -> {after['fds']}")
        if after["partial_files"]:
            failures.append(f"{after['partial_files']} partial files left in the files dir")
        urls = warm.url_ok + stats.url_ok
        if after["files"] != urls:
            failures.append(f"{after['files']} files in the files dir for {urls} url images served")
        if health != 200:
            failures.append(f"/health answered {health}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "capacity_rps": capacity,
                        "offered_rps": rate,
                        "sent": sent,
                        "seconds": elapsed,
                        "answered": answered,
                        "aborted": stats.aborted,
                        "statuses": {str(k): v for k, v in stats.status.items()},
                        "before": before,
                        "baseline": baseline,
                        "after": after,
                        "rss_samples": samples,
                        "p50_s": p50,
                        "p99_s": p99,
                        "health_p99_ms": h99,
                        "peak_rss_mb": peak,
                        "memory_budget_mb": args.memory_budget_mb,
                        "failures": failures,
                    },
                    indent=1,
                )
            )
    finally:
        server.stop()
    log_text = (work / "server.log").read_text(errors="replace")
    if key in log_text:
        failures.append("the API key appears in the server log")
    internal = log_text.count("internal error (incident")
    if internal:
        failures.append(f"{internal} internal errors (500) in the server log")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures) + f"\n(server log: {work / 'server.log'})")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("PASS")
    return 0


def _fmt(s: dict) -> str:
    return (
        f"RSS {s['rss_mb']:.0f} MB, fds {s['fds']}, threads {s['threads']}, "
        f"files {s['files']} (partial {s['partial_files']})"
    )


async def _health(base: str) -> int:
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0


if __name__ == "__main__":
    sys.exit(main())
