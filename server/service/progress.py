"""A job's progress in denoising steps.

The batcher calls each row's ``on_step`` after every denoising step (``Row.on_step``, from the
model's worker thread); ``Progress`` counts those calls. The planned total per row is the step
count the request resolved to, times its strength (the steps an inpaint run keeps); a scheduler
that runs one more model call than that (PNDM) raises the total as it goes. A single-pass model
has no steps: each of its rows counts as one step, done when the job is.
"""

from __future__ import annotations

from ..models.base import Row


def planned_steps(row: Row) -> int:
    """The denoising steps ``row`` is expected to run (1 for a single-pass model's row)."""
    if row.steps is None:
        return 1
    return max(1, int(row.steps * (1.0 if row.strength is None else row.strength)))


class Progress:
    """Steps done and planned over one job's rows. Written by one worker thread (the model's),
    read by the event loop: plain ints, each update a single assignment."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        #: rows exist (the request is prepared): the batcher counts them from now on
        self.attached = False

    def attach(self, rows: list[Row]) -> None:
        self.total = sum(planned_steps(r) for r in rows)
        for row in rows:
            row.on_step = self._step
        self.attached = True

    def _step(self) -> None:
        self.done += 1

    def snapshot(self) -> tuple[int, int]:
        """``(done, total)`` with done <= total."""
        done = self.done
        return done, max(self.total, done)

    def complete(self) -> tuple[int, int]:
        """``(total, total)``: the job's rows are all done."""
        total = max(self.total, self.done)
        self.done = self.total = total
        return total, total
