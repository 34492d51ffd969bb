"""``JobService``: what the HTTP layer asks of jobs (submit, read, cancel), for one caller.

A job belongs to the API key that created it (``owner``: the key's id; "" without auth): any
other key gets a 404, as if it did not exist. ``Idempotency-Key`` (IETF
draft-ietf-httpapi-idempotency-key-header) is scoped to the owner: the same key with the same
request returns the first job again; with a different request it is a 422 (the draft's answer
for a key reused with another payload; 409 is its answer for a request still being processed,
which cannot happen here: a submission is settled before it is answered).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import BinaryIO

from ..config import ServerConfig
from ..errors import APIError, overloaded
from ..metrics import Metrics
from ..protocol import EditRequest, ProtocolError
from ..service import EditService, Uploads
from ..service.admission import Reservation
from ..service.progress import planned_steps
from ..storage import Store
from . import webhooks
from .model import (
    RUNNING,
    SUCCEEDED,
    WEBHOOK_FIELD,
    JobRecord,
    JobRequest,
    Upload,
    edit_fields,
    fingerprint,
    new_job_id,
    pin_seed,
    public,
    result_key,
    upload_key,
)
from .runner import JobRunner
from .store import IdempotencyMismatch, JobStore, QueueFull

#: how long a DELETE waits for a running job to stop before it answers (202 if it has not)
CANCEL_WAIT_S = 5.0
#: Idempotency-Key values: printable ASCII, at most this long
MAX_IDEMPOTENCY_KEY = 255
#: the queue-full answer's Retry-After, in seconds
QUEUE_FULL_RETRY_S = 30


def reused_key(job: JobRecord) -> APIError:
    return APIError(
        422,
        "This Idempotency-Key was already used for a different request (job "
        f"{job.id}). Send a new key for a new request.",
        code="idempotency_key_reused",
    )


def check_idempotency_key(value: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header (a structured-field string: quotes optional);
    ProtocolError for an empty, over-long or non-printable one."""
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise ProtocolError(
            f"Invalid Idempotency-Key header: use 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
            "characters (a UUID is a good choice).",
            "Idempotency-Key",
            "invalid_value",
        )
    return key


@dataclass
class JobView:
    """A job for ``GET``: ``body``, its public object without ``result``; for a succeeded job,
    ``result``, the stored ``result.json`` (the synchronous route's body) open for reading,
    ``result_size`` bytes long. Served as they are, never decoded: a result can be hundreds of
    MB (``http/jobs.py`` writes the body around it)."""

    body: dict
    result: BinaryIO | None = None
    result_size: int = 0


def queue_full(queued: int) -> APIError:
    return overloaded(
        QUEUE_FULL_RETRY_S,
        f"This API key has {queued} queued jobs, the server's limit. Retry after the "
        "number of seconds in the Retry-After header.",
    )


def _files(uploads: Uploads) -> list[tuple[str, bytes]]:
    extra = [u for u in (uploads.mask, uploads.markup) if u is not None]
    return [(u.field, u.data) for u in [*uploads.images, *extra]]


class JobService:
    def __init__(
        self,
        store: JobStore,
        objects: Store,
        runner: JobRunner,
        edits: EditService,
        config: ServerConfig,
        metrics: Metrics,
        executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.objects = objects
        self.runner = runner
        self.edits = edits
        self.config = config
        self.metrics = metrics
        self.executor = executor
        self.clock = clock

    async def _db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ submit
    async def submit(
        self,
        *,
        owner: str,
        fields: dict[str, str],
        edit: EditRequest,
        uploads: Uploads,
        base_url: str,
        idempotency_key: str | None,
        reservation: Reservation | None = None,
    ) -> tuple[JobRecord, bool]:
        """Validate the request as the synchronous route does, store its uploads and queue
        it: ``(job, created)``; ``created`` is False for an idempotent replay."""
        files = _files(uploads)
        digest = fingerprint(fields, files)
        if idempotency_key is not None:
            existing = await self._db(
                self.store.find_idempotent, owner, idempotency_key, self.clock()
            )
            if existing is not None:
                if existing.fingerprint != digest:
                    raise reused_key(existing)
                return existing, False
        webhook_url = await self._check_webhook(fields.get(WEBHOOK_FIELD))
        prepared = await self._db(self.edits.prepare, edit, uploads, reservation)
        model, rows = prepared.model.name, len(prepared.rows)
        steps = sum(planned_steps(row) for row in prepared.rows)
        del prepared  # only its verdict was needed: the job prepares again when it runs
        limit = self.config.jobs.max_queued_jobs
        queued = await self._db(self.store.count_queued, owner)
        if queued >= limit:  # early, before the uploads are stored (create checks again)
            raise queue_full(queued)
        job_id = new_job_id()
        stored = [Upload(field, upload_key(job_id, i)) for i, (field, _) in enumerate(files)]
        for item, (_, data) in zip(stored, files, strict=True):
            await self._db(self.objects.put_object, item.key, data, "application/octet-stream")
        values = {
            "id": job_id,
            "owner": owner,
            "model": model,
            "rows": rows,
            # seed and model pinned: a rerun on any replica makes the same image
            "request": JobRequest(
                {**edit_fields(pin_seed(dict(fields))), "model": model}, tuple(stored)
            ).to_json(),
            "fingerprint": digest,
            "idempotency_key": idempotency_key,
            "base_url": base_url,
            "webhook_url": webhook_url,
            "created_at": self.clock(),
            "steps_total": steps,
        }
        try:
            job, created = await self._db(self.store.create, values, limit)
        except IdempotencyMismatch as clash:
            await self._delete(stored)
            raise reused_key(clash.job) from None
        except QueueFull as full:  # concurrent submissions filled the queue meanwhile
            await self._delete(stored)
            raise queue_full(full.queued) from None
        if not created:  # a concurrent twin won the key: ours is not needed
            await self._delete(stored)
            return job, False
        self.metrics.jobs_submitted.inc()
        self.runner.wake()
        return job, True

    async def _delete(self, stored: list[Upload]) -> None:
        for item in stored:
            await self._db(self.objects.delete_object, item.key)

    async def _check_webhook(self, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        if not self.config.jobs.webhook_secret:
            raise ProtocolError(
                f"'{WEBHOOK_FIELD}' needs a signing secret on the server (--webhook-secret), "
                "and this server has none; poll the job instead.",
                WEBHOOK_FIELD,
                "invalid_value",
            )
        url = url.strip()
        _, host, port = webhooks.check_url(url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        except OSError:
            raise webhooks.refuse(f"the host {host[:80]!r} does not resolve.") from None
        webhooks.allowed_addresses(host, infos, self.config.jobs.webhook_allow_private)
        return url

    # ------------------------------------------------------------------ read, cancel
    async def get(self, owner: str, job_id: str) -> JobView | None:
        """The job as ``GET`` shows it, with its result opened (not read) once succeeded; None
        if it does not exist for ``owner`` or has expired. The caller reads the result with
        ``read`` and must ``close`` it."""
        job = await self._db(self.store.get, job_id, owner, self.clock())
        if job is None:
            return None
        if job.status != SUCCEEDED:
            return JobView(public(job))
        opened = await self._db(self.objects.open_object, result_key(job.id))
        if opened is None:  # expired with the url files, a moment before the row
            return None
        return JobView(public(job), *opened)

    async def read(self, view: JobView, size: int) -> bytes:
        """Up to ``size`` more bytes of the view's result (b"" at its end), read in a thread."""
        return await self._db(view.result.read, size)

    async def close(self, view: JobView) -> None:
        if view.result is not None:
            await self._db(view.result.close)

    async def cancel(self, owner: str, job_id: str) -> JobRecord | None:
        """Cancel the job: at once when queued, at its next step when running (here or on
        another replica); waits up to ``CANCEL_WAIT_S`` for a running one to stop."""
        job = await self._db(self.store.cancel, job_id, owner, self.clock())
        if job is None or job.status != RUNNING:
            return job
        self.runner.cancel_local(job.id)
        end = time.monotonic() + CANCEL_WAIT_S
        while job is not None and job.status == RUNNING and time.monotonic() < end:
            await asyncio.sleep(0.1)
            job = await self._db(self.store.get, job_id, owner, self.clock())
        return job
