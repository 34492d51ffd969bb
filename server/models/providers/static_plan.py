"""When ``--provider auto`` gives a component static graphs (``--static-shapes`` unset): a
pure rule over what auto measured (the static graph's speed-up on the sample, the memory one
more graph took) and the memory free now, plus the two readings it needs from Linux.

Static graphs are OpenVINO graphs compiled for one input-shape set: the CPU plugin picks its
kernels and memory plan for that shape once, instead of per call (measured on the SD 1.5 UNet
in bf16: 5-13% faster per call on an AMX Xeon, ~4% at 512x512 on a Zen 4). Each one holds its
own repacked weights (~2.4 GB for that UNet in bf16) and costs a compile at its first call, so
auto serves them beside the dynamic graph, for returning shapes only (``OVSession``, "Both").
"""

from __future__ import annotations

import os

#: the component kinds that get static graphs: the one called at every denoising step (the
#: encoders and decoders run once per image: their compile would not pay back)
STATIC_KINDS = ("unet",)
#: static graphs are kept where they are not slower than the dynamic graph on the sample (the
#: median of ``STATIC_PAIRS`` alternating calls): every CPU measured gained from them at
#: 512x512 (the SD 1.5 UNet in bf16: 5-13% on an AMX Xeon, ~4% on a Zen 4; in f32 on an
#: AVX2-only Zen 2 ~10% at batch 1), and what they cost, memory, is checked on its own
MIN_STATIC_SPEEDUP = 1.0
STATIC_PAIRS = 7
#: at most this many per component (the benchmark's --static-shapes 4: a size at batch 1 and 2
#: and guided 2 and 4 rows)
MAX_STATIC_SHAPES = 4
#: memory the static graphs must leave free: the requests' images and activations, the other
#: models (a quarter of the machine's, at least this)
RESERVE_FRACTION = 0.25
MIN_RESERVE_BYTES = 2 << 30


def static_shapes_for(
    speedup: float, bytes_per_shape: float, free: int, total: int, bytes_model: float = 0
) -> int:
    """How many static graphs to keep (0 = the dynamic graph alone): ``MAX_STATIC_SHAPES`` or
    as many as ``free`` memory holds beyond the reserve and the model they are compiled from
    (``bytes_model``, read once), when ``speedup`` pays."""
    if speedup < MIN_STATIC_SPEEDUP:
        return 0
    reserve = max(MIN_RESERVE_BYTES, int(total * RESERVE_FRACTION))
    room = free - reserve - int(bytes_model)
    if room <= 0:
        return 0
    fits = int(room // max(bytes_per_shape, 1.0))
    return max(0, min(MAX_STATIC_SHAPES, fits))


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_room() -> int | None:
    """A container's limit minus its usage (cgroup v2), or None without a limit."""
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = open("/sys/fs/cgroup/memory.current").read().strip()
    except OSError:
        return None
    if not (limit.isdecimal() and used.isdecimal()):
        return None
    return int(limit) - int(used)


def memory_bytes() -> tuple[int, int]:
    """(free now, total) for this process: MemAvailable and MemTotal, capped by a container's
    limit. (0, 0) where unreadable: then nothing static is kept."""
    info = _meminfo()
    free, total = info.get("MemAvailable", 0), info.get("MemTotal", 0)
    room = _cgroup_room()
    if room is not None:
        free = min(free, max(room, 0))
    return free, total


def rss_bytes() -> int:
    """This process's resident memory (0 where unreadable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
