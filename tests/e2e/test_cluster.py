"""The local cluster end to end (``make cluster``: ``python -m benchmarks.cluster``): three
replicas of the real server behind HAProxy, sharing PostgreSQL (jobs) and SeaweedFS (url
images, job uploads and results), serving the exported tiny SD model. The launcher runs as
``make cluster`` runs it (its own process group, stopped by a Ctrl-C to that group); clients are
the official OpenAI SDK with its default retries.

The drill (``test_a_killed_replica_loses_no_job_and_no_request``): reference images first, then
async jobs and a stream of synchronous edits through the balancer; the replica that is running
both a job and a synchronous edit gets SIGKILL. Every job must complete exactly once (on
another replica for the killed one's), with the reference's pixels; every synchronous call must
succeed, the only non-2xx answers being the balancer's retryable 502/503 (and 429); every
result is read back from a replica other than the one that made it, and every url from the
bucket with plain urllib. Then Ctrl-C must leave no process, port or schema behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx2
import numpy as np
import openai
import psutil
import psycopg
import pytest

from benchmarks.cluster import balancer_view, haproxy_binary, render_haproxy
from benchmarks.server_process import ROOT
from server.config import without_server_env
from tests.helpers import alpha_mask, b64_image, decode_image, missing_package, png, scene
from tests.postgres import missing as no_postgres

KEY = "sk-e2e-cluster"
REPLICAS = 3
LEASE_S = 3
START_S = 240.0
SIDE = 64
BOX = (16, 16, 48, 48)
IMG, MASK = png(scene(SIDE, SIDE, BOX)), png(alpha_mask(SIDE, SIDE, BOX))
#: steps x rows long enough that jobs and edits are still running when the replica dies
STEPS, N = 150, 2
#: request seeds; image i of a request uses seed + i, so these give 6 distinct images
SEEDS = (11, 22, 33)
JOBS = 12
SYNC_THREADS = 3
#: synchronous edits per thread at most (each stops one edit after the kill)
SYNC_MAX = 10
#: the answers a client may see; 502/503 only for synchronous edits cut by the kill
ALLOWED = {200, 202, 429, 502, 503}
#: a row's image does not depend on its batch company: at most 1 uint8 level over HTTP (README)
TOLERANCE = 2
#: the runner's log line when it settles a job (server/jobs/runner.py)
SETTLED = re.compile(r"job (job_[0-9a-f]{32}) succeeded \(attempt (\d+)\)")
ASYNC = "respond-async"
FINISHED = ("succeeded", "failed", "cancelled")


# ---------------------------------------------------------------- the launcher
def skip_without_tools(*, postgres: bool = True) -> None:
    """Skip the test on a machine without Debian's haproxy (the balancer) or, with
    ``postgres``, without a PostgreSQL (the jobs): packages, not something the test got wrong."""
    try:
        haproxy_binary()
    except RuntimeError:
        pytest.skip(missing_package("haproxy", "no haproxy binary"))
    if postgres and (reason := no_postgres()):
        pytest.skip(reason)


@dataclass
class Launched:
    """``python -m benchmarks.cluster`` in a process group of its own, and its state file."""

    proc: subprocess.Popen
    state: dict
    log: Path

    def ctrl_c(self, timeout: float = 120.0) -> int:
        """What a terminal's Ctrl-C does: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def sigterm(self, timeout: float = 120.0) -> int:
        """SIGTERM to the launcher only."""
        self.proc.terminate()
        return self.proc.wait(timeout)


def launch(run_dir: Path, models: Path, *server_args: str, replicas: int = REPLICAS) -> Launched:
    skip_without_tools()
    state_file = run_dir / "state.json"
    log = run_dir / "launcher.log"
    args = [sys.executable, "-m", "benchmarks.cluster", "--port", "0"]
    args += ["--replicas", str(replicas), "--models-dir", str(models), "--api-key", KEY]
    args += ["--lease-seconds", str(LEASE_S), "--run-dir", str(run_dir / "run")]
    args += ["--state-file", str(state_file), "--", *server_args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**without_server_env(dict(os.environ)), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group, as a terminal gives `make cluster`
        )
    end = time.monotonic() + START_S
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(60)
            pytest.fail(f"the cluster did not start:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)
    return Launched(proc, json.loads(state_file.read_text()), log)


@pytest.fixture(scope="module")
def cluster(tiny_model_fp32, tmp_path_factory):
    models = tmp_path_factory.mktemp("cluster-models")
    shutil.copytree(tiny_model_fp32, models / "tiny-sd")
    launched = launch(
        tmp_path_factory.mktemp("cluster"),
        models,
        *("--provider", "cpu", "--max-batch-size", "4"),  # 4 rows: two jobs (n=2) at a time
    )
    yield launched
    if launched.proc.poll() is None:  # a test failed before the Ctrl-C test ran
        launched.ctrl_c()


# ---------------------------------------------------------------- what the clients saw
class Traffic(httpx2.HTTPTransport):
    """The SDK clients' transport: records every HTTP exchange, retries included, as
    (path, async?, status or the transport error, replica that answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[str, bool, int | str, str | None]] = []
        self.lock = threading.Lock()
        self.clients: dict[str, openai.OpenAI] = {}

    def handle_request(self, request):
        is_async = ASYNC in request.headers.get("prefer", "")
        try:
            response = super().handle_request(request)
        except Exception as exc:
            with self.lock:
                self.answers.append((request.url.path, is_async, repr(exc), None))
            raise
        replica = response.headers.get("x-inpaint-replica")
        with self.lock:
            self.answers.append((request.url.path, is_async, response.status_code, replica))
        return response

    def client(self, base: str) -> openai.OpenAI:
        """The SDK client of ``base``, with the SDK's default retries (2) and backoff."""
        if base not in self.clients:
            http = openai.DefaultHttpxClient(transport=self)
            self.clients[base] = openai.OpenAI(
                base_url=base + "/v1", api_key=KEY, http_client=http, timeout=180
            )
        return self.clients[base]


def edit(client: openai.OpenAI, seed: int, fmt: str, headers: dict | None = None):
    return client.images.with_raw_response.edit(
        image=("photo.png", IMG, "image/png"),
        mask=("mask.png", MASK, "image/png"),
        prompt="a wooden bench",
        n=N,
        response_format=fmt,
        extra_body={"seed": seed, "steps": STEPS},
        extra_headers=headers,
    )


def images(data: list[dict], s3_endpoint: str) -> list[np.ndarray]:
    """A response's images: b64 decoded, urls downloaded from the bucket with plain urllib (no
    credentials: the presigned link is the whole authorisation)."""
    out = []
    for item in data:
        if item.get("url"):
            parts = urlsplit(item["url"])
            assert f"{parts.scheme}://{parts.netloc}" == s3_endpoint, item["url"]
            assert "X-Amz-Signature=" in item["url"]
            with urllib.request.urlopen(item["url"], timeout=30) as r:
                out.append(decode_image(r.read())[0])
        else:
            out.append(b64_image(item))
    return out


def same_image(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    diff = np.abs(got.astype(int) - want.astype(int)).max()
    assert diff <= TOLERANCE, f"{what}: max |diff| {diff} uint8 levels"


def metric(base: str, name: str, label: str = "") -> float:
    """Sum of a metric's samples on the replica at ``base`` (only those whose labels contain
    ``label``)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for labels, v in found if label in labels)


def settled_by(log: str) -> Counter:
    """job id -> how many times this replica's log says it settled it as succeeded."""
    text = Path(log).read_text(errors="replace")
    return Counter(m.group(1) for m in SETTLED.finditer(text))


# ---------------------------------------------------------------- the jobs table
def pid_of(worker: str) -> int:
    """A lease holder's pid: the runner names itself host-pid-random (server/jobs)."""
    return int(worker.rsplit("-", 2)[1])


class Watcher(threading.Thread):
    """Polls the jobs table every 50 ms: ``seen[(job, status, worker pid)]`` = when first seen,
    ``last`` = the latest rows."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[tuple, float] = {}
        self.last: dict[str, dict] = {}
        self.done = threading.Event()
        self.error: Exception | None = None

    def rows(self, conn) -> dict[str, dict]:
        cur = conn.execute(
            "SELECT id, status, worker, attempts, lease_until, steps_done, steps_total "
            "FROM inpaint_jobs"
        )
        names = [c.name for c in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.done.is_set():
                    now = time.time()
                    self.last = self.rows(conn)
                    for job, row in self.last.items():
                        worker = pid_of(row["worker"]) if row["worker"] else None
                        self.seen.setdefault((job, row["status"], worker), now)
                    time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def running_on(self) -> Counter:
        """pid -> how many jobs it is running."""
        rows = self.last.values()
        return Counter(pid_of(r["worker"]) for r in rows if r["status"] == "running")


# ---------------------------------------------------------------- tests
def test_the_balancer_config_retries_connections_only(tmp_path):
    """The rendered HAProxy config is valid (``haproxy -c``) and says what the cluster needs."""
    skip_without_tools(postgres=False)
    cfg = render_haproxy(18080, 18081, [("replica-1", 18001), ("replica-2", 18002)])
    (tmp_path / "haproxy.cfg").write_text(cfg)
    check = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True
    )
    assert check.returncode == 0, check.stderr.decode()
    lines = {
        " ".join(line.split()) for line in cfg.splitlines() if not line.lstrip().startswith("#")
    }
    assert "retry-on conn-failure" in lines  # never a replay of a request a replica received
    assert not [x for x in lines if x.startswith("retry-on") and x != "retry-on conn-failure"]
    assert {"balance roundrobin", "option redispatch 1", "option httpchk"} <= lines
    assert "http-check send meth GET uri /ready ver HTTP/1.1 hdr Host 127.0.0.1" in lines
    assert "http-check expect status 200" in lines
    assert {"timeout client 15m", "timeout server 15m"} <= lines  # > --request-timeout 600 s
    assert "server replica-2 127.0.0.1:18002 check" in lines


class SyncStream:
    """``SYNC_THREADS`` threads sending synchronous edits through the balancer, one after the
    other, until one edit started after ``killed`` is set has returned (or ``SYNC_MAX``)."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        self.killed = threading.Event()
        #: (seed, response data, the replica that answered)
        self.results: list[tuple[int, list[dict], str | None]] = []
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(SYNC_THREADS)]
        for thread in self.threads:
            thread.start()

    def _run(self, t: int) -> None:
        try:
            for k in range(SYNC_MAX):
                seed, fmt = SEEDS[(t + k) % len(SEEDS)], ("b64_json", "url")[(t + k) % 2]
                after_kill = self.killed.is_set()
                raw = edit(self.client, seed, fmt)
                data = raw.parse().model_dump()["data"]
                self.results.append((seed, data, raw.headers.get("x-inpaint-replica")))
                if after_kill:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(300)


def choose_victim(replicas: list[dict], watcher: Watcher, stats_url: str) -> dict:
    """The replica running the most jobs (jobs table) among those also running a synchronous
    edit (HAProxy's requests in flight)."""
    end = time.monotonic() + 90
    while time.monotonic() < end:
        running = watcher.running_on()
        view = balancer_view(stats_url)
        busy = [r for r in replicas if running[r["pid"]] and int(view[r["name"]]["scur"]) > 0]
        if busy:
            return max(busy, key=lambda r: running[r["pid"]])
        time.sleep(0.05)
    raise AssertionError(f"no replica ran a job and an edit at once: {watcher.last}")


def wait_settled(watcher: Watcher, count: int, timeout: float = 180.0) -> dict[str, dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert watcher.error is None, f"reading the jobs table failed: {watcher.error!r}"
        rows = watcher.last
        if len(rows) == count and all(r["status"] in FINISHED for r in rows.values()):
            break
        time.sleep(0.1)
    watcher.done.set()
    watcher.join(10)
    return watcher.last


@pytest.mark.slow
def test_a_killed_replica_loses_no_job_and_no_request(cluster):
    state = cluster.state
    s3, replicas = state["s3"]["endpoint"], state["replicas"]
    traffic = Traffic()
    balancer = traffic.client(state["url"])

    # 1. reference images: one synchronous edit per seed (n=2: seeds s and s+1)
    reference: dict[int, np.ndarray] = {}
    for seed in SEEDS:
        for i, img in enumerate(
            images(edit(balancer, seed, "b64_json").parse().model_dump()["data"], s3)
        ):
            reference[seed + i] = img
    inside = (slice(BOX[1], BOX[3]), slice(BOX[0], BOX[2]))
    a, b = reference[SEEDS[0]][inside].astype(int), reference[SEEDS[1]][inside].astype(int)
    assert np.abs(a - b).mean() > 5 * TOLERANCE, "seeds barely matter: pixel checks are void"

    # 2. async jobs through the balancer (a retried submission would keep its Idempotency-Key)
    watcher = Watcher(state["database_url"])
    watcher.start()
    jobs: dict[str, tuple[int, str]] = {}  # id -> (seed, response_format)
    for j in range(JOBS):
        seed, fmt = SEEDS[j % len(SEEDS)], ("url", "b64_json")[j % 2]
        raw = edit(balancer, seed, fmt, {"Prefer": ASYNC, "Idempotency-Key": str(uuid.uuid4())})
        assert raw.status_code == 202, raw.http_response.text
        jobs[json.loads(raw.http_response.text)["id"]] = (seed, fmt)
    assert len(jobs) == JOBS
    # every submission is in: the replicas' counts are final (the victim's cannot be read later)
    submitted = sum(metric(r["url"], "inpaint_jobs_submitted_total") for r in replicas)

    # 3. synchronous edits keep coming; the replica running a job and an edit is SIGKILLed
    stream = SyncStream(balancer)
    victim = choose_victim(replicas, watcher, state["stats_url"])
    os.kill(victim["pid"], signal.SIGKILL)
    t_kill = time.time()
    stream.killed.set()
    at_kill = watcher.last
    survivors = [r for r in replicas if r is not victim]
    stream.join()
    assert not stream.errors, (
        f"a synchronous edit failed despite the SDK's retries: {stream.errors!r}"
    )
    rows = wait_settled(watcher, JOBS)

    # every job succeeded, settled exactly once
    assert set(rows) == set(jobs), "the jobs table holds exactly the accepted jobs"
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    assert all(r["steps_done"] == r["steps_total"] > 0 for r in rows.values()), rows
    settled = {r["name"]: settled_by(r["log"]) for r in replicas}
    total = sum(settled.values(), Counter())
    assert total == Counter(set(jobs)), f"each job settled exactly once: {total}"
    finisher = {job: name for name, done in settled.items() for job in done}
    # the victim's jobs (those it had not settled in the instant before the kill) ran again on
    # a survivor once their lease had expired
    held = {
        job
        for job, r in at_kill.items()
        if r["worker"] and pid_of(r["worker"]) == victim["pid"] and finisher[job] != victim["name"]
    }
    assert held, "the victim held no job lease when it was killed"
    assert all(rows[job]["attempts"] >= 2 for job in held), {j: rows[j] for j in held}
    recovered = sum(metric(r["url"], "inpaint_jobs_recovered_total") for r in survivors)
    assert recovered >= len(held)
    # the table and the metrics agree
    assert submitted == JOBS
    for r in survivors:
        succeeded = metric(r["url"], "inpaint_jobs_finished_total", 'status="succeeded"')
        assert succeeded == sum(settled[r["name"]].values()), r["name"]

    # every job's result, read from a replica that did not make it, has the reference's pixels
    for job, (seed, fmt) in jobs.items():
        reader = next(r for r in survivors if r["name"] != finisher[job])
        body = traffic.client(reader["url"]).get(f"/images/jobs/{job}", cast_to=object)
        data = body["result"]["data"]
        assert [("url" in d) for d in data] == [fmt == "url"] * N, data
        for i, img in enumerate(images(data, s3)):
            same_image(img, reference[seed + i], f"job {job} image {i} (seed {seed + i})")

    # every synchronous edit succeeded with the reference's pixels, wherever it ran; the urls
    # made by the killed replica still download (they are the bucket's, not the replica's)
    for seed, data, made_by in stream.results:
        assert made_by is not None
        for i, img in enumerate(images(data, s3)):
            same_image(img, reference[seed + i], f"sync edit by {made_by}, seed {seed + i}")

    # what the clients saw: nothing but 200/202/429, and 502/503 for synchronous edits only
    statuses = Counter(status for _, _, status, _ in traffic.answers)
    assert set(statuses) <= ALLOWED, statuses  # a transport error (no answer) included
    cut = [a for a in traffic.answers if a[2] in (502, 503)]
    assert all(path.endswith("/images/edits") and not is_async for path, is_async, *_ in cut)
    assert cut, "no synchronous edit was cut by the kill: the drill did not test the retries"
    assert f"{victim['name']} (pid {victim['pid']}) exited with -9" in cluster.log.read_text()

    finished = {job: watcher.seen[(job, "succeeded", None)] for job in jobs}
    reclaimed = [
        t
        for (job, status, pid), t in watcher.seen.items()
        if job in held and status == "running" and pid not in (None, victim["pid"])
    ]
    figures = {
        "replicas": REPLICAS,
        "lease_s": LEASE_S,
        "jobs_submitted": JOBS,
        "jobs_completed": len(rows),
        "jobs_on_killed_replica": len(held),
        "lease_left_at_kill_s": round(max(at_kill[j]["lease_until"] for j in held) - t_kill, 2),
        "kill_to_first_reclaim_s": round(min(reclaimed) - t_kill, 2) if reclaimed else None,
        "kill_to_killed_jobs_done_s": round(max(finished[j] for j in held) - t_kill, 2),
        "kill_to_all_jobs_done_s": round(max(finished.values()) - t_kill, 2),
        "sync_edits": len(stream.results),
        "answers_by_status": dict(sorted(statuses.items())),
    }
    print("cluster drill:", json.dumps(figures))


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stops_cleanly(launched: Launched, stop) -> None:
    """``stop()`` (returns the launcher's exit code) must end every process the launcher
    started, close every port and drop the jobs schema."""
    state = launched.state
    family = psutil.Process(launched.proc.pid).children(recursive=True)
    pids = {p.pid for p in family}
    assert {r["pid"] for r in state["replicas"] if psutil.pid_exists(r["pid"])} <= pids
    assert {state["haproxy"]["pid"], state["s3"]["pid"]} <= pids
    assert stop() == 0, launched.log.read_text()[-3000:]
    left = [p for p in family if alive(p)]
    assert not left, f"left running: {[(p.pid, p.name()) for p in left]}"
    urls = [state["url"], state["stats_url"], state["s3"]["endpoint"]]
    for url in urls + [r["url"] for r in state["replicas"]]:
        parts = urlsplit(url)
        with pytest.raises(OSError), socket.create_connection((parts.hostname, parts.port), 1):
            pass
    schema = unquote(urlsplit(state["database_url"]).query).split("search_path=")[1]
    with psycopg.connect(state["database_url"].split("?")[0]) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchall()
    assert not found, f"schema {schema} left behind"
    assert "Cluster stopped." in launched.log.read_text()


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_leaves_nothing(cluster):
    """Ctrl-C in the terminal: SIGINT to the launcher and the replicas (its process group)."""
    stops_cleanly(cluster, cluster.ctrl_c)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_everything_too(tmp_path):
    """SIGTERM to the launcher alone (a service manager's stop): it stops the rest itself. One
    replica of the built-in model: the launcher's signal path is what is tested here."""
    launched = launch(tmp_path, tmp_path / "no-models", replicas=1)
    try:
        stops_cleanly(launched, launched.sigterm)
    finally:
        if launched.proc.poll() is None:
            launched.ctrl_c()
