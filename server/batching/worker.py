"""The batcher: a bounded FIFO of rows per model, a pure collate step, and one worker thread per
model that drives the model.

- Single-pass models: dynamic batching. The worker waits for a first row, gathers compatible rows
  for up to ``max_wait_ms`` (at most ``max_batch_size``), runs them in one call. (Diffusion
  models do not wait: late rows join at the next step boundary.)
- Diffusion models: step-level continuous batching. The running batch advances one denoising step
  per UNet call; between steps finished rows leave (batched VAE decode) and queued compatible rows
  join (batched text/VAE encode), each row with its own scheduler state, timestep and guidance.
- FIFO fairness: rows are admitted strictly in arrival order. When the oldest queued row cannot
  join the running batch (different latent size), nothing behind it jumps the queue; the batch
  drains and the next one starts with that row.
- Deadlines and cancellation are checked at every step boundary; rows of a cancelled or expired
  request are dropped there, so their work stops within one step.
- A model call that raises fails exactly the requests whose rows were in that call, loudly; a
  row whose result is an exception (e.g. non-finite output) fails only its own request.

Imports no aiohttp: results are handed to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .models.base import InpaintModel, Row

log = logging.getLogger("server.batching")


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"queue full, retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class JobCancelled(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass(eq=False)
class Job:
    """One request's rows. ``future`` resolves to the list of images, in row order."""

    rows: list[Row]
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    results: dict[int, np.ndarray] = field(default_factory=dict)
    started: bool = False

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        def _set():
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        self.loop.call_soon_threadsafe(_set)


@dataclass(eq=False)
class QueuedRow:
    job: Job
    index: int  # position in job.rows

    @property
    def row(self) -> Row:
        return self.job.rows[self.index]


def collate(
    pending: list[QueuedRow], capacity: int, key: tuple | None, key_fn: Callable[[Row], tuple]
) -> list[QueuedRow]:
    """Pure: the rows to admit now, in FIFO order.

    Takes rows from the head of ``pending`` while they are compatible (``key_fn(row) == key``; a
    ``key`` of None adopts the head row's key) and ``capacity`` allows. Stops at the first
    incompatible row so that nothing overtakes it.
    """
    taken: list[QueuedRow] = []
    for item in pending:
        if len(taken) >= capacity:
            break
        k = key_fn(item.row)
        if key is None:
            key = k
        if k != key:
            break
        taken.append(item)
    return taken


class BadModelOutput(RuntimeError):
    pass


def _check_output(image, row: Row):
    """The image if it is what the model contract promises (uint8 HxWx3, the row's HxW), else a
    BadModelOutput to fail that row's request alone (NaN/inf floats, wrong shapes, not an array)."""
    want = (*row.image.shape[:2], 3)
    if not isinstance(image, np.ndarray):
        return BadModelOutput(f"model returned {type(image).__name__}, not an image array")
    if image.dtype != np.uint8:
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            return BadModelOutput("model returned non-finite values (NaN/inf)")
        return BadModelOutput(f"model returned dtype {image.dtype}, expected uint8")
    if image.shape != want:
        return BadModelOutput(f"model returned shape {image.shape}, expected {want}")
    return image


def _single_key(row: Row) -> tuple:
    return ()


class ModelWorker:
    """Owns one model: a queue of rows and a thread that runs the model."""

    def __init__(
        self,
        model: InpaintModel,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics=None,
    ) -> None:
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: deque[QueuedRow] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running_rows = 0
        self._avg_row_s = 1.0  # running estimate of seconds per row, for Retry-After
        self._thread = threading.Thread(target=self._loop, name=f"model-{model.name}", daemon=True)
        self._thread.start()
        #: sizes of model calls (rows per UNet / model call), most recent last; for tests/metrics.
        self.call_sizes: deque[int] = deque(maxlen=1000)

    # ------------------------------------------------------------------ submit side (event loop)
    def submit(self, rows: list[Row], *, timeout_s: float) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(
            rows=rows, deadline=time.monotonic() + timeout_s, loop=loop, future=loop.create_future()
        )
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if len(self._pending) + len(rows) > self.max_queue:
                wait = (len(self._pending) + self._running_rows) * self._avg_row_s
                raise QueueFull(max(1, min(60, int(wait / max(1, self.max_batch_size)) + 1)))
            for i in range(len(rows)):
                self._pending.append(QueuedRow(job, i))
            self._gauge()
            self._cond.notify()
        return job

    def queued_rows(self) -> int:
        with self._cond:
            return len(self._pending)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, fail what is still queued, let the running batch finish."""
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for item in dropped:
            item.job.resolve(error=ShuttingDown())
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.model.name).set(
                len(self._pending) + self._running_rows
            )

    def _take(self, capacity: int, key: tuple | None, wait_s: float) -> list[QueuedRow]:
        """Block until at least one row can be admitted (or stopping) when the batch is empty;
        then gather for up to ``wait_s`` more. Returns [] when nothing is admissible now."""
        key_fn = self.model.batch_key if self.model.kind == "diffusion" else _single_key
        with self._cond:
            if key is None:
                while not self._pending and not self._stopping:
                    self._cond.wait(0.5)
                if self._stopping and not self._pending:
                    return []
                end = time.monotonic() + wait_s
                while len(self._pending) < capacity and not self._stopping:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self._drop_dead_pending()
            taken = collate(list(self._pending), capacity, key, key_fn)
            for _ in taken:
                self._pending.popleft()
            self._running_rows += len(taken)
            self._gauge()
        now = time.monotonic()
        for item in taken:
            if not item.job.started and self.metrics is not None:
                self.metrics.queue_time.labels(self.model.name).observe(now - item.job.enqueued)
            item.job.started = True
        return taken

    def _drop_dead_pending(self) -> None:
        now = time.monotonic()
        keep = deque()
        for item in self._pending:
            if item.job.cancelled.is_set():
                continue
            if now > item.job.deadline:
                item.job.resolve(error=DeadlineExceeded())
                continue
            keep.append(item)
        self._pending = keep

    def _release(self, n: int) -> None:
        with self._cond:
            self._running_rows -= n
            self._gauge()

    def _deliver(self, item: QueuedRow, image) -> None:
        job = item.job
        if not isinstance(image, BaseException):
            image = _check_output(image, item.row)
        if isinstance(image, BaseException):
            if self.metrics is not None:
                self.metrics.model_errors.labels(self.model.name).inc()
            log.error("model %s: bad output for one row: %s", self.model.name, image)
            job.resolve(error=image)
            return
        job.results[item.index] = image
        if len(job.results) == len(job.rows):
            job.resolve([job.results[i] for i in range(len(job.rows))])

    def _fail(self, items: list[QueuedRow], exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.model_errors.labels(self.model.name).inc()
        log.error("model %s failed on %d rows", self.model.name, len(items), exc_info=exc)
        for item in items:
            item.job.resolve(error=exc)

    def _loop(self) -> None:
        while True:
            try:
                if self.model.kind == "diffusion":
                    alive = self._diffusion_batch()
                else:
                    alive = self._single_pass_batch()
            except Exception:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("batcher loop error in model %s", self.model.name)
                alive = True
            if not alive:
                return

    def _record(self, rows: int, seconds: float) -> None:
        self.call_sizes.append(rows)
        if self.metrics is not None:
            self.metrics.batch_rows.labels(self.model.name).observe(rows)
        self._avg_row_s = 0.8 * self._avg_row_s + 0.2 * (seconds / max(1, rows))

    def _single_pass_batch(self) -> bool:
        items = self._take(self.max_batch_size, None, self.max_wait_s)
        if not items:
            return not self._stopping
        try:
            t0 = time.perf_counter()
            images = self.model.run([it.row for it in items])
            self._record(len(items), time.perf_counter() - t0)
            if len(images) != len(items):
                raise RuntimeError(f"model returned {len(images)} images for {len(items)} rows")
            for item, image in zip(items, images, strict=True):
                self._deliver(item, image)
            if self.metrics is not None:
                self.metrics.images.labels(self.model.name).inc(len(items))
        except Exception as exc:  # noqa: BLE001
            self._fail(items, exc)
        finally:
            self._release(len(items))
        return True

    def _diffusion_batch(self) -> bool:
        model = self.model
        active: list[QueuedRow] = []
        key: tuple | None = None
        while True:
            capacity = self.max_batch_size - len(active)
            if capacity > 0:
                # No gathering wait here: a row that arrives a moment later joins at the next
                # step boundary anyway, so waiting would only add latency to a lone request.
                new = self._take(capacity, key, 0.0)
                if new:
                    try:
                        model.prepare([it.row for it in new])
                        key = model.batch_key(new[0].row)
                        active.extend(new)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(new, exc)
                        self._release(len(new))
            if not active:
                return not self._stopping
            active = self._drop_dead(active)
            if not active:
                key = None
                continue
            try:
                t0 = time.perf_counter()
                model.step([it.row for it in active])
                self._record(len(active), time.perf_counter() - t0)
                if self.metrics is not None:
                    self.metrics.steps.labels(model.name).inc(len(active))
            except Exception as exc:  # noqa: BLE001
                self._fail(active, exc)
                self._release(len(active))
                active, key = [], None
                continue
            done = [it for it in active if model.is_done(it.row)]
            if done:
                active = [it for it in active if it not in done]
                try:
                    images = model.finish([it.row for it in done])
                    if len(images) != len(done):
                        raise RuntimeError(
                            f"model returned {len(images)} images for {len(done)} rows"
                        )
                    for item, image in zip(done, images, strict=True):
                        self._deliver(item, image)
                    if self.metrics is not None:
                        self.metrics.images.labels(model.name).inc(len(done))
                except Exception as exc:  # noqa: BLE001
                    self._fail(done, exc)
                finally:
                    self._release(len(done))
            if not active:
                key = None

    def _drop_dead(self, active: list[QueuedRow]) -> list[QueuedRow]:
        now = time.monotonic()
        keep = []
        dropped = 0
        for item in active:
            job = item.job
            if job.cancelled.is_set():
                dropped += 1
                continue
            if now > job.deadline:
                job.resolve(error=DeadlineExceeded())
                dropped += 1
                continue
            keep.append(item)
        if dropped:
            self._release(dropped)
        return keep


class Batcher:
    """One ModelWorker per model name."""

    def __init__(
        self,
        models: dict[str, InpaintModel],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics=None,
    ) -> None:
        self.workers = {
            name: ModelWorker(
                m,
                max_batch_size=max_batch_size,
                max_wait_ms=max_wait_ms,
                max_queue=max_queue,
                metrics=metrics,
            )
            for name, m in models.items()
        }

    def worker(self, name: str) -> ModelWorker:
        return self.workers[name]

    def stop(self, timeout: float | None = None) -> None:
        for w in self.workers.values():
            w.stop(timeout)
