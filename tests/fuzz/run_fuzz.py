"""The fuzz campaign (``make fuzz``): start the real server on loopback, fire the whole malformed
corpus (tests/fuzz/corpus.py), a slow-upload probe and schemathesis' generated cases, then check
the server is still healthy.

Pass criteria: no 5xx, no hang (per-request timeout), no request left without an answer, every
case with an exact expectation gets it, ``/health`` 200 afterwards, the API key never printed by
the server. Prints counts per category and per status; exit status 0 = pass.

    python -m tests.fuzz.run_fuzz [--max-examples 100] [--no-schemathesis] [--timeout 30]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from benchmarks.server_process import ServerProcess
from benchmarks.soak import probe_health

from .client import LOOPBACK, send
from .corpus import EDITS, MP_TYPE, Case, build_corpus, enc, file_part, multipart, part, scene

ROOT = Path(__file__).resolve().parents[2]


def start_server(key: str, work: Path) -> ServerProcess:
    server = ServerProcess.builtin_only(key, work, ["--log-level", "INFO"], ready_timeout_s=60)
    server.__enter__()
    return server


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=5) as r:
            return r.status
    except OSError:
        return 0


async def slow_upload(port: int, key: str, stall_s: float) -> tuple[int, float]:
    """Send the headers and half a body, then stall: the server must answer 408 by itself."""
    body = multipart([file_part("image", enc(scene(), "PNG")), part("prompt", b"x")])
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {MP_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), stall_s)
        return int(line.split()[1]) if line else 0, time.monotonic() - t0
    except asyncio.TimeoutError:
        return -1, time.monotonic() - t0
    finally:
        writer.close()


async def run_corpus(cases: list[Case], port: int, key: str, timeout_s: float, concurrency: int):
    sem = asyncio.Semaphore(concurrency)
    results: list[tuple[Case, int, str]] = []

    async def one(case: Case) -> None:
        async with sem:
            try:
                ans = await send(case, port, auth=f"Bearer {key}", timeout_s=timeout_s)
                note = ""
                if 400 <= ans.status < 500 and case.method != "HEAD" and not ans.is_openai_error():
                    note = "non-openai-error-body"
                if key.encode() in ans.body or any(key in v for v in ans.headers.values()):
                    note = "KEY-LEAKED"
                results.append((case, ans.status, note))
            except (asyncio.TimeoutError, OSError) as exc:
                results.append((case, -1, f"no answer in {timeout_s:g}s ({type(exc).__name__})"))

    await asyncio.gather(*(one(c) for c in cases))
    return results


def run_schemathesis(
    port: int, key: str, max_examples: int, timeout_s: float, cwd: Path
) -> tuple[int, str]:
    exe = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    if not Path(exe).exists():
        return -1, "schemathesis is not installed (pip install -e '.[dev]')"
    cmd = [
        exe,
        "run",
        f"http://{LOOPBACK}:{port}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--request-timeout",
        str(timeout_s),
        "--max-response-time",
        str(timeout_s),
        "--workers",
        "1",
        "-H",
        f"Authorization: Bearer {key}",
        "--phases",
        "examples,coverage,fuzzing",
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return 1, "schemathesis did not finish in 900 s"
    return out.returncode, (out.stdout + out.stderr).replace(key, "<key>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument(
        "--max-examples", type=int, default=100, help="schemathesis examples per operation"
    )
    ap.add_argument("--no-schemathesis", action="store_true")
    ap.add_argument(
        "--stall",
        type=float,
        default=45.0,
        help="how long the slow-upload probe waits for the server's 408 (its read timeout is 30 s)",
    )
    ap.add_argument("--max-health-p99-ms", type=float, default=100.0)
    args = ap.parse_args(argv)

    key = "sk-fuzz-" + secrets.token_hex(12)
    work = Path(tempfile.mkdtemp(prefix="inpaint-fuzz-"))
    server = start_server(key, work)
    port, log_path = server.port, server.log
    failures: list[str] = []
    try:
        cases = build_corpus()
        t0 = time.monotonic()

        health_s: list[float] = []  # /health latencies while the corpus runs

        async def campaign():
            stop = asyncio.Event()
            prober = asyncio.ensure_future(probe_health(server.base, stop, health_s))
            slow = asyncio.ensure_future(slow_upload(port, key, args.stall))
            res = await run_corpus(cases, port, key, args.timeout, args.concurrency)
            stop.set()
            await prober
            return res, await slow

        results, (slow_status, slow_s) = asyncio.run(campaign())
        hl = sorted(health_s)
        h99 = hl[int(len(hl) * 0.99)] * 1000
        print(
            f"/health during the corpus: {len(hl)} probes, p50 {hl[len(hl) // 2] * 1000:.1f} ms, "
            f"p99 {h99:.1f} ms, max {hl[-1] * 1000:.1f} ms"
        )
        if h99 > args.max_health_p99_ms:
            failures.append(
                f"/health p99 {h99:.0f} ms during the corpus (> {args.max_health_p99_ms:g})"
            )
        corpus_s = time.monotonic() - t0
        by_status = Counter(status for _, status, _ in results)
        by_cat: dict[str, Counter] = {}
        for case, status, note in results:
            by_cat.setdefault(case.category, Counter())[status] += 1
            if status >= 500 or status <= 0:
                failures.append(f"{case.name}: status {status} {note}")
            elif case.expect is not None and status not in case.expect:
                failures.append(f"{case.name}: status {status}, expected {sorted(case.expect)}")
            if note == "KEY-LEAKED":
                failures.append(f"{case.name}: the API key appears in the response")
        non_openai = [c.name for c, _, n in results if n == "non-openai-error-body"]
        print(f"corpus: {len(results)} cases in {corpus_s:.1f} s")
        for cat, counter in by_cat.items():
            print(
                f"  {cat:14s} {sum(counter.values()):4d}  "
                + " ".join(f"{s}:{n}" for s, n in sorted(counter.items()))
            )
        print("  statuses: " + " ".join(f"{s}:{n}" for s, n in sorted(by_status.items())))
        if non_openai:
            print(
                f"  4xx without an OpenAI error body (answered by aiohttp's HTTP parser before the "
                f"app): {len(non_openai)}: {', '.join(non_openai[:10])}"
            )
        print(f"slow upload: status {slow_status} after {slow_s:.1f} s")
        if slow_status != 408:
            failures.append(f"slow upload: status {slow_status}, expected 408")

        if not args.no_schemathesis:
            t1 = time.monotonic()
            rc, out = run_schemathesis(
                port, key, args.max_examples, args.timeout, work
            )  # cache there
            tail = "\n".join(out.strip().splitlines()[-(40 if rc else 12) :])
            counts = re.search(r"(\d+) generated, (\d+) passed", out)
            print(
                f"schemathesis (max {args.max_examples} examples/operation, "
                f"{time.monotonic() - t1:.0f} s), exit {rc}"
                + (
                    f": {counts.group(1)} cases generated, {counts.group(2)} passed"
                    if counts
                    else ""
                )
                + f"\n{tail}"
            )
            if rc != 0:
                failures.append(f"schemathesis exit status {rc}")
        status = health(port)
        alive = server.proc.poll() is None
        print(f"/health after: {status}; server process alive: {alive}")
        if status != 200 or not alive:
            failures.append("server unhealthy after the campaign")
    finally:
        server.stop()
    log_text = log_path.read_text(errors="replace")
    if key in log_text:
        failures.append("the API key appears in the server's log")
    internal = log_text.count("internal error (incident")
    print(
        f"server log: {len(log_text.splitlines())} lines, {internal} internal errors "
        f"(kept at {log_path})"
    )
    if internal:
        failures.append(f"{internal} internal errors in the server log")
    if failures:
        print(f"FAIL: {len(failures)} problems")
        for f in failures[:50]:
            print("  " + f)
        return 1
    shutil.rmtree(work / "files", ignore_errors=True)
    print("PASS: no 5xx, no hang, every case answered, server healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
