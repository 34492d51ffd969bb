"""``Deliveries``: sends the webhooks that are due, from any replica, off the event loop.

A finished job with a ``webhook_url`` is due at once (``store.finish`` marks it). ``dispatch``
claims due jobs (``store.claim_webhook``: not due again for ``hold_s``, so no other replica
sends the same one meanwhile) and posts each in a thread of its own small pool. After an attempt
the job is ``delivered``, ``failed`` (no retries left) or due again after the backoff, so a
replica that dies mid-delivery leaves the webhook to another one once ``hold_s`` has passed:
receivers may see an event twice (at-least-once: deduplicate by ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from ..config import JobsConfig
from ..metrics import Metrics
from . import webhooks
from .model import JobRecord, public
from .store import JobStore

log = logging.getLogger("server.jobs")

#: webhooks posted at once by one replica (each holds a thread while it waits)
MAX_IN_FLIGHT = 4
#: how long a stopping replica waits for its attempts in flight
STOP_WAIT_S = 2.0


def event_type(job: JobRecord) -> str:
    return f"image.edit.job.{job.status}"


def message_id(job: JobRecord) -> str:
    """The ``webhook-id``: one per job (a job finishes once), the same on every retry."""
    return f"msg_{job.id.removeprefix('job_')}"


class Deliveries:
    def __init__(
        self,
        store: JobStore,
        config: JobsConfig,
        metrics: Metrics,
        db: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.db = db
        self.clock = clock
        self.key = webhooks.parse_secret(config.webhook_secret) if config.webhook_secret else None
        #: one attempt's longest time, with room for the database writes around it
        self.hold_s = 2 * config.webhook_timeout + 5.0
        self._posting = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="webhook")
        self._tasks: set[asyncio.Task] = set()

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def dispatch(self) -> None:
        """Start the due deliveries this replica has room for."""
        if self.key is None:
            return
        while len(self._tasks) < MAX_IN_FLIGHT:
            job = await self._db(self.store.claim_webhook, self.clock(), self.hold_s)
            if job is None:
                return
            task = asyncio.ensure_future(self._deliver(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job: JobRecord) -> None:
        """One attempt (``job.webhook_attempts`` is its number), then its outcome recorded."""
        body = webhooks.event_body(event_type(job), public(job), self.clock())
        headers = webhooks.signed_headers(self.key, message_id(job), int(self.clock()), body)
        outcome = await asyncio.get_running_loop().run_in_executor(
            self._posting,
            webhooks.post,
            job.webhook_url,
            body,
            headers,
            self.config.webhook_timeout,
            self.config.webhook_allow_private,
        )
        attempt = job.webhook_attempts
        if isinstance(outcome, int) and 200 <= outcome < 300:
            result, state, next_at = "success", "delivered", None
        elif attempt > self.config.webhook_retries:
            result, state, next_at = "failed", "failed", None
        else:
            result, state = "retry", "pending"
            next_at = self.clock() + webhooks.backoff(attempt, self.config.webhook_backoff)
        self.metrics.webhook_deliveries.labels(result).inc()
        if result != "success":
            log.warning(
                "job %s: webhook attempt %d failed (%s)%s",
                job.id,
                attempt,
                outcome if isinstance(outcome, int) else type(outcome).__name__,
                "; giving up" if state == "failed" else "",
            )
        try:
            await self._db(self.store.webhook_done, job.id, state, next_at)
        except Exception:  # noqa: BLE001 - it stays pending: retried after hold_s
            log.warning("job %s: could not record the webhook attempt", job.id, exc_info=True)

    async def stop(self) -> None:
        """Wait briefly for attempts in flight; unfinished ones are retried after ``hold_s``."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_WAIT_S)
        self._posting.shutdown(wait=False, cancel_futures=True)
