"""Dynamic batching for single-pass models (``SinglePassModel``: one ``run`` call per batch).

The loop waits for a first row, gathers more for up to ``max_wait_ms`` (at most
``max_batch_size``), and runs them in one ``model.run`` call. Any queued rows are compatible:
the model's ``batch_key`` is not consulted. Deadlines and cancellation are checked when rows are
taken from the queue; a running call is not interrupted.
"""

from __future__ import annotations

import time

from ..models.base import Row
from .worker import ModelWorker


def _any_key(row: Row) -> tuple:
    return ()


class SinglePassWorker(ModelWorker):
    """Drives ``model.run(rows) -> list[uint8 HxWx3]``, one call per gathered batch."""

    def _run_batch(self) -> bool:
        if not self._wait_for_rows(self.max_wait_s):
            return False
        items = self._admit(self.max_batch_size, None, _any_key)
        if not items:
            return True
        try:
            t0 = time.perf_counter()
            images = self.model.run([it.row for it in items])
            self._record(items, time.perf_counter() - t0)
            for it in items:  # progress: a single-pass row is its one step (service/progress.py)
                if it.row.on_step is not None:
                    it.row.on_step()
            self._deliver(items, images)
        except Exception as exc:  # noqa: BLE001 - fails exactly this call's rows
            self._fail(items, exc)
        return True
