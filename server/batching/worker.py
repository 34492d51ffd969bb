"""``ModelWorker``: what every batching loop shares.

It owns the bounded FIFO of rows (``submit`` / ``stop``), the take step (``_wait_for_rows``,
``_admit``), deadline and cancellation dropping, and the running-row accounting. A subclass
supplies only ``_run_batch``: one batch, from its first admitted row until it drains.

Instances: ``instances`` loop threads share the queue, each running its own batch (a model
instance, ``server.models.instances``); the model's methods are called from all of them at
once. Rows still leave the queue strictly in arrival order: whichever loop takes next takes the
oldest.

Accounting, in one place: every row ``_admit`` hands out is put in ``_running`` under the loop
that took it, and leaves it only through ``_settle``, which ``_deliver``, ``_fail`` and
``_drop_dead`` all use. If ``_run_batch`` raises, or returns while rows it took are still held,
``_loop`` fails and settles those rows (its own, never another loop's). The queue-depth gauge
is always ``len(_pending) + len(_running)``, never counted by hand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ..models.base import InpaintModel, Row
from .queue import (
    DeadlineExceeded,
    Job,
    QueuedRow,
    QueueFull,
    ShuttingDown,
    check_output,
    collate,
)

log = logging.getLogger("server.batching")

#: how a running row leaves: its image (uint8 HxWx3, already checked), the error that fails its
#: request, or None when it is dropped unanswered (its caller cancelled and waits no more)
Outcome = np.ndarray | BaseException | None


class _Unkeyable(Exception):
    def __init__(self, row: Row, error: Exception) -> None:
        super().__init__(str(error))
        self.row, self.error = row, error


def _keyed(key_fn: Callable[[Row], tuple]) -> Callable[[Row], tuple]:
    """``key_fn`` whose failure names the row it failed on."""

    def key(row: Row) -> tuple:
        try:
            return key_fn(row)
        except Exception as exc:  # noqa: BLE001 - a model fault on one request's row
            raise _Unkeyable(row, exc) from exc

    return key


class ModelWorker:
    """Owns one model: a bounded queue of rows and the threads that run the model (one per
    instance).

    Subclasses implement ``_run_batch`` and add no state of their own (the threads start at the
    end of ``__init__``); ``_run_batch`` keeps its batch in local variables, since every loop
    thread runs it.
    """

    def __init__(
        self,
        model: InpaintModel,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics=None,
        instances: int = 1,
    ) -> None:
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: deque[QueuedRow] = deque()  # queued, FIFO; guarded by _cond
        # admitted, not yet settled -> the loop thread holding it; guarded by _cond
        self._running: dict[QueuedRow, int] = {}
        self._stopping = False
        self._avg_row_s = 1.0  # running estimate of seconds per row, for Retry-After
        self.instances = max(1, int(instances))
        self._threads = [
            threading.Thread(target=self._loop, name=f"model-{model.name}-{i}", daemon=True)
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ submit side (event loop)
    def submit(self, rows: list[Row], *, timeout_s: float, row_cost: int = 1) -> Job:
        """Queue ``rows`` (one request) behind everything already queued; the returned job's
        ``future`` resolves on the calling event loop. Each row costs ``row_cost`` of the
        queue's ``max_queue`` (rows of the model's native size). Raises QueueFull or
        ShuttingDown."""
        loop = asyncio.get_running_loop()
        job = Job(
            rows=rows,
            deadline=time.monotonic() + timeout_s,
            loop=loop,
            future=loop.create_future(),
            row_cost=max(1, int(row_cost)),
        )
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            queued = sum(item.job.row_cost for item in self._pending)
            if queued + job.row_cost * len(rows) > self.max_queue:
                ahead = queued + sum(item.job.row_cost for item in self._running)
                wait = ahead * self._avg_row_s
                slots = max(1, self.max_batch_size * self.instances)
                raise QueueFull(max(1, min(60, int(wait / slots) + 1)))
            for i in range(len(rows)):
                self._pending.append(QueuedRow(job, i))
            self._gauge()
            self._cond.notify()
        return job

    def depth(self) -> int:
        """Rows queued or running (what the queue-depth gauge shows)."""
        with self._cond:
            return len(self._pending) + len(self._running)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, fail what is still queued, let the running batch finish."""
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            self._gauge()
            self._cond.notify_all()
        for item in dropped:
            item.job.resolve(error=ShuttingDown())
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))

    # ------------------------------------------------------------------ the loop (worker thread)
    def _run_batch(self) -> bool:
        """Run one batch until it drains; False when the worker should exit (stopping, queue
        empty). Every row it admits must be settled before it returns (``_loop`` fails the rest)."""
        raise NotImplementedError

    def _loop(self) -> None:
        me = threading.get_ident()
        while True:
            error: Exception | None = None
            try:
                alive = self._run_batch()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("batcher loop error in model %s", self.model.name)
                error, alive = exc, True
            with self._cond:
                held = [item for item, owner in self._running.items() if owner == me]
            if held:
                if error is None:
                    error = RuntimeError(f"batch loop ended with {len(held)} rows still running")
                self._fail(held, error)
            if not alive:
                return

    # ------------------------------------------------------------------ the take step
    def _wait_for_rows(self, gather_s: float) -> bool:
        """Block until a row is queued, then for up to ``gather_s`` more seconds until
        ``max_batch_size`` rows are. False when stopping with nothing queued."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait(0.5)
            if self._stopping and not self._pending:
                return False
            end = time.monotonic() + gather_s
            while len(self._pending) < self.max_batch_size and not self._stopping:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return True

    def _admit(
        self, capacity: int, key: tuple | None, key_fn: Callable[[Row], tuple]
    ) -> list[QueuedRow]:
        """Drop dead queued rows, then move the ``collate`` prefix of the queue into the running
        set and return it (maybe empty). Never blocks."""
        with self._cond:
            self._drop_dead_pending()
            while True:
                try:
                    taken = collate(list(self._pending), capacity, key, _keyed(key_fn))
                    break
                except _Unkeyable as bad:  # fail that request alone; the queue moves on
                    self._fail_queued_job(bad.row, bad.error)
            for _ in taken:
                self._pending.popleft()
            owner = threading.get_ident()
            self._running.update((item, owner) for item in taken)
            self._gauge()
        now = time.monotonic()
        for item in taken:
            if not item.job.started and self.metrics is not None:
                self.metrics.queue_time.labels(self.model.name).observe(now - item.job.enqueued)
            item.job.started = True
        return taken

    def _fail_queued_job(self, row: Row, error: Exception) -> None:
        """Under ``_cond``: the model cannot batch a queued ``row``: fail its job and remove all
        of that job's queued rows (a row that never gets a key would block the queue)."""
        job = next(item.job for item in self._pending if item.row is row)
        self._pending = deque(item for item in self._pending if item.job is not job)
        if self.metrics is not None:
            self.metrics.model_errors.labels(self.model.name).inc()
        log.error("model %s cannot batch a queued row: %s", self.model.name, error)
        job.resolve(error=error)

    def _drop_dead_pending(self) -> None:
        """Under ``_cond``: remove queued rows of cancelled jobs, fail those of expired ones."""
        now = time.monotonic()
        keep: deque[QueuedRow] = deque()
        for item in self._pending:
            if item.job.cancelled.is_set():
                continue
            if now > item.job.deadline:
                item.job.resolve(error=DeadlineExceeded())
                continue
            keep.append(item)
        self._pending = keep

    # ------------------------------------------------------------------ the only exits
    def _settle(self, outcomes: list[tuple[QueuedRow, Outcome]]) -> None:
        """The one way a running row leaves the running set; then its outcome reaches its job.
        Rows already settled are ignored, so no row is answered or uncounted twice."""
        with self._cond:
            mine = [(item, out) for item, out in outcomes if item in self._running]
            for item, _ in mine:
                del self._running[item]
            self._gauge()
        for item, outcome in mine:
            job = item.job
            if outcome is None:
                continue
            if isinstance(outcome, BaseException):
                job.resolve(error=outcome)
                continue
            job.results[item.index] = outcome
            if len(job.results) == len(job.rows):
                job.resolve([job.results[i] for i in range(len(job.rows))])

    def _deliver(self, items: list[QueuedRow], images: list) -> None:
        """Settle ``items`` with the model's ``images``: one per row, uint8 HxWx3 at the row's
        HxW, or an exception for that row alone. A wrong count fails them all."""
        if len(images) != len(items):
            exc = RuntimeError(f"model returned {len(images)} images for {len(items)} rows")
            self._fail(items, exc)
            return
        outcomes: list[tuple[QueuedRow, Outcome]] = []
        for item, image in zip(items, images, strict=True):
            if not isinstance(image, BaseException):
                image = check_output(image, item.row)
            if isinstance(image, BaseException):
                if self.metrics is not None:
                    self.metrics.model_errors.labels(self.model.name).inc()
                log.error("model %s: bad output for one row: %s", self.model.name, image)
            outcomes.append((item, image))
        if self.metrics is not None:  # counted before the answers go out
            self.metrics.images.labels(self.model.name).inc(len(items))
        self._settle(outcomes)

    def _fail(self, items: list[QueuedRow], exc: BaseException) -> None:
        """A model call failed: count it once, log it, fail exactly ``items``."""
        if self.metrics is not None:
            self.metrics.model_errors.labels(self.model.name).inc()
        log.error("model %s failed on %d rows", self.model.name, len(items), exc_info=exc)
        self._settle([(item, exc) for item in items])

    def _drop_dead(self, items: list[QueuedRow]) -> list[QueuedRow]:
        """Settle the running rows of cancelled (unanswered) and expired (DeadlineExceeded) jobs;
        return the others, in order."""
        now = time.monotonic()
        keep: list[QueuedRow] = []
        dead: list[tuple[QueuedRow, Outcome]] = []
        for item in items:
            if item.job.cancelled.is_set():
                dead.append((item, None))
            elif now > item.job.deadline:
                dead.append((item, DeadlineExceeded()))
            else:
                keep.append(item)
        if dead:
            self._settle(dead)
        return keep

    # ------------------------------------------------------------------ bookkeeping
    def _gauge(self) -> None:
        """Under ``_cond``: queue depth = queued + running rows."""
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.model.name).set(
                len(self._pending) + len(self._running)
            )

    def _record(self, items: list[QueuedRow], seconds: float) -> None:
        """One model call of ``items`` took ``seconds``: metrics and the Retry-After rate (seconds
        per unit of row cost)."""
        if self.metrics is not None:
            self.metrics.batch_rows.labels(self.model.name).observe(len(items))
        cost = sum(item.job.row_cost for item in items)
        self._avg_row_s = 0.8 * self._avg_row_s + 0.2 * (seconds / max(1, cost))
