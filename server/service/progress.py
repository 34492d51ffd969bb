"""A request's progress in denoising steps (async jobs poll it; streams with
``stream_progress`` send it as events).

The batcher calls each row's ``on_step`` after every denoising step (``Row.on_step``, from the
model's worker thread); ``Progress`` counts those calls. The planned total per row is the step
count the request resolved to, times its strength (the steps an inpaint run keeps); a scheduler
that runs one more model call than that (PNDM) raises the total as it goes. A single-pass model
has no steps: each of its rows counts as one step, done when the job is.
"""

from __future__ import annotations

from collections.abc import Callable

from ..models.base import Row


def planned_steps(row: Row) -> int:
    """The denoising steps ``row`` is expected to run (1 for a single-pass model's row)."""
    if row.steps is None:
        return 1
    return max(1, int(row.steps * (1.0 if row.strength is None else row.strength)))


class Progress:
    """Steps done and planned over one request's rows. Written by one worker thread (the
    model's), read by the event loop: plain ints, each update a single assignment.
    ``on_change``: called after each step, in the worker thread (quick, must not raise)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.done = 0
        self.total = 0
        self.on_change = on_change
        #: rows exist (the request is prepared): the batcher counts them from now on
        self.attached = False

    def attach(self, rows: list[Row]) -> None:
        self.total = sum(planned_steps(r) for r in rows)
        for row in rows:
            row.on_step = self._step
        self.attached = True

    def _step(self) -> None:
        self.done += 1
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> tuple[int, int]:
        """``(done, total)`` with done <= total."""
        done = self.done
        return done, max(self.total, done)

    def complete(self) -> tuple[int, int]:
        """``(total, total)``: the job's rows are all done."""
        total = max(self.total, self.done)
        self.done = self.total = total
        return total, total
