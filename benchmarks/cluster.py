"""A cluster on one machine: N replicas of the server (``python -m server``) behind HAProxy,
sharing one API key, one PostgreSQL database (async jobs, ``--database-url``) and one S3 bucket
(SeaweedFS: url images, job uploads and results). ``make cluster`` runs it until Ctrl-C;
tests/e2e/test_cluster.py starts it the same way and kills a replica.

``python -m benchmarks.cluster [--replicas 3] [--port 8080] [--models-dir models] [--api-key K]
[--lease-seconds S] [--database-url URL] [--run-dir D] [--state-file F] [-- server flags...]``

Start order: database (a fresh schema on the machine's PostgreSQL, or on a throwaway instance:
``benchmarks/postgres.py``, the project's one PostgreSQL helper), SeaweedFS
(``benchmarks/seaweedfs.py``), the replicas (``ServerProcess``, loopback, free ports, each its own ``--files-dir``), HAProxy
(``deploy/cluster/haproxy.cfg.template``). Stop order is the reverse, each step whatever the
previous one did: the replicas drain (SIGTERM; they also get a terminal's Ctrl-C themselves, as
they share its process group), then HAProxy, SeaweedFS and the database (the schema dropped,
a throwaway instance stopped). HAProxy and SeaweedFS run in sessions of their own, so a Ctrl-C
reaches only the launcher, which stops them after the replicas.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .postgres import LOCAL, Postgres, answers, throwaway
from .seaweedfs import SeaweedFS, start_seaweedfs
from .server_process import LOOPBACK, ROOT, ServerProcess, free_port

TEMPLATE = ROOT / "deploy" / "cluster" / "haproxy.cfg.template"
DEFAULT_REPLICAS = 3
DEFAULT_PORT = 8080
BUCKET = "inpaint"
S3_PREFIX = "cluster/"
READY_S = 180.0
#: how long the balancer may take to see every replica up (2 checks, 1 s apart)
BALANCER_READY_S = 30.0
HAPROXY_STOP_S = 5.0
#: a replica's drain: the server's default --shutdown-grace (30 s) + its 1.5 s abort and close
REPLICA_STOP_S = 35.0
#: the credentials boto3 may find elsewhere and must not mix with the cluster's
AWS_OVERRIDES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")


class _HaproxyTemplate(Template):
    delimiter = "@"  # HAProxy's own syntax uses $ (environment) and % (samples)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("haproxy is missing: apt-get install -y haproxy (as root)")
    return found


def render_haproxy(port: int, stats_port: int, replicas: list[tuple[str, int]]) -> str:
    """The HAProxy config for a balancer on loopback ``port``, its stats page on ``stats_port``
    and ``replicas`` as (name, loopback port)."""
    servers = "\n".join(f"    server {name} {LOOPBACK}:{p} check" for name, p in replicas)
    return _HaproxyTemplate(TEMPLATE.read_text()).substitute(
        bind=f"{LOOPBACK}:{port}",
        stats_bind=f"{LOOPBACK}:{stats_port}",
        check_host=LOOPBACK,
        servers=servers,
    )


def fresh_schema(stack: contextlib.ExitStack) -> str:
    """A ``--database-url`` with a schema of its own, on the machine's PostgreSQL
    (127.0.0.1:5432) when it answers, else on a throwaway instance; ``stack`` drops the schema
    and stops the instance. The jobs tests' fixture (tests/postgres.py) uses the same helper
    (``benchmarks/postgres.py``), so there is one way to get a PostgreSQL in this project."""
    server = Postgres(LOCAL if answers(LOCAL) else stack.enter_context(throwaway()))
    url = server.schema_url()
    stack.callback(server.drop_schemas)
    return url


def balancer_view(stats_url: str) -> dict[str, dict[str, str]]:
    """HAProxy's row per replica (its stats CSV), by server name: ``status`` (UP, DOWN...),
    ``scur`` (requests in flight), ``stot`` (requests sent), ``hrsp_5xx``... OSError if the
    stats page does not answer."""
    with urllib.request.urlopen(stats_url + ";csv", timeout=5) as r:
        text = r.read().decode().lstrip("# ")
    return {
        row["svname"]: row
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND")
    }


@dataclass
class Replica:
    name: str
    process: ServerProcess
    files_dir: Path

    @property
    def url(self) -> str:
        return self.process.base

    @property
    def pid(self) -> int:
        return self.process.pid


class Cluster:
    """Start with ``start()`` (or ``with Cluster(...) as c``), stop with ``stop()``.

    ``server_args`` are extra ``python -m server`` flags for every replica; ``threads``
    defaults to the cores shared out among the replicas (at least 1 each)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        replicas: int = DEFAULT_REPLICAS,
        port: int = DEFAULT_PORT,
        models_dir: Path = ROOT / "models",
        api_key: str | None = None,
        lease_seconds: float | None = None,
        threads: int | None = None,
        database_url: str | None = None,
        server_args: list[str] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("--replicas: at least 1")
        self.run_dir = Path(run_dir)
        self.n_replicas = replicas
        self.port = port or free_port()
        self.stats_port = free_port()
        self.models_dir = Path(models_dir)
        self.api_key = api_key or f"sk-cluster-{secrets.token_urlsafe(18)}"
        self.lease_seconds = lease_seconds
        self.threads = threads or max(1, (os.cpu_count() or 1) // replicas)
        self.server_args = list(server_args or [])
        #: ``--database-url`` of every replica; None until start() made one (or given)
        self.database_url = database_url
        self._database = contextlib.ExitStack()  # closing it drops what start() made
        self.s3: SeaweedFS | None = None
        self.replicas: list[Replica] = []
        self.haproxy: subprocess.Popen | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{LOOPBACK}:{self.stats_port}/"

    # ------------------------------------------------------------------ start
    def start(self) -> Cluster:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.database_url is None:
                self.database_url = fresh_schema(self._database)
            self.s3 = start_seaweedfs(self.run_dir / "s3", BUCKET, own_session=True)
            self._start_replicas()
            self._start_haproxy()
        except BaseException:
            self.stop()
            raise
        return self

    def replica_args(self, files_dir: Path) -> list[str]:
        assert self.database_url is not None and self.s3 is not None
        s3 = self.s3.server
        args = ["--api-key", self.api_key, "--models-dir", str(self.models_dir)]
        args += ["--threads", str(self.threads), "--files-dir", str(files_dir)]
        args += ["--database-url", self.database_url]
        # the balancer (on loopback) names each client in X-Forwarded-For: the auth throttle
        # and the logs key on that client, not on the balancer that all requests come from
        args += ["--trusted-proxy", LOOPBACK]
        args += ["--s3-bucket", s3.bucket, "--s3-prefix", S3_PREFIX]
        args += ["--s3-endpoint-url", s3.endpoint, "--s3-addressing-style", "path"]
        if self.lease_seconds is not None:
            args += ["--lease-seconds", str(self.lease_seconds)]
        return args + self.server_args

    def _start_replicas(self) -> None:
        assert self.s3 is not None
        # the S3 credentials reach the replicas only through the environment (boto3 reads
        # AWS_*), without the overrides boto3 would otherwise prefer
        env = {**self.s3.server.env(), **dict.fromkeys(AWS_OVERRIDES)}
        for i in range(1, self.n_replicas + 1):  # all start at once, then all are awaited
            folder = self.run_dir / f"replica-{i}"
            files = folder / "files"
            files.mkdir(parents=True, exist_ok=True)
            proc = ServerProcess(self.replica_args(files), folder / "server.log", READY_S, env)
            self.replicas.append(Replica(f"replica-{i}", proc, files))
        for replica in self.replicas:
            replica.process.wait_ready()

    def _start_haproxy(self) -> None:
        config = self.run_dir / "haproxy.cfg"
        servers = [(r.name, r.process.port) for r in self.replicas]
        config.write_text(render_haproxy(self.port, self.stats_port, servers))
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects {config}:\n{check.stderr.decode()}")
        with open(self.run_dir / "haproxy.log", "wb") as log:
            self.haproxy = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + BALANCER_READY_S
        while time.monotonic() < end:
            if self.haproxy.poll() is not None:
                log_text = (self.run_dir / "haproxy.log").read_text(errors="replace")
                raise RuntimeError(f"haproxy exited with {self.haproxy.returncode}:\n{log_text}")
            with contextlib.suppress(OSError):
                if all(s["status"] == "UP" for s in self.balancer_view().values()):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the balancer did not see every replica up: {self.balancer_view()}")

    def balancer_view(self) -> dict[str, dict[str, str]]:
        return balancer_view(self.stats_url)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop everything that was started, in reverse order; each step runs whatever the
        previous one did (a failure is printed, not raised, so nothing is left behind)."""
        for replica in self.replicas:  # all drain at once, then each is awaited
            if replica.process.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    replica.process.proc.send_signal(signal.SIGTERM)
        steps = [(r.name, lambda r=r: r.process.stop(REPLICA_STOP_S)) for r in self.replicas]
        steps += [("haproxy", self._stop_haproxy)]
        if self.s3 is not None:
            steps.append(("seaweedfs", self.s3.stop))
        steps.append(("database", self._database.close))
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - go on stopping the rest
                print(f"cluster: stopping {name} failed: {exc!r}", file=sys.stderr, flush=True)

    def _stop_haproxy(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(HAPROXY_STOP_S)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(5)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ reporting
    def state(self) -> dict:
        """Everything a client or a test needs, JSON-ready."""
        assert self.s3 is not None and self.haproxy is not None
        s3 = self.s3.server
        return {
            "url": self.url,
            "api_key": self.api_key,
            "stats_url": self.stats_url,
            "launcher_pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "database_url": self.database_url,
            "s3": {
                "endpoint": s3.endpoint,
                "bucket": s3.bucket,
                "prefix": S3_PREFIX,
                "pid": self.s3.proc.pid,
            },
            "haproxy": {"pid": self.haproxy.pid, "config": str(self.run_dir / "haproxy.cfg")},
            "replicas": [
                {
                    "name": r.name,
                    "url": r.url,
                    "pid": r.pid,
                    "files_dir": str(r.files_dir),
                    "log": str(r.process.log),
                }
                for r in self.replicas
            ],
        }

    def usage(self) -> str:
        """What ``make cluster`` prints once everything is up."""
        assert self.s3 is not None
        lines = [
            f"Cluster up: {len(self.replicas)} replicas behind HAProxy at {self.url}",
            f"  API key:    {self.api_key}",
            f"  replicas:   {', '.join(f'{r.name} {r.url}' for r in self.replicas)}",
            f"  balancer:   {self.stats_url} (HAProxy's status page)",
            f"  jobs:       {self.database_url}",
            f"  url images: s3://{self.s3.server.bucket}/{S3_PREFIX} at {self.s3.server.endpoint}",
            f"  logs:       {self.run_dir}/replica-*/server.log, {self.run_dir}/haproxy.log",
            "",
            "Try it (a synchronous edit, then an async job to poll):",
            "",
            f"  export KEY={self.api_key}",
            f'  curl -s {self.url}/v1/images/edits -H "Authorization: Bearer $KEY" \\',
            "    -F image=@photo.png -F mask=@mask.png -F prompt='a wooden bench' \\",
            "    -F response_format=url -i | grep -i '^x-inpaint-replica\\|url'",
            f'  curl -s {self.url}/v1/images/edits -H "Authorization: Bearer $KEY" \\',
            "    -H 'Prefer: respond-async' -F image=@photo.png -F mask=@mask.png \\",
            "    -F prompt='a wooden bench'      # 202 + Location: /v1/images/jobs/<id>",
            f'  curl -s {self.url}/v1/images/jobs/<id> -H "Authorization: Bearer $KEY"',
            "",
            "  from openai import OpenAI",
            f'  client = OpenAI(base_url="{self.url}/v1", api_key="{self.api_key}")',
            '  client.images.edit(image=open("photo.png", "rb"), mask=open("mask.png", "rb"),',
            '                     prompt="a wooden bench", response_format="url")',
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)


class Interrupted(Exception):
    """A signal while the cluster starts: unwind, stopping what has started."""


def _write_state(path: Path, state: dict) -> None:
    """Atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description="N server replicas behind HAProxy with PostgreSQL and an S3 server, on "
        "loopback, until Ctrl-C. Flags after `--` go to every replica.",
    )
    p.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS, help="servers (3)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="balancer port on 127.0.0.1 (0: free)"
    )
    p.add_argument(
        "--models-dir", type=Path, default=ROOT / "models", help="exported models (./models)"
    )
    p.add_argument("--api-key", help="the key every replica accepts; default: generated")
    p.add_argument("--lease-seconds", type=float, help="job lease (server default otherwise)")
    p.add_argument("--threads", type=int, help="threads per replica; default: cores / replicas")
    p.add_argument(
        "--database-url",
        help="PostgreSQL for the jobs, used as it is; default: a fresh schema on "
        "127.0.0.1:5432 (or on a throwaway instance), dropped at the end",
    )
    p.add_argument("--run-dir", type=Path, help="logs and data; default: a temp dir, removed")
    p.add_argument("--state-file", type=Path, help="write the cluster's addresses here (JSON)")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="-- flags for every replica")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    stop = threading.Event()
    phase = ["starting"]

    def on_signal(signum, _frame) -> None:
        if phase[0] == "starting":
            raise Interrupted(signum)  # unwind start(), which stops what it started
        if phase[0] == "running":
            stop.set()
        else:  # a second Ctrl-C must not cut the stop short: that would leave orphans
            print("cluster: still stopping (replicas drain first)", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="inpaint-cluster-"))
    cluster = Cluster(
        run_dir,
        replicas=args.replicas,
        port=args.port,
        models_dir=args.models_dir,
        api_key=args.api_key,
        lease_seconds=args.lease_seconds,
        threads=args.threads,
        database_url=args.database_url,
        server_args=extra,
    )
    code = 0
    try:
        print(f"Starting {args.replicas} replicas, HAProxy, PostgreSQL and S3 in {run_dir} ...")
        cluster.start()
        phase[0] = "running"
        if args.state_file is not None:
            _write_state(args.state_file, cluster.state())
        print(cluster.usage(), flush=True)
        code = _watch(cluster, stop)
    except Interrupted:
        code = 130
    except Exception as exc:  # noqa: BLE001 - say what failed, then stop what started
        print(f"cluster: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        phase[0] = "stopping"
        print("Stopping the cluster ...", flush=True)
        cluster.stop()
        if args.run_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        print("Cluster stopped.", flush=True)
    return code


def _watch(cluster: Cluster, stop: threading.Event) -> int:
    """Until a signal: say when a replica exits (the balancer takes it out of the rotation);
    end with 1 if HAProxy itself dies."""
    reported: set[str] = set()
    while not stop.wait(1.0):
        for replica in cluster.replicas:
            code = replica.process.proc.poll()
            if code is not None and replica.name not in reported:
                reported.add(replica.name)
                print(f"cluster: {replica.name} (pid {replica.pid}) exited with {code}", flush=True)
        if cluster.haproxy is not None and cluster.haproxy.poll() is not None:
            print(f"cluster: haproxy exited with {cluster.haproxy.returncode}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
