"""The batcher's pure data: jobs and queued rows, the exceptions, ``collate`` and the output check.

Nothing here owns a thread or a lock; every function can be tested on its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..models.base import Row

__all__ = [
    "BadModelOutput",
    "DeadlineExceeded",
    "Job",
    "QueueFull",
    "QueuedRow",
    "ShuttingDown",
    "collate",
]


class QueueFull(Exception):
    """The model's queue has no room for the request's rows.

    ``retry_after_s`` (int, 1..60): the estimated seconds until it drains, for ``Retry-After``.
    """

    def __init__(self, retry_after_s: int):
        super().__init__(f"queue full, retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before all its rows were done."""


class ShuttingDown(Exception):
    """The worker is stopping: it takes no new rows and fails the queued ones."""


class BadModelOutput(RuntimeError):
    """A row's result broke the model contract (see ``check_output``); fails that row alone."""


@dataclass(eq=False)
class Job:
    """One request's rows. ``future`` resolves to the list of images (uint8 HxWx3, one per row,
    in row order) or to the first error one of its rows met.

    The caller sets ``cancelled`` to drop the job's rows at the next step boundary (its future is
    then left unresolved: nobody waits for it). ``deadline`` is a ``time.monotonic()`` value.
    """

    rows: list[Row]
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    #: what one of its rows costs in the queue, in rows of the model's native size (a row of 4x
    #: the native pixels costs 4): the queue bounds work, not requests
    row_cost: int = 1
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: finished images by row index (written by the worker thread only)
    results: dict[int, np.ndarray] = field(default_factory=dict)
    #: set when the job's first row is admitted (queue_time is observed once per job)
    started: bool = False

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        """Set the future's result (or ``error``) on its event loop; safe from any thread. Only
        the first call counts."""

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
    """One row of a job, as the queue and the loops see it (hashed by identity)."""

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


def check_output(image, row: Row):
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
