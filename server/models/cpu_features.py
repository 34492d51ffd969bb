"""What this CPU computes natively: its feature flags and the reduced precisions they make fast.

Pure functions over the flag names Linux prints in ``/proc/cpuinfo`` (``avx512_bf16``,
``amx_bf16``, ``amx_fp16``, ``avx512_fp16``, ``avx2`` ...), so that tests can pass sample
flag sets for machines they do not run on. Nothing here imports a runtime.

Why flags and not the runtime's own report: OpenVINO quietly runs a bf16/f16 hint in f32 (or
an f16 hint in bf16) where the CPU lacks the units, so the providers check the precision a
compiled graph really uses as well (``OVSession.effective_precision``); the flags decide what
is worth trying at all and say why in ``/v1/models``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: precision -> the CPU flags that compute it natively, fastest unit first. AMX tiles do
#: ~16x the work per cycle of the AVX-512 dot-product instructions. (int8: the VNNI dot
#: products; no served configuration computes in int8, the benchmark's peak probe asks.)
NATIVE_FLAGS: dict[str, tuple[str, ...]] = {
    "f16": ("amx_fp16", "avx512_fp16"),
    "bf16": ("amx_bf16", "avx512_bf16"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni"),
}

#: the flags worth naming in /v1/models and benchmark output (the rest are noise here).
REPORTED_FLAGS = ("amx_fp16", "amx_bf16", "amx_int8", "avx512_fp16", "avx512_bf16",
                  "avx512_vnni", "avx512f", "avx2", "fma")  # fmt: skip


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of ``/proc/cpuinfo`` text (x86 ``flags`` / ARM ``Features`` lines),
    lower case. Empty for text without such a line."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    return frozenset(flags)


def read_cpu_flags(path: Path | str = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags; empty where ``path`` is unreadable (not Linux): then only
    fp32 counts as native, the safe choice."""
    try:
        return parse_cpu_flags(Path(path).read_text(errors="replace"))
    except OSError:
        return frozenset()


def native_unit(flags: Iterable[str], precision: str) -> str | None:
    """The fastest flag of ``flags`` that computes ``precision`` ("bf16" | "f16" | "int8")
    natively, or None. fp32 is native everywhere and never asked."""
    have = set(flags)
    return next((f for f in NATIVE_FLAGS.get(precision, ()) if f in have), None)


def reported_flags(flags: Iterable[str]) -> list[str]:
    """The precision-relevant subset of ``flags``, in ``REPORTED_FLAGS`` order."""
    have = set(flags)
    return [f for f in REPORTED_FLAGS if f in have]
