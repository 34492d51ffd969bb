"""The machine's attainable matmul peak, measured (not the datasheet number).

CPU: square float32 matmuls with numpy (the BLAS numpy ships with) and with torch (oneDNN/MKL),
at the benchmark's thread count; the best of a few runs after a warm-up. The larger of the two
is the "peak" used for the compute floor: ORT's own GEMMs (MLAS) reach about the same.
torch bf16 matmul is probed too (slow without AVX512-BF16/AMX: emulated).
GPU: torch fp16/fp32 matmul on CUDA when torch sees a GPU.

FLOPs per n x n matmul = 2 n^3.
"""

from __future__ import annotations

import time
from typing import Any


def _best(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up (allocations, thread pool start)
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
    dt = getattr(torch, dtype)
    if device == "cuda" and not torch.cuda.is_available():
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dt)
    b = torch.randn(n, n, generator=g, device=device).to(dt)
    sync = torch.cuda.synchronize if device == "cuda" else None
    with torch.inference_mode():
        t = _best(lambda: torch.matmul(a, b), repeats, sync)
    return 2 * n**3 / t / 1e9


def probe(
    threads: int | None = None, gpu: bool = False, n_cpu: int = 1024, n_gpu: int = 8192
) -> dict[str, Any]:
    """Measured matmul GFLOP/s: {numpy_fp32, torch_fp32, torch_bf16, cpu_peak_gflops[, cuda_...]}."""
    out: dict[str, Any] = {
        "method": f"best of 5 square matmuls (n={n_cpu} CPU, {n_gpu} GPU), "
        "2 n^3 FLOPs each, after one warm-up"
    }
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    out["numpy_fp32_gflops"] = numpy_matmul_gflops(n_cpu)
    out["torch_fp32_gflops"] = torch_matmul_gflops(n_cpu)
    out["torch_bf16_gflops"] = torch_matmul_gflops(n_cpu, repeats=3, dtype="bfloat16")
    vals = [v for v in (out["numpy_fp32_gflops"], out["torch_fp32_gflops"]) if v]
    out["cpu_fp32_peak_gflops"] = max(vals) if vals else None
    if gpu:
        out["cuda_fp16_gflops"] = torch_matmul_gflops(n_gpu, dtype="float16", device="cuda")
        out["cuda_fp32_gflops"] = torch_matmul_gflops(n_gpu, dtype="float32", device="cuda")
        if out["cuda_fp16_gflops"] is None:
            out["cuda_note"] = (
                "no CUDA torch on this machine: GPU peak not measured; pass "
                "--peak-gflops to state it"
            )
    return out
