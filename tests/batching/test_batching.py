"""The batcher without a server: pure collate, dynamic and step-level batching, deadlines,
cancellation, backpressure, fairness and failure isolation, the loop chosen from the model's
interface, and running-row accounting (no leaks on any exit path), with fake models."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest

from server.batching import (
    BadModelOutput,
    Batcher,
    DeadlineExceeded,
    QueuedRow,
    QueueFull,
    ShuttingDown,
    SinglePassWorker,
    StepLevelWorker,
    collate,
    make_worker,
)
from server.metrics import Metrics
from server.models.base import Row


def make_row(seed=0, size=8, steps=3) -> Row:
    return Row(
        image=np.zeros((size, size, 3), np.uint8),
        mask=np.ones((size, size), np.float32),
        prompt="p",
        seed=seed,
        steps=steps,
    )


class FakeJob:
    def __init__(self, rows):
        self.rows = rows


def queued(rows):
    job = FakeJob(rows)
    return [QueuedRow(job, i) for i in range(len(rows))]


# ---------------------------------------------------------------- collate (pure)


def test_collate_takes_fifo_prefix_of_compatible_rows():
    items = queued([make_row(size=8), make_row(size=8), make_row(size=16), make_row(size=8)])
    key_fn = lambda r: (r.image.shape,)  # noqa: E731
    taken = collate(items, capacity=10, key=None, key_fn=key_fn)
    # stops at the first incompatible row: the last 8x8 row must not overtake the 16x16 one
    assert taken == items[:2]


def test_collate_respects_capacity_and_existing_key():
    items = queued([make_row(size=16), make_row(size=16), make_row(size=16)])
    key_fn = lambda r: (r.image.shape,)  # noqa: E731
    assert collate(items, capacity=2, key=None, key_fn=key_fn) == items[:2]
    assert collate(items, capacity=5, key=((8, 8, 3),), key_fn=key_fn) == []
    assert collate(items, capacity=0, key=None, key_fn=key_fn) == []


# ---------------------------------------------------------------- fake models


class FakeSinglePass:
    """No ``kind`` attribute: the loop is chosen from the interface (no ``step``: single-pass)."""

    name = "fake-single"

    def __init__(self, delay=0.05, fail_on_seed=None, nan_seed=None):
        self.delay = delay
        self.calls: list[list[int]] = []
        self.fail_on_seed = fail_on_seed
        self.nan_seed = nan_seed

    def batch_key(self, row):
        return ()

    def run(self, rows):
        time.sleep(self.delay)
        self.calls.append([r.seed for r in rows])
        if self.fail_on_seed is not None and any(r.seed == self.fail_on_seed for r in rows):
            raise RuntimeError("boom")
        return [
            np.full(r.image.shape, np.nan, np.float32)
            if r.seed == self.nan_seed
            else np.full_like(r.image, r.seed % 256)
            for r in rows
        ]


class FakeDiffusion:
    """Each row needs row.steps steps; step() records which rows shared the call."""

    name = "fake-diffusion"

    def __init__(
        self,
        step_delay=0.02,
        nan_seed=None,
        fail_step_seed=None,
        fail_prepare_seed=None,
        done_error_seed=None,
        key_error_seed=None,
    ):
        self.step_delay = step_delay
        self.calls: list[list[int]] = []
        self.prepared: list[list[int]] = []
        self.nan_seed = nan_seed
        self.fail_step_seed = fail_step_seed
        self.fail_prepare_seed = fail_prepare_seed
        self.done_error_seed = done_error_seed  # is_done raises: an error outside any model call
        self.key_error_seed = key_error_seed  # batch_key raises while the row is queued
        self.lock = threading.Lock()

    def batch_key(self, row):
        if row.seed == self.key_error_seed:
            raise RuntimeError("no key for this row")
        return (row.image.shape,)

    def prepare(self, rows):
        self.prepared.append([r.seed for r in rows])
        if any(r.seed == self.fail_prepare_seed for r in rows):
            raise RuntimeError("prepare failed")
        for r in rows:
            r.state = {"left": r.steps}

    def step(self, rows):
        time.sleep(self.step_delay)
        with self.lock:
            self.calls.append([r.seed for r in rows])
        if self.fail_step_seed is not None and any(r.seed == self.fail_step_seed for r in rows):
            raise RuntimeError("step failed")
        for r in rows:
            r.state["left"] -= 1

    def is_done(self, row):
        if row.seed == self.done_error_seed:
            raise RuntimeError("is_done failed")
        return row.state["left"] <= 0

    def finish(self, rows):
        out = []
        for r in rows:
            if r.seed == self.nan_seed:
                out.append(ValueError("non-finite output"))
            else:
                out.append(np.full_like(r.image, r.seed % 256))
        return out


def worker_for(model, **kw):
    opts = dict(max_batch_size=8, max_wait_ms=30, max_queue=64)
    opts.update(kw)
    return make_worker(model, **opts)


@contextlib.contextmanager
def serving(model, **kw):
    """``worker_for(model, **kw)``, stopped (5 s grace) when the block ends, however it ends."""
    w = worker_for(model, **kw)
    try:
        yield w
    finally:
        w.stop(5)


# ---------------------------------------------------------------- single-pass


async def test_single_pass_concurrent_requests_share_calls():
    model = FakeSinglePass(delay=0.05)
    with serving(model, max_wait_ms=50) as w:
        jobs = [w.submit([make_row(seed=i)], timeout_s=10) for i in range(4)]
        results = await asyncio.gather(*(j.future for j in jobs))
        assert [int(r[0][0, 0, 0]) for r in results] == [0, 1, 2, 3]
        assert max(len(c) for c in model.calls) >= 2, model.calls


async def test_single_pass_failure_fails_its_batch_and_worker_survives():
    model = FakeSinglePass(delay=0.0, fail_on_seed=7)
    with serving(model, max_wait_ms=0) as w:
        bad = w.submit([make_row(seed=7)], timeout_s=10)
        with pytest.raises(RuntimeError):
            await bad.future
        good = w.submit([make_row(seed=1)], timeout_s=10)
        (img,) = await good.future
        assert img[0, 0, 0] == 1


# ---------------------------------------------------------------- step-level batching


async def test_diffusion_rows_share_unet_calls_and_join_mid_flight():
    model = FakeDiffusion(step_delay=0.03)
    with serving(model, max_wait_ms=5) as w:
        first = w.submit([make_row(seed=1, steps=10)], timeout_s=10)
        await asyncio.sleep(0.12)  # a few steps in
        second = w.submit([make_row(seed=2, steps=3)], timeout_s=10)
        r1, r2 = await asyncio.gather(first.future, second.future)
        assert r1[0][0, 0, 0] == 1 and r2[0][0, 0, 0] == 2
        shared = [c for c in model.calls if sorted(c) == [1, 2]]
        assert len(shared) == 3, model.calls  # row 2 joined and ran all its 3 steps alongside
        assert model.calls[0] == [1]  # row 1 started alone
        assert sum(c.count(1) for c in model.calls) == 10
        # finished row 2 left: the last steps are row 1 alone
        assert model.calls[-1] == [1]


async def test_incompatible_rows_wait_and_fifo_holds():
    model = FakeDiffusion(step_delay=0.01)
    with serving(model, max_wait_ms=20) as w:
        a = w.submit([make_row(seed=1, size=8, steps=4)], timeout_s=10)
        b = w.submit([make_row(seed=2, size=16, steps=2)], timeout_s=10)  # other latent size
        c = w.submit([make_row(seed=3, size=8, steps=2)], timeout_s=10)  # compatible with a
        await asyncio.gather(a.future, b.future, c.future)
        first_b = next(i for i, call in enumerate(model.calls) if 2 in call)
        first_c = next(i for i, call in enumerate(model.calls) if 3 in call)
        assert all(2 not in call or call == [2] for call in model.calls)  # never mixed sizes
        assert first_b < first_c  # c did not overtake b, which was queued first


async def test_n_rows_of_one_request_all_run_even_above_max_batch():
    model = FakeDiffusion(step_delay=0.0)
    with serving(model, max_batch_size=2) as w:
        job = w.submit([make_row(seed=10 + i, steps=2) for i in range(5)], timeout_s=10)
        images = await job.future
        assert [int(im[0, 0, 0]) for im in images] == [10, 11, 12, 13, 14]
        assert max(len(c) for c in model.calls) <= 2


async def test_cancelled_rows_stop_at_next_step_boundary():
    model = FakeDiffusion(step_delay=0.02)
    with serving(model, max_wait_ms=0) as w:
        job = w.submit([make_row(seed=5, steps=1000)], timeout_s=30)
        await asyncio.sleep(0.15)
        job.cancelled.set()
        await asyncio.sleep(0.15)
        count = sum(c.count(5) for c in model.calls)
        await asyncio.sleep(0.2)
        assert sum(c.count(5) for c in model.calls) == count  # no more work for it
        assert count < 50
        other = w.submit([make_row(seed=6, steps=2)], timeout_s=10)
        assert (await other.future)[0][0, 0, 0] == 6


async def test_deadline_fails_with_deadline_exceeded():
    model = FakeDiffusion(step_delay=0.02)
    with serving(model, max_wait_ms=0) as w:
        job = w.submit([make_row(seed=5, steps=1000)], timeout_s=0.2)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(job.future, 5)


async def test_queue_full_raises_with_retry_after():
    model = FakeDiffusion(step_delay=0.05)
    with serving(model, max_batch_size=1, max_queue=2, max_wait_ms=0) as w:
        running = w.submit([make_row(seed=1, steps=50)], timeout_s=10)
        await asyncio.sleep(0.1)  # now running, queue empty
        w.submit([make_row(seed=2, steps=1), make_row(seed=3, steps=1)], timeout_s=10)
        with pytest.raises(QueueFull) as info:
            w.submit([make_row(seed=4)], timeout_s=10)
        assert info.value.retry_after_s >= 1
        running.cancelled.set()


async def test_step_failure_fails_only_rows_in_that_call_and_nan_row_fails_alone():
    model = FakeDiffusion(step_delay=0.0, nan_seed=9)
    with serving(model, max_wait_ms=30) as w:
        nan_job = w.submit([make_row(seed=9, steps=2)], timeout_s=10)
        ok_job = w.submit([make_row(seed=8, steps=2)], timeout_s=10)
        with pytest.raises(ValueError):
            await nan_job.future
        assert (await ok_job.future)[0][0, 0, 0] == 8

    model = FakeDiffusion(step_delay=0.0, fail_step_seed=4)
    with serving(model, max_wait_ms=0) as w:
        with pytest.raises(RuntimeError):
            await w.submit([make_row(seed=4, steps=2)], timeout_s=10).future
        later = w.submit([make_row(seed=3, steps=2)], timeout_s=10)
        assert (await later.future)[0][0, 0, 0] == 3  # the worker kept serving


async def test_stop_refuses_new_work_and_fails_queued():
    model = FakeDiffusion(step_delay=0.05)
    w = worker_for(model, max_batch_size=1, max_wait_ms=0)
    running = w.submit([make_row(seed=1, steps=4)], timeout_s=10)
    await asyncio.sleep(0.06)
    queued_job = w.submit([make_row(seed=2, steps=4)], timeout_s=10)
    await asyncio.get_running_loop().run_in_executor(None, w.stop, 5)
    assert (await running.future)[0][0, 0, 0] == 1  # in-flight work finished
    with pytest.raises(ShuttingDown):
        await queued_job.future
    with pytest.raises(ShuttingDown):
        w.submit([make_row(seed=3)], timeout_s=10)


async def test_lone_diffusion_request_does_not_wait_for_company():
    # max_wait_ms applies to single-pass batches only: a huge value must not delay a lone
    # diffusion request (latecomers join at the next step boundary instead).
    model = FakeDiffusion(step_delay=0.0)
    with serving(model, max_wait_ms=20_000) as w:
        job = w.submit([make_row(seed=1, steps=2)], timeout_s=10)
        (img,) = await asyncio.wait_for(job.future, 5)
        assert img[0, 0, 0] == 1


# ---------------------------------------------------------------- loop chosen from the interface


async def test_loop_class_is_chosen_from_the_model_interface():
    single, diffusion = FakeSinglePass(delay=0.0), FakeDiffusion(step_delay=0.0)
    assert not hasattr(single, "kind") and not hasattr(diffusion, "kind")
    batcher = Batcher({"s": single, "d": diffusion}, max_batch_size=4, max_wait_ms=0, max_queue=8)
    try:
        assert type(batcher.worker("s")) is SinglePassWorker
        assert type(batcher.worker("d")) is StepLevelWorker
        (a,) = await batcher.worker("s").submit([make_row(seed=3)], timeout_s=10).future
        (b,) = await batcher.worker("d").submit([make_row(seed=4, steps=2)], timeout_s=10).future
        assert a[0, 0, 0] == 3 and b[0, 0, 0] == 4
        assert single.calls == [[3]] and diffusion.calls == [[4], [4]]
    finally:
        batcher.stop(5)


async def test_a_kind_string_does_not_pick_the_loop():
    class SaysDiffusion(FakeSinglePass):
        kind = "diffusion"  # a stale label: no prepare/step/is_done/finish, so single-pass

    with serving(SaysDiffusion(delay=0.0), max_wait_ms=0) as w:
        assert type(w) is SinglePassWorker
        assert (await w.submit([make_row(seed=2)], timeout_s=10).future)[0][0, 0, 0] == 2


# ---------------------------------------------------------------- accounting (no leaks)


def depth(metrics: Metrics, model) -> float | None:
    return metrics.registry.get_sample_value("inpaint_queue_depth", {"model": model.name})


async def wait_depth(metrics: Metrics, model, want: float = 0, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while depth(metrics, model) != want and time.monotonic() < end:
        await asyncio.sleep(0.01)
    assert depth(metrics, model) == want


async def refill_full_queue(w, metrics: Metrics, model, max_queue: int) -> None:
    """The queue takes ``max_queue`` rows again, serves them all, and the gauge returns to 0."""
    job = w.submit([make_row(seed=100 + i, steps=1) for i in range(max_queue)], timeout_s=10)
    images = await asyncio.wait_for(job.future, 10)
    assert [int(im[0, 0, 0]) for im in images] == [100 + i for i in range(max_queue)]
    await wait_depth(metrics, model, 0)


async def test_single_pass_accounting_settles_every_exit_path():
    metrics = Metrics()
    model = FakeSinglePass(delay=0.05, fail_on_seed=7, nan_seed=9)
    with serving(model, max_batch_size=1, max_wait_ms=0, max_queue=8, metrics=metrics) as w:
        ok = w.submit([make_row(seed=1)], timeout_s=10)
        failed = w.submit([make_row(seed=7)], timeout_s=10)
        bad = w.submit([make_row(seed=9)], timeout_s=10)
        half_bad = w.submit([make_row(seed=4), make_row(seed=9)], timeout_s=10)
        cancelled = w.submit([make_row(seed=2)], timeout_s=10)
        cancelled.cancelled.set()  # still queued behind the others: dropped when reached
        expired = w.submit([make_row(seed=3)], timeout_s=0.01)  # expires while queued
        assert depth(metrics, model) >= 6
        assert (await ok.future)[0][0, 0, 0] == 1
        with pytest.raises(RuntimeError, match="boom"):
            await failed.future
        with pytest.raises(BadModelOutput):
            await bad.future
        with pytest.raises(BadModelOutput):
            await half_bad.future
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(expired.future, 5)
        await wait_depth(metrics, model, 0)
        assert not cancelled.future.done()  # dropped unanswered: its caller stopped waiting
        assert [2] not in model.calls and [3] not in model.calls
        errors = metrics.registry.get_sample_value(
            "inpaint_model_errors_total", {"model": model.name}
        )
        assert errors == 3  # one failed call + two bad rows
        await refill_full_queue(w, metrics, model, 8)


async def test_step_level_accounting_settles_every_exit_path():
    metrics = Metrics()
    model = FakeDiffusion(step_delay=0.01, nan_seed=9)
    with serving(model, max_batch_size=8, max_wait_ms=0, max_queue=8, metrics=metrics) as w:
        ok = w.submit([make_row(seed=1, steps=3)], timeout_s=10)
        bad = w.submit([make_row(seed=9, steps=2)], timeout_s=10)
        half_bad = w.submit([make_row(seed=2, steps=2), make_row(seed=9, steps=4)], timeout_s=10)
        cancelled = w.submit([make_row(seed=5, steps=1000)], timeout_s=30)
        expired = w.submit([make_row(seed=6, steps=1000)], timeout_s=0.2)
        assert (await ok.future)[0][0, 0, 0] == 1
        with pytest.raises(ValueError):
            await bad.future
        with pytest.raises(ValueError):
            await half_bad.future
        cancelled.cancelled.set()  # running: dropped at the next step boundary
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(expired.future, 5)
        await wait_depth(metrics, model, 0)
        assert not cancelled.future.done()
        await refill_full_queue(w, metrics, model, 8)

    # failing model calls (prepare, step), each alone so the rows they fail are known
    metrics = Metrics()
    model = FakeDiffusion(step_delay=0.0, fail_step_seed=4, fail_prepare_seed=3)
    with serving(model, max_batch_size=8, max_wait_ms=0, max_queue=8, metrics=metrics) as w:
        with pytest.raises(RuntimeError, match="step failed"):
            await w.submit([make_row(seed=4, steps=2)], timeout_s=10).future
        await wait_depth(metrics, model, 0)
        with pytest.raises(RuntimeError, match="prepare failed"):
            await w.submit([make_row(seed=3, steps=2)], timeout_s=10).future
        await wait_depth(metrics, model, 0)
        await refill_full_queue(w, metrics, model, 8)


async def test_loop_error_fails_the_rows_it_held_and_worker_survives():
    # is_done raising is outside every model-call guard: the loop itself fails. The rows it held
    # must be failed and uncounted, not left running forever.
    metrics = Metrics()
    model = FakeDiffusion(step_delay=0.0, done_error_seed=3)
    with serving(model, max_wait_ms=0, max_queue=4, metrics=metrics) as w:
        job = w.submit([make_row(seed=3, steps=2)], timeout_s=10)
        with pytest.raises(RuntimeError, match="is_done failed"):
            await asyncio.wait_for(job.future, 5)
        await wait_depth(metrics, model, 0)
        await refill_full_queue(w, metrics, model, 4)


async def test_stop_clears_the_gauge():
    metrics = Metrics()
    model = FakeDiffusion(step_delay=0.02)
    w = worker_for(model, max_batch_size=1, max_wait_ms=0, metrics=metrics)
    running = w.submit([make_row(seed=1, steps=3)], timeout_s=10)
    await asyncio.sleep(0.03)
    queued_job = w.submit([make_row(seed=2, steps=3)], timeout_s=10)
    await asyncio.get_running_loop().run_in_executor(None, w.stop, 5)
    assert (await running.future)[0][0, 0, 0] == 1
    with pytest.raises(ShuttingDown):
        await queued_job.future
    assert depth(metrics, model) == 0


async def test_a_row_the_model_cannot_key_fails_alone_and_the_queue_moves_on():
    metrics = Metrics()
    model = FakeDiffusion(step_delay=0.0, key_error_seed=5)
    with serving(model, max_wait_ms=0, max_queue=8, metrics=metrics) as w:
        bad = w.submit([make_row(seed=5, steps=1), make_row(seed=6, steps=1)], timeout_s=10)
        good = w.submit([make_row(seed=7, steps=1)], timeout_s=10)
        with pytest.raises(RuntimeError, match="no key"):
            await asyncio.wait_for(bad.future, 5)
        assert (await asyncio.wait_for(good.future, 5))[0][0, 0, 0] == 7
        await wait_depth(metrics, model, 0)


# ---------------------------------------------------------------- instances (concurrent batches)


class OverlapDiffusion(FakeDiffusion):
    """Counts how many ``step`` calls run at once (the most seen: ``peak``)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.now = self.peak = 0

    def step(self, rows):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            super().step(rows)
        finally:
            with self.lock:
                self.now -= 1


async def test_instances_run_batches_at_once_and_every_row_gets_its_own_image():
    model = OverlapDiffusion(step_delay=0.02)
    with serving(model, max_batch_size=1, max_wait_ms=0, instances=2) as w:
        assert w.instances == 2
        jobs = [w.submit([make_row(seed=i, steps=4)], timeout_s=10) for i in range(4)]
        images = await asyncio.gather(*(j.future for j in jobs))
    assert [int(im[0][0, 0, 0]) for im in images] == [0, 1, 2, 3]
    assert model.peak == 2  # two batches of one row stepped at the same time
    assert all(len(c) == 1 for c in model.calls)  # never more than max_batch_size per call
    assert sorted(s for p in model.prepared for s in p) == [0, 1, 2, 3]


async def test_one_instance_steps_one_batch_at_a_time():
    model = OverlapDiffusion(step_delay=0.01)
    with serving(model, max_batch_size=1, max_wait_ms=0) as w:
        jobs = [w.submit([make_row(seed=i, steps=3)], timeout_s=10) for i in range(3)]
        await asyncio.gather(*(j.future for j in jobs))
    assert model.peak == 1


async def test_instances_take_rows_in_arrival_order():
    model = FakeDiffusion(step_delay=0.01)
    with serving(model, max_batch_size=1, max_wait_ms=0, instances=2) as w:
        jobs = [w.submit([make_row(seed=i, steps=2)], timeout_s=10) for i in range(6)]
        await asyncio.gather(*(j.future for j in jobs))
    firsts = [p[0] for p in model.prepared]
    # each loop takes the oldest queued row: the two running batches are always the two
    # oldest unfinished requests, so row i starts no later than row i + 2's start
    assert sorted(firsts) == list(range(6))
    assert all(firsts.index(i) <= firsts.index(i + 2) for i in range(4))


async def test_a_loop_error_fails_only_the_rows_of_that_instance():
    metrics = Metrics()
    model = FakeDiffusion(step_delay=0.02, done_error_seed=3)
    with serving(model, max_batch_size=1, max_wait_ms=0, metrics=metrics, instances=2) as w:
        long = w.submit([make_row(seed=1, steps=10)], timeout_s=10)
        await asyncio.sleep(0.05)  # row 1 runs in one loop; row 3 goes to the other
        bad = w.submit([make_row(seed=3, steps=2)], timeout_s=10)
        with pytest.raises(RuntimeError, match="is_done failed"):
            await asyncio.wait_for(bad.future, 5)
        assert (await asyncio.wait_for(long.future, 5))[0][0, 0, 0] == 1
        await wait_depth(metrics, model, 0)
        await refill_full_queue(w, metrics, model, 8)


async def test_stop_waits_for_every_instance():
    model = FakeDiffusion(step_delay=0.02)
    w = worker_for(model, max_batch_size=1, max_wait_ms=0, instances=3)
    jobs = [w.submit([make_row(seed=i, steps=3)], timeout_s=10) for i in range(3)]
    await asyncio.sleep(0.03)
    await asyncio.get_running_loop().run_in_executor(None, w.stop, 5)
    assert [int((await j.future)[0][0, 0, 0]) for j in jobs] == [0, 1, 2]
    assert not any(t.is_alive() for t in w._threads)
