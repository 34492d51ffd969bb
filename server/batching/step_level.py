"""Step-level continuous batching for diffusion models (``StepwiseModel``).

The running batch advances one denoising step per ``model.step`` call (one batched UNet call).
Between steps: queued rows with the running batch's ``batch_key`` join (``model.prepare``:
batched text/VAE encode; each row keeps its own scheduler state, timestep and guidance in
``row.state``), rows of cancelled or expired requests leave, and finished rows leave through one
batched ``model.finish`` (VAE decode). There is no gathering wait: a row that arrives a moment
later joins at the next step boundary anyway, so waiting would only delay a lone request.

FIFO: rows join strictly in arrival order; when the oldest queued row has another key (latent
size), nothing behind it jumps the queue; the batch drains and the next one starts with it.
"""

from __future__ import annotations

import time

from .worker import ModelWorker


class StepLevelWorker(ModelWorker):
    """Drives ``prepare`` / ``step`` / ``is_done`` / ``finish`` of a ``StepwiseModel``."""

    def _run_batch(self) -> bool:
        if not self._wait_for_rows(0.0):
            return False
        model = self.model
        active = []  # list[QueuedRow], admission order
        key: tuple | None = None  # the running batch's batch_key; None until a row is prepared
        while True:
            capacity = self.max_batch_size - len(active)
            if capacity > 0:
                new = self._admit(capacity, key, model.batch_key)
                if new:
                    try:
                        model.prepare([it.row for it in new])
                        key = model.batch_key(new[0].row)
                        active.extend(new)
                    except Exception as exc:  # noqa: BLE001 - fails exactly the new rows
                        self._fail(new, exc)
            active = self._drop_dead(active)
            if not active:
                return True
            try:
                t0 = time.perf_counter()
                model.step([it.row for it in active])
                self._record(active, time.perf_counter() - t0)
                if self.metrics is not None:
                    self.metrics.steps.labels(model.name).inc(len(active))
                for it in active:
                    if it.row.on_step is not None:
                        it.row.on_step()
            except Exception as exc:  # noqa: BLE001 - fails exactly the stepped rows
                self._fail(active, exc)
                return True
            done = [it for it in active if model.is_done(it.row)]
            if done:
                finished = set(done)
                active = [it for it in active if it not in finished]
                try:
                    self._deliver(done, model.finish([it.row for it in done]))
                except Exception as exc:  # noqa: BLE001 - fails exactly the finished rows
                    self._fail(done, exc)
                if not active:
                    return True
