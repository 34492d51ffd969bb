"""Model instances: how many batches of one model run at once, and on how many threads each.

An *instance* is one batching loop (a worker thread, ``server.batching``) driving the model;
all instances of a model share its sessions (ONNX Runtime sessions take concurrent ``run``
calls). A model's thread budget (``--threads``, default: the cores) is split between its
instances: N instances on a budget of C give every session ``C // N`` intra-op threads, so
the cores go to concurrent batches instead of to the ops of one batch.

Why: intra-op threads pay only when each op has enough work to split. A small model's ops are
too small (measured, tiny SD UNet at 64x64, 2-core Zen 2: one call of 2 rows takes 2.49 ms on
one thread and 2.54 ms on two; two concurrent calls on one-thread sessions 1.24 ms each), so
one batch at a time leaves a core idle however large the batch is. The full SD UNet is the
other way round (its ops saturate every core), and a second concurrent batch would only add
memory and latency.

``--instances N`` sets the count. Unset (the default), it is measured once per model at load
(``choose``): the model's probe (one call of its main component at its native size, as one
request runs it) is timed with one caller on the model as loaded for one instance; then the
model is loaded a second time for C instances (C = the thread budget, one thread each) and the
probe timed with C concurrent callers, and with one. The C-instance model is kept when it gives
at least ``MIN_GAIN`` times the throughput and a lone call on it takes at most
``MAX_LONE_SLOWDOWN`` times as long (a request arriving alone must not pay for the split), else
closed. Models whose probe call takes longer than ``PROBE_MAX_CALL_S`` are not probed (their ops
are large enough for the threads, and a second load of a large model would cost seconds and
gigabytes); models without a probe (the built-in one) and models on a GPU provider keep one
instance (a second engine build and concurrent streams on a GPU are unmeasured here;
``--instances`` sets them). A probe that fails leaves the model at one instance.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("server.models")

#: a probe call longer than this is not probed (seconds)
PROBE_MAX_CALL_S = 0.1
#: how long each side of the comparison runs (seconds; at least PROBE_MIN_CALLS calls each)
PROBE_S = 0.4
PROBE_MIN_CALLS = 5
#: concurrent calls must give at least this much more throughput than one caller
MIN_GAIN = 1.25
#: and a lone request may run at most this much slower on its share of the threads (the
#: users are latency-sensitive: a model whose ops do scale with threads keeps them)
MAX_LONE_SLOWDOWN = 1.15


@dataclass(frozen=True)
class Instances:
    """What a model runs with: ``count`` concurrent batches, ``threads`` intra-op threads per
    session (None: the runtime's default, all cores), and why (for ``/v1/models``)."""

    count: int = 1
    threads: int | None = None
    reason: str = "one batch at a time"

    def card(self) -> dict[str, Any]:
        return {"count": self.count, "threads": self.threads or "default", "reason": self.reason}


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_count(count: int | None) -> None:
    """``--instances``: None (measured) or a positive integer."""
    if count is not None and count < 1:
        raise ValueError(f"--instances must be >= 1 (got {count}); leave it unset to measure it")


def budget(threads: int | None) -> int:
    """A model's thread budget: ``--threads``, else the cores."""
    return threads if threads is not None else cores()


def per_instance(count: int, threads: int | None) -> int | None:
    """Intra-op threads per session for ``count`` instances on the budget (None: one instance
    with no ``--threads``, the runtime's default)."""
    if count == 1:
        return threads
    return max(1, budget(threads) // count)


def fixed(count: int, threads: int | None) -> Instances:
    """``--instances count``: the thread budget split between them."""
    check_count(count)
    return Instances(count, per_instance(count, threads), f"--instances {count}")


def _throughput(call: Callable[[], Any], callers: int) -> float:
    """Calls per second of ``callers`` threads each calling ``call`` for ``PROBE_S``."""
    counts = [0] * callers
    start = threading.Barrier(callers + 1)
    end = [0.0]

    def work(i: int) -> None:
        start.wait()
        while True:
            call()
            counts[i] += 1
            if counts[i] >= PROBE_MIN_CALLS and time.perf_counter() >= end[0]:
                return

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    end[0] = t0 + PROBE_S
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def choose(
    model: Any, load: Callable[[int, int | None], Any], threads: int | None
) -> tuple[Instances, Any]:
    """The instances for ``model`` (loaded for one instance on ``threads``, the budget) and the
    model to serve: ``model``, or ``load(count, threads_each)`` when that configuration, with
    ``count`` concurrent callers, gives at least ``MIN_GAIN`` times ``model``'s throughput with
    one caller. The model not kept is closed. ``model.probe()`` gives the call timed (a model
    without ``probe`` is not probed)."""
    callers = budget(threads)
    if getattr(model, "probe", None) is None:
        return Instances(1, threads, "no probe (one batch at a time)"), model
    if callers < 2:
        return Instances(1, threads, "a thread budget of one"), model
    if getattr(getattr(model, "provider", None), "device_class", "cpu") != "cpu":
        return Instances(1, threads, "a GPU provider (not measured there: set --instances)"), model
    try:
        probe = model.probe()
        # the first call (first-call allocations, lazy initialisation) is timed too: a model
        # too large to probe then costs one call at start, which also warms it for the first
        # request, instead of two
        t0 = time.perf_counter()
        probe()
        call_s = time.perf_counter() - t0
        if call_s <= PROBE_MAX_CALL_S:
            t0 = time.perf_counter()
            probe()
            call_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - a model that serves must not fail on its probe
        log.warning("model instances: the probe call failed (%s); one instance", exc)
        return Instances(1, threads, f"the probe call failed ({type(exc).__name__})"), model
    if call_s > PROBE_MAX_CALL_S:
        why = f"one call takes {call_s:.2f} s: its ops use every core (not probed)"
        return Instances(1, threads, why), model
    one = _throughput(probe, 1)
    each = per_instance(callers, threads)
    other = load(callers, each)
    try:
        other_probe = other.probe()
        other_probe()  # warm-up
        many = _throughput(other_probe, callers)
        lone = _throughput(other_probe, 1)
    except Exception as exc:  # noqa: BLE001 - keep the model that works
        other.close()
        log.warning("model instances: the %d-instance load failed its probe (%s)", callers, exc)
        return Instances(1, threads, f"the probe call failed ({type(exc).__name__})"), model
    gain, slower = many / one, one / lone
    alone = f"{threads} thread(s)" if threads is not None else "all cores"
    how = (
        f"{callers} concurrent calls on {each} thread(s) each gave {gain:.2f}x the throughput "
        f"of one call on {alone}, a lone call {slower:.2f}x its time"
    )
    if gain < MIN_GAIN or slower > MAX_LONE_SLOWDOWN:
        other.close()
        limits = f"needs >= {MIN_GAIN}x and <= {MAX_LONE_SLOWDOWN}x"
        return Instances(1, threads, f"{how} ({limits})"), model
    model.close()
    return Instances(callers, each, how), other
