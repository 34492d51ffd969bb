"""What ``--provider auto`` tries for each component on a CPU: a pure function of (CPU flags,
installed runtimes, component name), so tests cover machines they do not run on.

``cpu_plan`` returns candidates, fastest first; the last one is always fp32 (the reference and
the fallback). ``AutoProvider`` (``auto.py``) loads them in order and keeps the first whose
output on a fixed sample stays within ``tolerance(component)`` of fp32 and which runs
the sample at least ``MIN_SPEEDUP`` times faster than fp32.

The order:
- AMX-FP16 (Granite Rapids): f16, then bf16. Both run on the AMX tiles at the same speed; f16
  keeps 10 mantissa bits to bf16's 7, bf16 has fp32's range (the fallback if f16 overflows).
- AMX-BF16 or AVX512-BF16 (Sapphire Rapids, Zen 4/5): bf16, then f16 where AVX512-FP16 exists.
  Vector f16 is not reliably faster than fp32 (OpenVINO 2026.4 on an AMX-BF16 + AVX512-FP16
  Xeon: the SD 1.5 UNet 0.45x fp32's speed, the VAE encoder 1.07x), which is why a candidate
  must also be faster than fp32 on the sample (``MIN_SPEEDUP``).
- AVX512-FP16 without bf16 units: f16.
- otherwise (AVX2, AVX-512 without bf16/fp16): fp32 only.
Reduced precision runs on OpenVINO (ONNX Runtime's CPU EP has no bf16/f16 GEMM on x86); int8
is never chosen: see docs/fast-paths.md, "Why no int8" (weight-only int8 does not speed up
compute-bound convolutions, activation int8 needs calibration data the server does not have).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..cpu_features import native_unit

#: max relative error (max|reduced - fp32| / max|fp32|, the worst output) a reduced-precision
#: component may show on the fixed sample before auto falls back to fp32. The UNet bound is the
#: issue's (1.5% per step); the VAE decoder writes pixels in [-1, 1], where 2% of the maximum
#: is 0.01 of the [0, 1] range = at most 2.5 uint8 levels at the worst pixel. The VAE encoder
#: runs once per image and its latents only condition the UNet: its bound is what keeps the
#: final image where fp32 puts it (docs/fast-paths.md, "The VAE encoder's limit"). Measured on
#: the full SD 1.5 architecture, random weights, Zen 4: its bf16 errs 2.2% on the sample
#: (PyTorch's own bf16 encoder 2.45%, the same sample), a gradual drift over its 28
#: convolutions (no few layers to keep in fp32); with everything else fp32 it moved a 512x512
#: fast-recipe image by at most 1 uint8 level in the edited region (mean 0.01), where the
#: UNet's bf16 moves it by up to 19 (mean 0.65).
TOLERANCES: dict[str, float] = {
    "text_encoder": 0.015,
    "unet": 0.015,
    "vae_encoder": 0.03,
    "vae_decoder": 0.02,
}
DEFAULT_TOLERANCE = 0.015

#: a reduced-precision candidate is kept only if its best time on the sample is at least this
#: many times faster than fp32's: a precision the CPU has units for can still run slower (f16
#: through AVX512-FP16, or any reduced precision on a model too small to amortize its reorders),
#: and a gain under 10% does not pay for the lost accuracy.
MIN_SPEEDUP = 1.1

#: fp32 runtime per component when both are installed: the faster one in the `cpu` benchmark
#: (benchmarks/results/20261124-024326-cpu.json, full SD 1.5 architecture, 256x256, AVX2 EPYC,
#: stage medians ONNX Runtime vs OpenVINO f32, s): text_encoder 0.163 vs 0.177, vae_encoder
#: 1.629 vs 1.551, unet 6.375 vs 6.223, vae_decoder 3.642 vs 3.503. (OpenVINO's peak RSS was
#: 8.2 GB vs 5.8 GB.) Components not listed: ONNX Runtime.
FP32_RUNTIME: dict[str, str] = {
    "text_encoder": "onnxruntime",
    "unet": "openvino",
    "vae_encoder": "openvino",
    "vae_decoder": "openvino",
}

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Choice:
    """One way to run a component: ``runtime`` "onnxruntime" | "openvino", ``precision``
    "fp32" | "bf16" | "f16", and why it is a candidate (shown in /v1/models)."""

    runtime: str
    precision: str
    why: str

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


def component_kind(component: str) -> str | None:
    """The class of ``component`` whose rules apply: one of ``TOLERANCES``' keys, or None.
    Extra components (e.g. a tiny VAE decoder) follow the name: "...decoder" -> vae_decoder."""
    name = component.lower()
    if name in TOLERANCES:
        return name
    for prefix in ("text_encoder", "unet"):
        if name.startswith(prefix):
            return prefix
    if "decoder" in name:
        return "vae_decoder"
    if "encoder" in name:
        return "vae_encoder"
    return None


def tolerance(component: str) -> float:
    return TOLERANCES.get(component_kind(component) or "", DEFAULT_TOLERANCE)


def fp32_choice(runtimes: Iterable[str], component: str) -> Choice:
    have = set(runtimes)
    preferred = FP32_RUNTIME.get(component_kind(component) or "", "onnxruntime")
    runtime = preferred if preferred in have else next(r for r in RUNTIMES if r in have)
    if len(have & set(RUNTIMES)) > 1:
        why = f"fp32 on {runtime}: the faster fp32 runtime for this component (measured)"
    else:
        why = f"fp32 on {runtime}: the only runtime installed"
    return Choice(runtime, "fp32", why)


def cpu_plan(flags: Iterable[str], runtimes: Iterable[str], component: str) -> list[Choice]:
    """Candidates for ``component`` on a CPU with ``flags`` and ``runtimes`` installed
    ("onnxruntime", "openvino"), fastest first; the last is fp32. Raises ValueError when
    neither runtime is installed."""
    flags, have = set(flags), set(runtimes)
    if not have & set(RUNTIMES):
        raise ValueError("no CPU runtime installed: pip install onnxruntime (or '.[openvino]')")
    fp32 = fp32_choice(have, component)
    bf16, f16 = native_unit(flags, "bf16"), native_unit(flags, "f16")
    if "openvino" not in have:
        if bf16 or f16:
            unit = f16 if f16 == "amx_fp16" else bf16 or f16
            why = f"{fp32.why}; {unit} is native here: pip install '.[openvino]' to use it"
            return [Choice(fp32.runtime, "fp32", why)]
        return [fp32]
    reduced: list[Choice] = []
    if f16 == "amx_fp16":
        reduced.append(Choice("openvino", "f16", "amx_fp16 native"))
    if bf16:
        reduced.append(Choice("openvino", "bf16", f"{bf16} native"))
    if f16 and f16 != "amx_fp16":
        reduced.append(Choice("openvino", "f16", f"{f16} native"))
    if not reduced:
        return [Choice(fp32.runtime, "fp32", f"{fp32.why}; no bf16/fp16 units on this CPU")]
    return [*reduced, fp32]
