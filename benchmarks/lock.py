"""One benchmark at a time per machine: an exclusive ``flock`` on ``benchmarks/results/.lock``.

On 2 shared cores a second measurement running beside the first ruins both sets of numbers, so
the second run refuses to start (it does not wait) and says who holds the lock. The lock is
released by the kernel when the holder exits, even on a crash: no stale-lock cleanup needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path


class BenchmarkLocked(RuntimeError):
    """Another benchmark run holds the lock."""


@contextlib.contextmanager
def exclusive(path: Path, **info) -> Iterator[Path]:
    """Hold the benchmark lock at ``path`` for the ``with`` block, or raise ``BenchmarkLocked``.

    ``info`` (e.g. preset=...) is written into the lock file with the pid, for the message the
    next caller gets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            who = ", ".join(f"{k} {v}" for k, v in holder.items()) or "unknown holder"
            raise BenchmarkLocked(
                f"another benchmark is already running ({who}). Two heavy measurements at once "
                f"on this machine ruin both sets of numbers: wait for it to finish and run again "
                f"(lock file: {path})."
            ) from None
        os.ftruncate(fd, 0)
        stamp = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        os.pwrite(fd, json.dumps(stamp).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode()) if raw else {}
    except (OSError, ValueError):
        return {}
