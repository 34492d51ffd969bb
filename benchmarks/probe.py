"""The machine's attainable matmul peak per precision, measured (not the datasheet number).

Each precision's peak is the best of several probes, because no single library reaches the
peak on every CPU (numpy's bundled BLAS underestimates some: on a Zen 5 it read below what
OpenVINO's bf16 UNet then achieved):

- fp32: numpy (its bundled BLAS), torch (oneDNN/MKL), OpenVINO (a one-MatMul model compiled
  with ``INFERENCE_PRECISION_HINT=f32``);
- bf16: torch bf16 matmul (oneDNN) and OpenVINO with the bf16 hint. A probe is filed under the
  precision its graph really computes in: OpenVINO runs a bf16 hint in f32 on CPUs without the
  units (``effective_precision``);
- int8: torch's ``_int_mm`` (int8 x int8 -> int32). No configuration measured here computes in
  int8 (``--provider auto`` never picks it), so this peak is informational;
- GPU: torch fp16 / fp32 matmul on CUDA when torch sees a GPU.

torch's bf16 and int8 probes run only on CPUs with the units (``cpu_features.NATIVE_FLAGS``):
without them torch emulates the type at 1-3 GFLOP/s (measured on an AVX2-only Zen 2: 1.4 bf16,
3.1 int8 at n=512), so a 2048 probe took minutes and measured nothing any configuration uses;
the result says which were skipped and why.

Square matrices of side n in {1024, 2048} (best of both), 2 n^3 FLOPs each, the best of
``repeats`` runs after one warm-up, at the benchmark's thread count.
"""

from __future__ import annotations

import time
from typing import Any

from server.models.cpu_features import NATIVE_FLAGS, native_unit, read_cpu_flags

from .attribution import normalize_precision, peaks_by_precision

CPU_SIDES = (1024, 2048)


def _best(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up (allocations, thread pool start, kernel selection)
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / _best(lambda: a @ b, repeats) / 1e9


def torch_matmul_gflops(
    n: int = 1024, repeats: int = 5, dtype: str = "float32", device: str = "cpu"
) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    g = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else None
    if dtype == "int8":
        if not hasattr(torch, "_int_mm"):
            return None
        a = torch.randint(-64, 64, (n, n), generator=g, dtype=torch.int8, device=device)
        b = torch.randint(-64, 64, (n, n), generator=g, dtype=torch.int8, device=device)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dt = getattr(torch, dtype)
        a = torch.randn(n, n, generator=g, device=device).to(dt)
        b = torch.randn(n, n, generator=g, device=device).to(dt)
        fn = lambda: torch.matmul(a, b)  # noqa: E731
    with torch.inference_mode():
        t = _best(fn, repeats, sync)
    return 2 * n**3 / t / 1e9


def openvino_matmul_gflops(
    n: int = 1024, precision: str = "f32", threads: int | None = None, repeats: int = 5
) -> tuple[float, str] | None:
    """(GFLOP/s, the precision the compiled graph computes in) of a one-MatMul OpenVINO model
    (activations n x n times a constant n x n weight, as a layer), or None without OpenVINO."""
    try:
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    from server.models.providers.openvino import effective_precision

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], ov.Type.f32, name="a")
    w = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, w, False, False)], [a], "matmul_probe")
    cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(int(threads))
    compiled = ov.Core().compile_model(model, "CPU", cfg)
    request = compiled.create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    t = _best(lambda: request.infer({0: x}), repeats)
    return 2 * n**3 / t / 1e9, effective_precision(compiled) or precision


def _best_over_sides(fn) -> float | None:
    vals = [v for v in (fn(n) for n in CPU_SIDES) if v]
    return max(vals) if vals else None


def probe(
    threads: int | None = None, gpu: bool = False, n_gpu: int = 8192, int8: bool = True
) -> dict[str, Any]:
    """Measured matmul GFLOP/s per probe and the peak per precision:
    ``{"probes": {name: {"gflops", "precision", "device", "library"}}, "peaks": {"<device>
    <precision>": {"gflops", "source", "probes"}}, "cpu_fp32_peak_gflops", ...}``."""
    out: dict[str, Any] = {
        "method": f"best of 5 square matmuls per side n in {list(CPU_SIDES)} (CPU) / {n_gpu} "
        "(GPU), 2 n^3 FLOPs each, after one warm-up; per precision the best probe",
    }
    probes: dict[str, dict[str, Any]] = {}

    def add(name: str, gflops: float | None, precision: str, library: str, device="cpu") -> None:
        if gflops:
            probes[name] = {
                "gflops": gflops,
                "precision": normalize_precision(precision),
                "device": device,
                "library": library,
            }

    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    add("numpy fp32", _best_over_sides(numpy_matmul_gflops), "fp32", "numpy BLAS")
    add("torch fp32", _best_over_sides(torch_matmul_gflops), "fp32", "torch (oneDNN/MKL)")
    flags = read_cpu_flags()
    skipped: dict[str, str] = {}
    for precision, dtype, library in (
        ("bf16", "bfloat16", "torch (oneDNN)"),
        ("int8", "int8", "torch _int_mm"),
    ):
        if precision == "int8" and not int8:
            continue
        name = f"torch {precision}"
        if native_unit(flags, precision) is None:
            units = "/".join(NATIVE_FLAGS[precision])
            skipped[name] = f"no {units} on this CPU: torch would emulate it"
            continue
        add(
            name,
            _best_over_sides(lambda n, d=dtype: torch_matmul_gflops(n, repeats=3, dtype=d)),
            precision,
            library,
        )
    if skipped:
        out["skipped"] = skipped
    for hint in ("f32", "bf16"):
        best: tuple[float, str] | None = None
        for n in CPU_SIDES:
            r = openvino_matmul_gflops(n, hint, threads)
            if r and (best is None or r[0] > best[0]):
                best = r
        if best:
            add(f"openvino {hint} hint", best[0], best[1], f"OpenVINO CPU (computes {best[1]})")
    if gpu:
        add(
            "cuda fp16",
            torch_matmul_gflops(n_gpu, dtype="float16", device="cuda"),
            "fp16",
            "torch CUDA",
            "gpu",
        )
        add(
            "cuda fp32",
            torch_matmul_gflops(n_gpu, dtype="float32", device="cuda"),
            "fp32",
            "torch CUDA",
            "gpu",
        )
        if "cuda fp16" not in probes:
            out["cuda_note"] = (
                "no CUDA torch on this machine: GPU peak not measured; pass "
                "--peak-gflops to state it"
            )
    out["probes"] = probes
    out["peaks"] = peaks_by_precision(probes)
    # the names older results used
    for name, key in (
        ("numpy fp32", "numpy_fp32_gflops"),
        ("torch fp32", "torch_fp32_gflops"),
        ("torch bf16", "torch_bf16_gflops"),
        ("cuda fp16", "cuda_fp16_gflops"),
    ):
        out[key] = probes.get(name, {}).get("gflops")
    out["cpu_fp32_peak_gflops"] = out["peaks"].get("cpu fp32", {}).get("gflops")
    return out
