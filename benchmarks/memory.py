"""Peak memory: RSS high-water mark of a process (Linux ``VmHWM``) and GPU memory by nvidia-smi."""

from __future__ import annotations

import shutil
import subprocess
import threading


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of ``pid`` in MiB (``VmHWM`` in /proc/<pid>/status), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class GpuSampler:
    """Polls ``nvidia-smi`` for the GPU memory of some pids; ``peak_mb`` is the max seen (None
    without nvidia-smi). Coarse (1 s): fine for weights + activations, which stay allocated."""

    def __init__(self, pids: list[int] | None = None, every_s: float = 1.0):
        self.pids = set(pids or [])
        self.every_s = every_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = shutil.which("nvidia-smi") is not None

    def add(self, pid: int) -> None:
        self.pids.add(pid)

    def _sample(self) -> None:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-compute-apps=pid,used_memory",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return
        total = 0.0
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in self.pids:
                try:
                    total += float(parts[1])
                except ValueError:
                    pass
        if total and (self.peak_mb is None or total > self.peak_mb):
            self.peak_mb = total

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
