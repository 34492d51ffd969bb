"""``BatchRunner``: one per replica. Every ``POLL_S`` it looks at the batches not yet settled
(any owner's; their state is in the database, so a restart or another replica picks up where
a dead one stopped) and does the next thing each needs, under the batch's lease:

- ``validating``: read the input file (``lines.check_input``, in a worker thread), record its
  lines, then turn each line into a job at batch priority (``jobs.batch_id``: claims take
  interactive jobs first), or into an error line when the edit route would refuse its body;
  then ``in_progress``. A validation that died half way is started again: lines already
  recorded are skipped, a line's job id is recorded before its job is created;
- ``in_progress``/``cancelling`` with no line queued or running, or ``finalizing`` whose
  holder died: the finalizer writes the output and error files (ids fixed by the batch id, so
  a second writer changes nothing) and settles the batch: ``completed``, ``cancelled`` or
  ``expired``;
- past ``expires_at``: the lines stop (``store.expire``), and the finalizer settles it as
  ``expired`` with what finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from ..config import ServerConfig
from ..errors import APIError, invalid, to_api_error
from ..files import OUTPUT_PURPOSE, FileService, derived_file_id
from ..jobs.model import (
    FAILED as JOB_FAILED,
)
from ..jobs.model import (
    SUCCEEDED,
    JobRequest,
    Upload,
    edit_fields,
    fingerprint,
    new_job_id,
    pin_seed,
    upload_key,
)
from ..jobs.polling import poll
from ..jobs.runner import JobRunner
from ..jobs.store import JobStore
from ..protocol import parse_edit_fields
from ..service import EditService, Uploads
from ..service.admission import MemoryBudget, Reservation
from ..service.progress import planned_steps
from ..storage import Store
from .lines import check_input, error_line, error_status, output_line, unrun_line
from .model import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FINALIZING,
    IN_PROGRESS,
    VALIDATING,
    BatchRecord,
)
from .store import BatchStore

log = logging.getLogger("server.batches")

#: seconds between two looks at the batches
POLL_S = 0.5
#: how long terminal batches are kept (their files expire sooner, with --file-ttl)
KEEP_S = 7 * 24 * 3600
SWEEP_S = 60.0
#: a line refused for want of memory is tried again this many times, this far apart
BUSY_RETRIES, BUSY_PAUSE_S = 60, 1.0
#: a line whose submission fails with a server error this many times (on one replica) goes to
#: the error file instead of holding its batch in validation until the window closes
LINE_FAULTS = 3

#: ``(owner, JSON edit body, reservation) -> (form fields, uploads)``: the JSON edit body
#: parsed and its file/url references resolved as the edits route does (``http/batches.py``)
PrepareLine = Callable[[str, bytes, Reservation], Awaitable[tuple[dict[str, str], Uploads]]]


class Lost(Exception):
    """This replica no longer holds the batch (or it was cancelled): stop working on it."""


class BatchRunner:
    def __init__(
        self,
        *,
        store: BatchStore,
        files: FileService,
        jobs: JobStore,
        job_runner: JobRunner,
        objects: Store,
        edits: EditService,
        prepare_line: PrepareLine,
        budget: MemoryBudget,
        config: ServerConfig,
        executor: Executor,
        replica: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.files = files
        self.jobs = jobs
        self.job_runner = job_runner
        self.objects = objects
        self.edits = edits
        self.prepare_line = prepare_line
        self.budget = budget
        self.config = config
        self.executor = executor
        self.replica = replica
        self.clock = clock
        self.lease_s = config.jobs.lease_seconds
        self._tasks: dict[str, asyncio.Task] = {}
        self._line_faults: dict[tuple[str, int], int] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._stopping = False
        self._next_sweep = 0.0

    async def _db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ lifecycle
    async def start(self, release: bool) -> None:
        """Start the loop; ``release``: first give back the leases a dead process held (only
        right for a database no other replica uses: SQLite), so its work resumes at once."""
        if release and await self._db(self.store.release_all):
            log.info("resuming the batches the previous process was working on")
        self._loop_task = asyncio.ensure_future(self._loop())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop looking; the batches being validated or finalized here stop (their leases
        expire and another replica, or the next start, goes on)."""
        self._stopping = True
        self.wake()
        if self._loop_task is not None:
            await self._loop_task
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=1.0)

    async def _loop(self) -> None:
        await poll(self._tick, self._wake, lambda: self._stopping, POLL_S, log, "batch loop")

    async def _tick(self) -> None:
        now = self.clock()
        for batch in await self._db(self.store.active):
            if batch.id in self._tasks:
                continue
            if (
                batch.status in (VALIDATING, IN_PROGRESS)
                and batch.expires_at is not None
                and now >= batch.expires_at
                and batch.expired_at is None
            ):
                if await self._db(self.store.expire, batch.id, now):
                    log.info("batch %s: completion window over, stopping its lines", batch.id)
            if batch.status == VALIDATING:
                claimed = await self._db(
                    self.store.claim, batch.id, VALIDATING, self.replica, now, self.lease_s, {}
                )
                if claimed is not None:
                    self._spawn(claimed, self._validate)
            elif batch.status in (IN_PROGRESS, CANCELLING, FINALIZING):
                await self._maybe_finalize(batch, now)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_S
            removed = await self._db(self.store.delete_old, now - KEEP_S)
            if removed:
                log.info("removed %d old batches", removed)

    async def _maybe_finalize(self, batch: BatchRecord, now: float) -> None:
        if batch.lease_until is not None and batch.lease_until >= now:
            return  # someone validates or finalizes it
        if batch.status != FINALIZING and await self._db(self.store.unsettled, batch.id):
            return
        extra = {"status": FINALIZING, "finalizing_at": now} if batch.status == IN_PROGRESS else {}
        claimed = await self._db(
            self.store.claim, batch.id, batch.status, self.replica, now, self.lease_s, extra
        )
        if claimed is not None:
            self._spawn(claimed, self._finalize)

    def _spawn(self, batch: BatchRecord, work) -> None:
        async def run() -> None:
            hold = asyncio.ensure_future(self._hold(batch.id, current))
            try:
                await work(batch, current)
            except Lost:
                log.info("batch %s: stopped here (cancelled, or its lease was lost)", batch.id)
            except asyncio.CancelledError:
                pass
            except APIError as exc:  # the memory budget is full: its lease expires, then again
                log.warning("batch %s: %s; tried again later", batch.id, exc.message)
            except Exception:  # noqa: BLE001 - its lease expires and it is tried again
                log.exception(
                    "batch %s: failed here; it is retried when its lease expires", batch.id
                )
            finally:
                hold.cancel()
                self._tasks.pop(batch.id, None)
                self.wake()

        current = {"batch": batch}
        self._tasks[batch.id] = asyncio.ensure_future(run())

    async def _hold(self, batch_id: str, current: dict) -> None:
        """Renew the lease every third of it; ``current["batch"]`` is the latest row (None
        once the lease is lost)."""
        while True:
            await asyncio.sleep(max(0.5, self.lease_s / 3))
            try:
                current["batch"] = await self._db(
                    self.store.renew, batch_id, self.replica, self.clock(), self.lease_s
                )
            except Exception:  # noqa: BLE001 - keep going; the lease may still be ours
                log.warning("batch %s: lease renewal failed", batch_id, exc_info=True)
                continue
            if current["batch"] is None:
                return

    # ------------------------------------------------------------------ validation
    async def _validate(self, batch: BatchRecord, current: dict) -> None:
        await self._check(current)
        data = await self._db(self.files.read_sync, batch.owner, batch.input_file_id)
        if data is None:
            errors = [
                {
                    "code": "invalid_file",
                    "message": f"The input file {batch.input_file_id} has expired or was "
                    "deleted before the batch started; upload it again.",
                    "line": None,
                    "param": "input_file_id",
                }
            ]
            await self._db(self.store.fail, batch.id, self.replica, self.clock(), errors)
            return
        loop = asyncio.get_running_loop()
        lines, errors = await loop.run_in_executor(
            self.executor, check_input, data, self.config.files.max_batch_requests
        )
        del data
        if errors:
            await self._db(self.store.fail, batch.id, self.replica, self.clock(), errors)
            log.info("batch %s failed validation (%d errors)", batch.id, len(errors))
            return
        rows = [(line.line, line.custom_id, secrets.token_hex(12)) for line in lines]
        await self._db(self.store.add_lines, batch.id, rows)
        bodies = {line.line: line.body for line in lines}
        del lines
        stored = await self._db(self.store.lines, batch.id)
        have = await self._db(self.store.existing_jobs, [s.job_id for s in stored if s.job_id])
        for line in stored:
            if line.error is not None or (line.job_id is not None and line.job_id in have):
                continue
            # a cancel (or the window's end) stops the validation between two lines
            current["batch"] = await self._db(self.store.get, batch.id)
            await self._check(current)
            await self._line(batch, line.line, line.job_id, bodies.pop(line.line))
        if await self._db(self.store.validated, batch.id, self.replica, self.clock()):
            log.info("batch %s in progress: %d requests", batch.id, len(stored))

    async def _check(self, current: dict) -> None:
        batch = current["batch"]
        if batch is None or batch.worker != self.replica:
            raise Lost()
        if batch.status != VALIDATING or batch.expired_at is not None:
            # cancelled or expired meanwhile: the lines not reached never run, the finalizer
            # writes what the others did (an expired batch goes on to in_progress for it)
            await self._db(self.store.validated, batch.id, self.replica, self.clock())
            raise Lost()

    async def _line(self, batch: BatchRecord, line: int, job_id: str | None, body: bytes) -> None:
        """Turn one line into a queued job, or record why the edit route would refuse it."""
        for attempt in range(BUSY_RETRIES + 1):
            reservation = self.budget.reservation()
            try:
                await self._submit(batch, line, job_id, body, reservation)
                return
            except Exception as exc:  # noqa: BLE001 - the line's error, for the error file
                err = to_api_error(exc)
                if err.status == 429 and err.retry and attempt < BUSY_RETRIES:
                    await asyncio.sleep(BUSY_PAUSE_S)  # busy: the line is fine, try later
                    continue
                if err.status >= 500:
                    # the store or the database: the batch is tried again; a line that fails
                    # so LINE_FAULTS times here is an error line (a fault of this line, or the
                    # batch would never finish)
                    key = (batch.id, line)
                    self._line_faults[key] = self._line_faults.get(key, 0) + 1
                    if self._line_faults[key] < LINE_FAULTS:
                        raise
                    self._line_faults.pop(key, None)
                error = {"status": err.status, "error": err.body()["error"]}
                await self._db(self.store.set_line, batch.id, line, error=error)
                return
            finally:
                reservation.release()

    async def _submit(
        self,
        batch: BatchRecord,
        line: int,
        job_id: str | None,
        body: bytes,
        reservation: Reservation,
    ) -> None:
        fields, uploads = await self.prepare_line(batch.owner, body, reservation)
        edit = parse_edit_fields(fields, self.config.limits.max_prompt_chars)
        if edit.stream:
            raise invalid(
                "Batch requests cannot stream: leave out 'stream'.", "stream", "invalid_value"
            )
        prepared = await self._db(self.edits.prepare, edit, uploads, reservation)
        model, rows = prepared.model.name, len(prepared.rows)
        steps = sum(planned_steps(row) for row in prepared.rows)
        del prepared
        files = [
            (u.field, u.data)
            for u in [*uploads.images, *(x for x in (uploads.mask, uploads.markup) if x)]
        ]
        job_id = job_id or new_job_id()
        await self._db(self.store.set_line, batch.id, line, job_id=job_id)
        stored = [Upload(field, upload_key(job_id, i)) for i, (field, _) in enumerate(files)]
        for item, (_, data) in zip(stored, files, strict=True):
            await self._db(self.objects.put_object, item.key, data, "application/octet-stream")
        values = {
            "id": job_id,
            "owner": batch.owner,
            "model": model,
            "rows": rows,
            # seed and model pinned, as for any job: a rerun gives the same image
            "request": JobRequest(
                {**edit_fields(pin_seed(dict(fields))), "model": model}, tuple(stored)
            ).to_json(),
            "fingerprint": fingerprint(fields, files),
            "idempotency_key": None,
            "base_url": batch.base_url,
            "webhook_url": None,
            "created_at": self.clock(),
            "steps_total": steps,
            "batch_id": batch.id,
        }
        await self._db(self.jobs.create, values)
        self.job_runner.wake()

    # ------------------------------------------------------------------ finalization
    async def _finalize(self, batch: BatchRecord, current: dict) -> None:
        reservation = self.budget.reservation()  # the files are built in memory: counted
        try:
            await self._write_files(batch, current, reservation)
        finally:
            reservation.release()

    async def _write_files(self, batch: BatchRecord, current: dict, reservation) -> None:
        output, errors, completed, failed = await self._db(self._build, batch, reservation)
        if current["batch"] is None:
            raise Lost()
        out_id = err_id = None
        if output:
            out_id = derived_file_id(f"{batch.id}/output")
            await self._db(
                self.files.put,
                batch.owner,
                f"{batch.id}_output.jsonl",
                OUTPUT_PURPOSE,
                output,
                file_id=out_id,
            )
        if errors:
            err_id = derived_file_id(f"{batch.id}/errors")
            await self._db(
                self.files.put,
                batch.owner,
                f"{batch.id}_error.jsonl",
                OUTPUT_PURPOSE,
                errors,
                file_id=err_id,
            )
        if batch.status == CANCELLING:
            status = CANCELLED
        elif batch.expired_at is not None:
            status = EXPIRED
        else:
            status = COMPLETED
        settled = await self._db(
            self.store.settle,
            batch.id,
            self.replica,
            self.clock(),
            status=status,
            output_file_id=out_id,
            error_file_id=err_id,
            completed=completed,
            failed=failed,
        )
        if settled:
            log.info("batch %s %s: %d completed, %d failed", batch.id, status, completed, failed)

    def _build(self, batch: BatchRecord, reservation: Reservation) -> tuple[bytes, bytes, int, int]:
        """Blocking: the output and error files' bytes and the counts, lines in input order.
        Each result read is reserved twice (the file being built, its final copy): over the
        memory budget this raises the 429 and the finalization is tried again later."""
        states = self.store.job_states(batch.id)
        unrun = "batch_cancelled" if batch.status == CANCELLING else "batch_expired"
        output, errors = bytearray(), bytearray()
        completed = failed = 0
        for line in self.store.lines(batch.id):
            if line.error is not None:
                doc = json.loads(line.error)
                errors += error_line(line.custom_id, line.request_id, doc["status"], doc["error"])
                failed += 1
                continue
            state = states.get(line.job_id) if line.job_id else None
            if state is None:  # never became a job: validation stopped before it
                errors += unrun_line(line.custom_id, line.request_id, unrun)
                continue
            if state["status"] == SUCCEEDED:
                result = self.objects.get_object(state["result_key"])
                if result is not None:
                    reservation.add(2 * len(result))
                    output += output_line(line.custom_id, line.request_id, result)
                    completed += 1
                    continue
                gone = APIError(
                    500,
                    "The result expired before the batch finished (--file-ttl); run the "
                    "request again.",
                    type="server_error",
                    code="result_expired",
                )
                errors += error_line(line.custom_id, line.request_id, 500, gone.body()["error"])
                failed += 1
            elif state["status"] == JOB_FAILED:
                error = json.loads(state["error"] or "{}")
                errors += error_line(line.custom_id, line.request_id, error_status(error), error)
                failed += 1
            else:  # cancelled (by the batch's cancel or its window)
                errors += unrun_line(line.custom_id, line.request_id, unrun)
        return bytes(output), bytes(errors), completed, failed
