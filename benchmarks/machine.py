"""What the numbers were measured on: CPU model/flags/cores, memory, load, GPU, package versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any

from server.models.cpu_features import native_unit

PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "numpy",
    "torch",
    "diffusers",
    "transformers",
    "aiohttp",
    "openai",
    "openvino",
    "tensorrt",
    "matplotlib",
    "psutil",
)
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_bf16",
    "amx_tile",
    "amx_int8",
    "amx_fp16",
    "avx_vnni",
)


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
            info["model"] = value.strip()
        elif key == "flags" and not info["flags"]:
            flags = set(value.split())
            info["flags"] = [f for f in INTERESTING_FLAGS if f in flags]
    return info


def native_bf16(flags: list[str]) -> bool:
    """Whether the CPU computes bf16 natively (else torch emulates it: slow)."""
    return native_unit(flags, "bf16") is not None


def gpus() -> list[dict[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        name, mem, driver = (p.strip() for p in line.split(","))
        rows.append({"name": name, "memory": mem, "driver": driver})
    return rows


#: CPU steal (time the hypervisor gave this VM's CPUs to others) above which a run's numbers are
#: flagged as disturbed: a few percent is normal on shared hosts.
STEAL_NOTE_FRACTION = 0.05


def cpu_times() -> list[int] | None:
    """The machine-wide CPU time counters of /proc/stat's ``cpu`` line (user nice system idle
    iowait irq softirq steal ...), in clock ticks; None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    return [int(x) for x in first[1:]]


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time stolen by the hypervisor between two ``cpu_times()`` readings
    (None when unknown). Steal is the 8th counter; guest time (9th, 10th) is already counted
    in user and nice, so it is left out of the total."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    delta = [b - a for a, b in zip(before[:8], after[:8], strict=True)]
    total = sum(delta)
    return delta[7] / total if total > 0 else None


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = _cpuinfo()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cpu_native_bf16": native_bf16(cpu["flags"]),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "affinity_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": list(load),
        "cpu_times_at_start": cpu_times(),
        "gpus": gpus(),
    }
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out
