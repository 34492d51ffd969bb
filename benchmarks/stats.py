"""Summary statistics for latency / throughput samples (pure Python, no numpy needed).

Percentiles use linear interpolation between closest ranks (numpy's default ``"linear"``
method): p-th percentile of sorted x[0..n-1] is x at fractional index ``p / 100 * (n - 1)``.
With few samples p95/p99 sit close to the maximum: every summary carries ``n`` so readers can
judge.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

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
