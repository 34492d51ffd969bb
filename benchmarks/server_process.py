"""The one launcher of the real server (``python -m server``) as a subprocess, on a free
loopback port: end-to-end tests, the fuzz runner, the soak and the benchmark all use it.

The child gets the caller's environment minus every ``INPAINT_*`` setting (``server.config``
owns that prefix), so only the flags given here configure it, then ``env`` on top (e.g. S3
credentials for boto3; None removes a variable).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from server.config import without_server_env

from .memory import vm_hwm_mb

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m server --host 127.0.0.1 --port <free> *args``, output to ``log``.

    Starts at construction; ``wait_ready()`` blocks until ``/ready`` answers 200 (returns the
    base URL); ``stop()`` sends SIGTERM (SIGKILL after ``timeout``) and returns the exit code.
    Usable as a context manager (enter = wait until ready, exit = stop). ``env``: variables set
    for the child only (a None value removes the variable), after the ``INPAINT_*`` ones are
    dropped.
    """

    def __init__(
        self,
        args: list[str],
        log: Path,
        ready_timeout_s: float = 90.0,
        env: dict[str, str | None] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.log = Path(log)
        self.ready_timeout_s = ready_timeout_s
        self.startup_s: float | None = None
        self.peak_rss_mb: float | None = None
        child_env = {**without_server_env(dict(os.environ)), **(env or {})}
        child_env = {k: v for k, v in child_env.items() if v is not None}
        child_env["PYTHONUNBUFFERED"] = "1"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--host", LOOPBACK, "--port", str(self.port)]
                + list(args),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
            )

    @classmethod
    def builtin_only(
        cls, key: str, work: Path, extra: list[str] | tuple[str, ...] = (), **kw
    ) -> ServerProcess:
        """The server with only its built-in model (an empty models dir under ``work``), API
        key ``key``, url files in ``work/files``, log in ``work/server.log``; ``extra``: more
        flags; ``kw``: as for the constructor (the harnesses that attack it: soak, fuzz)."""
        work = Path(work)
        args = ["--api-key", key, "--models-dir", str(work / "no-models")]
        args += ["--files-dir", str(work / "files"), *extra]
        return cls(args, work / "server.log", **kw)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until GET /ready answers 200; return the base URL."""
        timeout = self.ready_timeout_s if timeout is None else timeout
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.perf_counter() - self._t0
                        return self.base
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful), then kill if it hangs; return the exit code. Records the peak
        RSS (VmHWM) of the process first."""
        if self.proc.poll() is None:
            self.peak_rss_mb = vm_hwm_mb(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
