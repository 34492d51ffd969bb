"""``JobRunner``: one per replica. It claims jobs when its batcher has room, runs them through the
edit service, holds their leases, settles them, and sends the webhooks that are due.

One loop (``_loop``) wakes every ``POLL_S`` seconds, or at once when this replica queued a job
or finished one:

- for each model whose batcher holds fewer rows than its batch size (queued + running, plus
  the rows of jobs claimed here and not yet queued), claim the oldest job of that model;
- claim due webhooks (``deliveries.py``);
- every ``SWEEP_S``, delete expired jobs and their objects.

Each claimed job runs as a task: it reads the uploads from the object store, runs the edit
(the same ``EditService`` path as the synchronous route, so the same seed gives the same image)
and stores the result (``ImagesResponse`` JSON) as an object. Beside it, ``_hold`` renews the
lease every ``lease / 3`` seconds (at most ``RENEW_MAX_S``) and writes progress; the renewal's
answer stops the job at the next step when a cancel was asked for on any replica, or when this
replica lost the lease (it stalled past the expiry and another claimed the job).

A job stopped because this replica shuts down (or its memory budget is full) goes back to the
queue; with SQLite (one replica) the jobs a killed process left running are queued again at the
next start, with PostgreSQL another replica claims them once their lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from .. import jsonbody
from ..batching import Batcher, ModelWorker
from ..config import ServerConfig
from ..errors import APIError, to_api_error
from ..metrics import Metrics
from ..protocol import parse_edit_fields
from ..service import EditService, Upload, Uploads
from ..service.admission import MemoryBudget
from ..service.progress import Progress
from ..storage import Store
from .deliveries import Deliveries
from .model import CANCELLED, FAILED, SUCCEEDED, JobRecord, JobRequest, result_key
from .polling import poll
from .store import JobStore

log = logging.getLogger("server.jobs")

#: seconds between two looks at the queue when nothing wakes the loop
POLL_S = 0.5
#: the longest gap between two lease renewals (progress is written with them)
RENEW_MAX_S = 1.0
#: how often expired jobs are deleted
SWEEP_S = 60.0
#: how long stop() waits for stopped jobs to be put back in the queue (part of the exit
#: margin after --shutdown-grace; a job that has not stopped by then is requeued by its lease)
STOP_WAIT_S = 0.4
#: why a running job stops early
CANCEL, LOST, STOP, NO_ROOM = "cancel", "lost", "stop", "no room"
#: after a job found no room (memory budget, batcher queue): seconds before claiming again
NO_ROOM_PAUSE_S = 1.0
#: a job put back this many times for want of room fails with that error instead
MAX_ATTEMPTS = 50


class UploadsExpired(APIError):
    def __init__(self) -> None:
        super().__init__(
            410,
            "The job waited in the queue longer than the server keeps uploads (--file-ttl); "
            "submit it again.",
            code="job_uploads_expired",
        )


@dataclass(eq=False)
class Active:
    """A job running on this replica."""

    job: JobRecord
    progress: Progress = field(default_factory=Progress)
    #: why it stops early (CANCEL, LOST, STOP, NO_ROOM), None while it may run on
    reason: str | None = None
    task: asyncio.Task | None = None

    def halt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def stopped(self) -> bool:
        """The edit service's ``cancelled`` poll: its rows leave the batch at the next step."""
        return self.reason is not None


class JobRunner:
    def __init__(
        self,
        *,
        store: JobStore,
        objects: Store,
        service: EditService,
        batcher: Batcher,
        budget: MemoryBudget,
        config: ServerConfig,
        metrics: Metrics,
        executor: Executor,
        deliveries: Deliveries,
        replica: str,
        draining: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.objects = objects
        self.service = service
        self.batcher = batcher
        self.budget = budget
        self.config = config
        self.metrics = metrics
        self.executor = executor
        self.deliveries = deliveries
        self.replica = replica
        self.draining = draining
        self.clock = clock
        self.lease_s = config.jobs.lease_seconds
        self.active: dict[str, Active] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._stopping = False
        self._next_sweep = 0.0
        self._paused_until = 0.0  # monotonic

    async def _db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ lifecycle
    async def start(self, requeue: bool) -> None:
        """Start the loop; ``requeue``: first queue again the jobs a dead process left running
        (only right for a database no other replica uses: SQLite)."""
        if requeue:
            n = await self._db(self.store.requeue_running)
            if n:
                log.info("requeued %d jobs left running by the previous process", n)
                self.metrics.jobs_recovered.inc(n)
        self._loop_task = asyncio.ensure_future(self._loop())

    def wake(self) -> None:
        self._wake.set()

    def cancel_local(self, job_id: str) -> bool:
        """Stop a job running here at its next step (the DELETE's fast path)."""
        active = self.active.get(job_id)
        if active is None:
            return False
        active.halt(CANCEL)
        return True

    async def stop(self) -> None:
        """Claim nothing more; put the running jobs back in the queue; stop the deliveries."""
        self._stopping = True
        self.wake()
        if self._loop_task is not None:
            await self._loop_task
        for active in self.active.values():
            active.halt(STOP)
        tasks = [a.task for a in self.active.values() if a.task is not None]

        async def jobs_stopped() -> None:
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
                for task in late:
                    task.cancel()

        # together: the webhooks in flight get the same STOP_WAIT_S, then are abandoned
        await asyncio.gather(jobs_stopped(), self.deliveries.stop())

    # ------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        await poll(self._tick, self._wake, lambda: self._stopping, POLL_S, log, "job loop")

    async def _tick(self) -> None:
        self.metrics.jobs_queued.set(await self._db(self.store.count_queued))
        claiming = time.monotonic() >= self._paused_until
        if claiming and not self.draining() and not self._stopping:
            for name, worker in self.batcher.workers.items():
                while self._has_room(name, worker):
                    claim = await self._db(
                        self.store.claim, self.replica, [name], self.clock(), self.lease_s
                    )
                    if claim is None:
                        break
                    self.metrics.jobs_claimed.inc()
                    if claim.recovered:
                        self.metrics.jobs_recovered.inc()
                        log.info("job %s: lease expired, running it again", claim.job.id)
                    self._start(claim.job)
        await self.deliveries.dispatch()
        if self.clock() >= self._next_sweep:
            self._next_sweep = self.clock() + SWEEP_S
            await self._sweep()

    def _has_room(self, model: str, worker: ModelWorker) -> bool:
        starting = sum(
            a.job.rows
            for a in self.active.values()
            if a.job.model == model and not a.progress.attached
        )
        return worker.depth() + starting < worker.max_batch_size

    def _start(self, job: JobRecord) -> None:
        active = Active(job)
        self.active[job.id] = active
        self.metrics.jobs_running.set(len(self.active))
        active.task = asyncio.ensure_future(self._run(active))

    # ------------------------------------------------------------------ one job
    async def _run(self, active: Active) -> None:
        job = active.job
        hold = asyncio.ensure_future(self._hold(active))
        reservation = self.budget.reservation()
        outcome: tuple[str, dict] | None = None  # (status, finish kwargs); None = release
        try:
            request = JobRequest.from_json(job.request)
            uploads = await self._db(self._uploads, request)
            edit = parse_edit_fields(request.fields, self.config.limits.max_prompt_chars)
            response = await self.service.edit(
                edit,
                uploads,
                job.base_url,
                active.stopped,
                reservation,
                on_prepared=lambda prepared: active.progress.attach(prepared.rows),
            )
            if active.reason == CANCEL:  # asked for while the images were encoded: it wins
                raise asyncio.CancelledError()
            # tens of MB of base64: encoded in a thread, in pieces (jsonbody.py)
            body = await self._db(jsonbody.encode, response.model_dump(exclude_none=True))
            await self._db(self.objects.put_object, result_key(job.id), body, "application/json")
            outcome = (SUCCEEDED, {"result_key": result_key(job.id), "result_bytes": len(body)})
        except asyncio.CancelledError:
            if active.reason is None:
                active.halt(STOP)  # the task itself was cancelled (a stop past STOP_WAIT_S)
            if active.reason == CANCEL:
                outcome = (CANCELLED, {})
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error
            err = to_api_error(exc)
            # no memory or batcher room, or shutting down (not a request that never fits)
            room = err.status in (429, 503) and err.retry
            if room and job.attempts < MAX_ATTEMPTS:
                active.halt(NO_ROOM)
                self._paused_until = time.monotonic() + NO_ROOM_PAUSE_S
            elif active.reason is None or active.reason == CANCEL:
                outcome = (FAILED, {"error": err.body()["error"]})
        finally:
            reservation.release()
            hold.cancel()
        try:
            await self._settle(active, outcome)
        except Exception:  # noqa: BLE001 - its lease expires and another claim runs it again
            log.exception("job %s: could not record its outcome", job.id)
        finally:
            self.active.pop(job.id, None)
            self.metrics.jobs_running.set(len(self.active))
            self.wake()  # room in the batcher, maybe a webhook due

    def _uploads(self, request: JobRequest) -> Uploads:
        """Blocking: the request's files from the object store."""
        images, mask, markup = [], None, None
        for item in request.uploads:
            data = self.objects.get_object(item.key)
            if data is None:
                raise UploadsExpired()
            if item.field == "mask":
                mask = Upload(item.field, data)
            elif item.field == "markup":
                markup = Upload(item.field, data)
            else:
                images.append(Upload(item.field, data))
        return Uploads(images, mask, markup)

    async def _settle(self, active: Active, outcome: tuple[str, dict] | None) -> None:
        job = active.job
        if active.reason == LOST:
            log.warning("job %s: lease lost to another replica; its result is theirs", job.id)
            return
        if outcome is None:
            if await self._db(self.store.release, job.id, self.replica):
                log.info("job %s: back in the queue (%s)", job.id, active.reason)
            return
        status, extra = outcome
        steps = active.progress.complete() if status == SUCCEEDED else active.progress.snapshot()
        settled = await self._db(
            self.store.finish, job.id, self.replica, status, self.clock(), steps=steps, **extra
        )
        if settled is None:
            return
        self.metrics.jobs_finished.labels(settled).inc()
        log.info("job %s %s (attempt %d)", job.id, settled, job.attempts)
        stale = [item.key for item in JobRequest.from_json(job.request).uploads]
        if status == SUCCEEDED and settled != SUCCEEDED:  # a cancel came first: no result
            stale.append(result_key(job.id))
        if settled == SUCCEEDED:  # the key's stored results stay within their cap
            cap = self.config.jobs.max_stored_results_bytes
            evicted = await self._db(self.store.evict_results, job.owner, cap, self.clock())
            stale += [result_key(old.id) for old in evicted]
            if evicted:
                log.info("key %s: %d older job results removed (cap)", job.owner, len(evicted))
        for key in stale:
            await self._db(self.objects.delete_object, key)

    async def _hold(self, active: Active) -> None:
        """Renew the lease and write progress until the job ends."""
        job = active.job
        every = min(RENEW_MAX_S, self.lease_s / 3)
        while True:
            await asyncio.sleep(every)
            done, total = active.progress.snapshot()
            try:
                held, cancel = await self._db(
                    self.store.renew, job.id, self.replica, self.clock(), self.lease_s, done, total
                )
            except Exception:  # noqa: BLE001 - keep running; the lease may still be ours
                log.warning("job %s: lease renewal failed", job.id, exc_info=True)
                continue
            self.metrics.jobs_lease_renewals.inc()
            if not held:
                active.halt(LOST)
                return
            if cancel:
                active.halt(CANCEL)

    # ------------------------------------------------------------------ upkeep
    async def _sweep(self) -> None:
        stale = await self._db(
            self.store.fail_stale, self.clock(), UploadsExpired().body()["error"]
        )
        if stale:
            log.warning("failed %d jobs queued for longer than --file-ttl", stale)
        expired = await self._db(self.store.expired, self.clock())
        for job in expired:
            keys = [result_key(job.id)] + [u.key for u in JobRequest.from_json(job.request).uploads]
            for key in keys:
                await self._db(self.objects.delete_object, key)
        await self._db(self.store.delete, [job.id for job in expired])
        if expired:
            log.info("removed %d expired jobs", len(expired))
