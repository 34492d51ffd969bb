"""``Deliveries``: sends the webhooks that are due, from any replica.

A finished job with a ``webhook_url`` is due at once (``store.finish`` marks it). ``dispatch``
claims due jobs (``store.claim_webhook``: not due again for ``hold_s``, so no other replica
sends the same one meanwhile) and posts each as a task on the event loop (``webhooks.post``:
the whole attempt bounded by ``--webhook-timeout``). After an attempt the job is
``delivered``, ``failed`` (no retries left) or due again after the backoff, so a replica that
dies mid-delivery leaves the webhook to another one once ``hold_s`` has passed: receivers may
see an event twice (at-least-once: deduplicate by ``webhook-id``).

Slow receivers cannot starve the others: an attempt costs a socket, not a thread, one replica
runs up to ``MAX_IN_FLIGHT`` of them, and at most ``PER_KEY`` for one API key (its other due
webhooks wait for a slot; other keys' are claimed past them). A stopping replica waits
``STOP_WAIT_S`` for its attempts, then abandons them; their claims expire and they are sent
again (``hold_s`` later).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from ..config import JobsConfig
from ..metrics import Metrics
from . import webhooks
from .model import JobRecord, public
from .store import JobStore

log = logging.getLogger("server.jobs")

#: webhook attempts in flight on one replica (each is a task and a socket, no thread)
MAX_IN_FLIGHT = 32
#: attempts in flight for one API key: its slow receivers hold no more slots than this
PER_KEY = 2
#: threads for the attempts' name lookups (a lookup can outlive its abandoned attempt)
RESOLVER_THREADS = 8
#: seconds past ``--webhook-timeout`` before a claimed webhook is due again (the database
#: writes around an attempt, or a replica that died during it)
HOLD_MARGIN_S = 10.0
#: how long a stopping replica waits for its attempts in flight before abandoning them (at
#: the same time as its jobs stop: within the runner's STOP_WAIT_S, the exit budget's share)
STOP_WAIT_S = 0.4


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
        self.hold_s = config.webhook_timeout + HOLD_MARGIN_S
        self._resolver = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="webhook-dns")
        self._tls = ssl.create_default_context() if self.key is not None else None
        self._tasks: set[asyncio.Task] = set()
        #: attempts in flight per owner (API key id)
        self._per_key: Counter[str] = Counter()

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def dispatch(self) -> None:
        """Start the due deliveries this replica has room for."""
        if self.key is None:
            return
        while len(self._tasks) < MAX_IN_FLIGHT:
            busy = [owner for owner, n in self._per_key.items() if n >= PER_KEY]
            job = await self._db(self.store.claim_webhook, self.clock(), self.hold_s, busy)
            if job is None:
                return
            self._per_key[job.owner] += 1
            task = asyncio.ensure_future(self._deliver(job))
            self._tasks.add(task)
            task.add_done_callback(lambda t, owner=job.owner: self._done(t, owner))

    def _done(self, task: asyncio.Task, owner: str) -> None:
        self._tasks.discard(task)
        self._per_key[owner] -= 1
        if self._per_key[owner] <= 0:
            del self._per_key[owner]

    async def _deliver(self, job: JobRecord) -> None:
        """One attempt (``job.webhook_attempts`` is its number), then its outcome recorded."""
        body = webhooks.event_body(event_type(job), public(job), self.clock())
        headers = webhooks.signed_headers(self.key, message_id(job), int(self.clock()), body)
        outcome = await webhooks.post(
            job.webhook_url,
            body,
            headers,
            self.config.webhook_timeout,
            self.config.webhook_allow_private,
            resolver=self._resolver,
            tls=self._tls,
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
        """Wait up to ``STOP_WAIT_S`` for attempts in flight, then abandon the rest (their
        claims expire: they are sent again ``hold_s`` after they were claimed)."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=STOP_WAIT_S)
            for task in late:
                task.cancel()
            if late:  # a cancelled attempt ends at once (its socket is dropped)
                await asyncio.wait(late, timeout=0.1)
                log.info("stopped with %d webhook attempts abandoned (sent again later)", len(late))
        self._resolver.shutdown(wait=False, cancel_futures=True)
