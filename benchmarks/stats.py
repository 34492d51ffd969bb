"""Summary statistics for latency / throughput samples (pure Python, no numpy needed).

Percentiles use linear interpolation between closest ranks (numpy's default ``"linear"``
method): p-th percentile of sorted x[0..n-1] is x at fractional index ``p / 100 * (n - 1)``.
With few samples p95/p99 sit close to the maximum: every summary carries ``n`` so readers can
judge.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: the stage breakdown of one image, in pipeline order, as every in-process bench reports it
#: (ours, diffusers, optimum-intel): seconds per stage, "*_other" = the time between the
#: timed model calls
STAGES = (
    "text_encoder",
    "vae_encoder",
    "prepare_other",
    "unet",
    "scheduler_other",
    "vae_decoder",
    "finish_other",
)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``; NaN for no values."""
    xs = sorted(float(v) for v in values)
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not xs:
        return math.nan
    pos = q / 100 * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """{n, min, median, max, mean, stdev, p50, p95, p99} of ``values`` (seconds, usually).

    Empty input gives n = 0 and NaN everywhere (JSON writes them as null)."""
    xs = [float(v) for v in values]
    if not xs:
        nan = math.nan
        return dict(
            n=0, min=nan, median=nan, max=nan, mean=nan, stdev=nan, p50=nan, p95=nan, p99=nan
        )
    return {
        "n": len(xs),
        "min": min(xs),
        "median": statistics.median(xs),
        "max": max(xs),
        "mean": statistics.fmean(xs),
        "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing, zero or not finite."""
    if numerator is None or denominator is None:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return None
    return numerator / denominator


def over_deadline(start: float, deadline_s: float | None, next_run_s: float) -> bool:
    """Whether one more run of ``next_run_s`` would end past ``deadline_s`` after ``start``
    (``time.perf_counter`` seconds)."""
    if deadline_s is None:
        return False
    return time.perf_counter() - start + next_run_s > deadline_s


def timed_images(
    one: Callable[[int], dict[str, float]],
    *,
    seed: int,
    warmup: int,
    repeats: int,
    start: float,
    deadline_s: float | None,
    on_run: Callable[[int, dict[str, float]], None],
) -> tuple[list[dict[str, float]], float, float | None]:
    """``warmup`` untimed images, then up to ``repeats`` timed ones (image i: ``one(seed +
    i)``, a dict with at least ``total`` seconds); past the deadline a further run only starts
    while it would end in time (the first timed run always does). ``on_run(i, run)`` after each
    timed run. Returns ``(runs, warm-up seconds, the first warm-up image's seconds or None)``."""
    t0 = time.perf_counter()
    first = None
    for i in range(warmup):
        r = one(seed + i)
        first = r["total"] if first is None else first
    warm_s = time.perf_counter() - t0
    runs: list[dict[str, float]] = []
    for i in range(repeats):
        if runs and over_deadline(start, deadline_s, runs[-1]["total"]):
            break
        runs.append(one(seed + i))
        on_run(i, runs[-1])
    return runs, warm_s, first


def image_summary(runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    """The fields every whole-image bench reports from its timed runs (each: ``total``,
    ``denoise``, ``unet``, ``unet_calls``, the ``STAGES`` and ``output_mean``): latency, time
    per denoising iteration and per UNet call, the stage medians."""
    return {
        "latency_s": summarize([r["total"] for r in runs]),
        # per denoising iteration (= UNet call; PNDM makes steps + 1 of them), as for ours
        "per_step_s": summarize([r["denoise"] / max(1, r["unet_calls"]) for r in runs]),
        "unet_call_s": summarize([r["unet"] / max(1, r["unet_calls"]) for r in runs]),
        "unet_calls_per_image": runs[0]["unet_calls"],
        "stages_s": {k: statistics.median([r[k] for r in runs]) for k in STAGES},
        "output_mean": runs[-1]["output_mean"],
    }
