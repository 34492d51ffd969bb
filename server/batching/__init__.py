"""The batcher: a bounded FIFO of rows per model, a pure collate step, and one worker per model
whose threads (one per model instance, usually one) drive the model.

- Single-pass models: dynamic batching. The worker waits for a first row, gathers compatible rows
  for up to ``max_wait_ms`` (at most ``max_batch_size``), runs them in one call. (Diffusion
  models do not wait: late rows join at the next step boundary.)
- Diffusion models: step-level continuous batching. The running batch advances one denoising step
  per UNet call; between steps finished rows leave (batched VAE decode) and queued compatible rows
  join (batched text/VAE encode), each row with its own scheduler state, timestep and guidance.
- Instances: a model may run several batches at once (``instances`` loop threads sharing its
  queue and sessions; ``server.models.instances`` says when that pays).
- FIFO fairness: rows are admitted strictly in arrival order. When the oldest queued row cannot
  join the running batch (different latent size), nothing behind it jumps the queue; the batch
  drains and the next one starts with that row.
- Deadlines and cancellation are checked at every step boundary; rows of a cancelled or expired
  request are dropped there, so their work stops within one step.
- A model call that raises fails exactly the requests whose rows were in that call, loudly; a
  row whose result is an exception (e.g. non-finite output) fails only its own request.
- Accounting: every row taken from the queue is tracked as running until it is settled
  (delivered, failed, dropped), by one function every exit path uses; the queue-depth gauge is
  queued + running rows, derived, and a loop that raises fails the rows it held.

The loop is chosen once per model, from its interface: a ``StepwiseModel`` (prepare / step /
is_done / finish / batch_key) gets the step-level loop, any other model the single-pass loop.

Modules:
- ``queue.py``: the pure data: Job, QueuedRow, the exceptions, ``collate``, the output check.
- ``worker.py``: ``ModelWorker``, the base: queue, submit/stop, take step, dropping, accounting.
- ``single_pass.py``: ``SinglePassWorker``, the dynamic-batching loop.
- ``step_level.py``: ``StepLevelWorker``, the step-level continuous-batching loop.

Imports no aiohttp: results are handed to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

from ..models.base import InpaintModel, StepwiseModel
from .queue import (
    BadModelOutput,
    DeadlineExceeded,
    Job,
    QueuedRow,
    QueueFull,
    ShuttingDown,
    collate,
)
from .single_pass import SinglePassWorker
from .step_level import StepLevelWorker
from .worker import ModelWorker

__all__ = [
    "BadModelOutput",
    "Batcher",
    "DeadlineExceeded",
    "Job",
    "ModelWorker",
    "QueueFull",
    "QueuedRow",
    "ShuttingDown",
    "SinglePassWorker",
    "StepLevelWorker",
    "collate",
    "make_worker",
    "worker_class",
]


def worker_class(model: InpaintModel) -> type[ModelWorker]:
    """The loop for ``model``, from its interface (not from a name or kind string)."""
    return StepLevelWorker if isinstance(model, StepwiseModel) else SinglePassWorker


def make_worker(
    model: InpaintModel,
    *,
    max_batch_size: int,
    max_wait_ms: float,
    max_queue: int,
    metrics=None,
    instances: int = 1,
) -> ModelWorker:
    """A started worker for ``model`` with the loop ``worker_class`` picks, ``instances`` of
    them running at once."""
    return worker_class(model)(
        model,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        metrics=metrics,
        instances=instances,
    )


class Batcher:
    """One worker per model name (``worker(name)``); ``stop`` stops them all. ``instances``:
    model name -> concurrent batches (absent: one)."""

    def __init__(
        self,
        models: dict[str, InpaintModel],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        metrics=None,
        instances: dict[str, int] | None = None,
    ) -> None:
        self.workers = {
            name: make_worker(
                m,
                max_batch_size=max_batch_size,
                max_wait_ms=max_wait_ms,
                max_queue=max_queue,
                metrics=metrics,
                instances=(instances or {}).get(name, 1),
            )
            for name, m in models.items()
        }

    def worker(self, name: str) -> ModelWorker:
        return self.workers[name]

    def stop(self, timeout: float | None = None) -> None:
        for w in self.workers.values():
            w.stop(timeout)
