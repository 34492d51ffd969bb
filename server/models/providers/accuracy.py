"""The one-time check of a reduced-precision component against fp32: a fixed sample input built
from the component's declared inputs, the error measure, and the speed measure.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from server.models.manifest import ComponentSpec

#: sample sizes: batch 2 (a guidance pair), a 16 x 16 latent (128 px). Small enough to cost
#: well under a second on the full SD 1.5 UNet, large enough that every down/up block and the
#: attention layers run (SD halves the latent three times).
SAMPLE_BATCH = 2
SAMPLE_LATENT = 16
#: the VAE's pixels per latent pixel; the sample only needs it to size image inputs.
PIXELS_PER_LATENT = 8
#: two timesteps at the ends of the schedule: t near 1000 is where reduced precision hurts the
#: sinusoidal time embedding most (see openvino_graph), t near 0 is the last denoising steps.
SAMPLE_TIMESTEPS = (999.0, 21.0)
#: token ids below 256 exist in every BPE vocabulary (the byte tokens).
SAMPLE_MAX_TOKEN = 256
#: timed runs on the sample per session (after a warm-up run); the best one counts, since
#: interruptions only ever add time.
SPEED_RUNS = 3


def _dim(d: int | str, batch: int, latent: int) -> int:
    if isinstance(d, int):
        return d
    if d == "batch":
        return batch
    if d.startswith("latent"):
        return latent
    return latent * PIXELS_PER_LATENT  # "height" / "width": image pixels


def sample_feeds(
    spec: ComponentSpec, seed: int = 0, *, batch: int = SAMPLE_BATCH, latent: int = SAMPLE_LATENT
) -> dict[str, np.ndarray]:
    """Deterministic inputs for every input ``spec`` declares, at the sample sizes (other
    ``batch`` / ``latent`` side: benchmarks measuring at real sizes).

    int64 -> token ids in [0, 256); ``timestep`` -> ``SAMPLE_TIMESTEPS``; 3-channel float
    inputs (images, NCHW) -> a smooth pattern in [-1, 1], like a photo; other float inputs
    (latents, hidden states) -> standard normal. float32 unless the spec says otherwise.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = [_dim(d, batch, latent) for d in t.shape]
        if t.dtype in ("int64", "int32"):
            feeds[t.name] = rng.integers(0, SAMPLE_MAX_TOKEN, shape).astype(t.dtype)
        elif t.name == "timestep":
            feeds[t.name] = np.resize(np.asarray(SAMPLE_TIMESTEPS, t.dtype), shape)
        elif len(shape) == 4 and shape[1] == 3:
            y, x = np.meshgrid(np.arange(shape[2]), np.arange(shape[3]), indexing="ij")
            phase = rng.uniform(0, 2 * np.pi, (shape[0], 3, 1, 1))
            img = np.sin(x / 7.0 + phase) * np.cos(y / 5.0 + phase)
            feeds[t.name] = img.astype(t.dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return feeds


def max_relative_error(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """max over outputs of max|out - ref| / max|ref|; inf when ``out`` is not finite.

    Relative to the output's largest magnitude (not element-wise): element-wise ratios explode
    where the reference crosses zero, and it is the export verification's measure too."""
    worst = 0.0
    for name, r in ref.items():
        o = np.asarray(out[name], np.float64)
        if not np.isfinite(o).all():
            return float("inf")
        r = np.asarray(r, np.float64)
        scale = max(float(np.abs(r).max()), 1e-12)
        worst = max(worst, float(np.abs(o - r).max()) / scale)
    return worst


def best_seconds(session: Any, feeds: dict[str, np.ndarray], runs: int = SPEED_RUNS) -> float:
    """Best wall time of ``runs`` calls of ``session`` on ``feeds`` (the caller has already run
    it once on them: kernels built, buffers allocated)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(feeds)
        best = min(best, time.perf_counter() - t0)
    return best
