"""``JobStore``: every statement jobs need, over one engine (``database.py``), PostgreSQL or
SQLite alike. Blocking: call it from a thread, never on the event loop.

The queue in four moves:

- ``create``: a queued row (after its uploads are in the object store);
- ``claim``: the oldest queued job of a model this replica serves, or a running one whose lease
  has expired (its replica died: a recovery), becomes ``running`` under this replica's lease.
  PostgreSQL picks it with ``FOR UPDATE SKIP LOCKED`` (replicas never wait for each other);
  SQLite's ``BEGIN IMMEDIATE`` makes the select-then-update one writer's;
- ``renew``: while it runs, the holder extends its lease and writes progress; the answer says
  whether it still holds the job and whether a cancel was asked for;
- ``finish`` / ``release``: the holder settles the job, or puts it back in the queue.

Every write by a holder names it (``worker``), so a replica that lost its lease (it stalled
past the expiry and another claimed the job) changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..database import is_sqlite
from .database import jobs
from .model import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED, JobRecord

#: a finished job's webhook is due: pending when it has a URL
_WEBHOOK_DUE = sa.case((jobs.c.webhook_url.is_not(None), "pending"), else_=None)


#: PostgreSQL advisory lock space (first key) of the per-owner queue-limit lock; the second
#: key is ``hashtext(owner)``
QUEUE_LOCK_SPACE = 0x1A7A


class QueueFull(Exception):
    """The owner already has ``queued`` queued jobs, the limit."""

    def __init__(self, queued: int) -> None:
        super().__init__(queued)
        self.queued = queued


class IdempotencyMismatch(Exception):
    """An Idempotency-Key reused with another request body; ``job`` is the first one's."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(job.id)
        self.job = job


@dataclass(frozen=True)
class Claim:
    job: JobRecord
    #: it was running under an expired lease (its replica died), or left running by a restart
    recovered: bool


class JobStore:
    def __init__(self, engine: sa.Engine, ttl_s: float) -> None:
        self.engine = engine
        #: a finished job (and its result) lives this long: the url files' TTL
        self.ttl_s = ttl_s
        self._lock_rows = not is_sqlite(engine)

    def _first(self, conn, query) -> JobRecord | None:
        row = conn.execute(query).mappings().first()
        return None if row is None else JobRecord.from_row(row)

    # ------------------------------------------------------------------ clients
    def create(self, values: dict, max_queued: int | None = None) -> tuple[JobRecord, bool]:
        """Insert a queued job (``values``: its columns; ``created_at`` is now). With an
        ``idempotency_key`` the same owner used for a job that has not expired: ``(that job,
        False)`` when the fingerprints match, else ``IdempotencyMismatch`` (an expired job's
        key is free again: a new job). With ``max_queued``: ``QueueFull`` when the owner has
        that many queued jobs, counted and inserted as one step (SQLite: ``BEGIN IMMEDIATE``;
        PostgreSQL: a transaction lock per owner), so concurrent submissions cannot pass the
        limit together. A new job: ``(it, True)``."""
        values = {
            **values,
            "status": QUEUED,
            "attempts": 0,
            "cancel_requested": False,
            "steps_done": 0,
            "webhook_attempts": 0,
        }
        owner, key, now = values["owner"], values.get("idempotency_key"), values["created_at"]
        try:
            with self.engine.begin() as conn:
                if key is not None:
                    existing = self._idempotent(conn, owner, key, now)
                    if existing is not None:
                        if existing.fingerprint != values["fingerprint"]:
                            raise IdempotencyMismatch(existing)
                        return existing, False
                if max_queued is not None:
                    if self._lock_rows:
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))"),
                            {"space": QUEUE_LOCK_SPACE, "owner": owner},
                        )
                    queued = self._count_queued(conn, owner)
                    if queued >= max_queued:
                        raise QueueFull(queued)
                conn.execute(jobs.insert().values(**values))
                return self._first(conn, jobs.select().where(jobs.c.id == values["id"])), True
        except sa.exc.IntegrityError:
            if key is None:
                raise
        # a concurrent twin (PostgreSQL) inserted the same key first: it is the job
        existing = self.find_idempotent(owner, key, now)
        if existing is None:  # the other job expired in between: a rare race, try once more
            return self.create(values, max_queued)
        if existing.fingerprint != values["fingerprint"]:
            raise IdempotencyMismatch(existing)
        return existing, False

    def _idempotent(self, conn, owner: str, key: str, now: float) -> JobRecord | None:
        """The owner's live job with ``key``; an expired one's key is released (its row stays
        until the sweep, without the key), so it can never be replayed."""
        conn.execute(
            jobs.update()
            .where(
                jobs.c.owner == owner,
                jobs.c.idempotency_key == key,
                jobs.c.expires_at.is_not(None),
                jobs.c.expires_at <= now,
            )
            .values(idempotency_key=None)
        )
        return self._first(
            conn, jobs.select().where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
        )

    def find_idempotent(self, owner: str, key: str, now: float) -> JobRecord | None:
        """The owner's job with ``key`` that has not expired, None otherwise."""
        with self.engine.begin() as conn:
            return self._idempotent(conn, owner, key, now)

    def get(self, job_id: str, owner: str | None, now: float) -> JobRecord | None:
        """The job if it exists, has not expired and belongs to ``owner`` (None: anyone's)."""
        q = jobs.select().where(
            jobs.c.id == job_id, sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > now)
        )
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.begin() as conn:
            return self._first(conn, q)

    def count_queued(self, owner: str | None = None) -> int:
        with self.engine.begin() as conn:
            return self._count_queued(conn, owner)

    def _count_queued(self, conn, owner: str | None) -> int:
        """Queued jobs: all of them (``owner`` None: the gauge), or ``owner``'s async jobs for
        ``--max-queued-jobs`` (batch lines have their own bound, ``--max-batch-requests``, so
        a big batch does not shut its key out of interactive jobs)."""
        q = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == QUEUED)
        if owner is not None:
            q = q.where(jobs.c.owner == owner, jobs.c.batch_id.is_(None))
        return int(conn.execute(q).scalar_one())

    def cancel(self, job_id: str, owner: str | None, now: float) -> JobRecord | None:
        """A queued job is cancelled at once; a running one gets ``cancel_requested`` (its
        holder stops it at the next step); a finished one is left as it is. Returns the job
        after the change, None if it does not exist for ``owner``."""
        with self.engine.begin() as conn:
            q = jobs.select().where(jobs.c.id == job_id)
            if owner is not None:
                q = q.where(jobs.c.owner == owner)
            job = self._first(conn, q.with_for_update() if self._lock_rows else q)
            if job is None or (job.expires_at is not None and job.expires_at <= now):
                return None
            if job.status == QUEUED:
                conn.execute(self._settle(job.id, CANCELLED, now))
            elif job.status == RUNNING:
                conn.execute(jobs.update().where(jobs.c.id == job.id).values(cancel_requested=True))
            return self._first(conn, jobs.select().where(jobs.c.id == job.id))

    # ------------------------------------------------------------------ the runner
    def claim(self, worker: str, models: list[str], now: float, lease_s: float) -> Claim | None:
        """Take the oldest claimable job of ``models`` under a lease until ``now + lease_s``,
        interactive jobs before batch lines (``batch_id`` set).
        An expired running job whose cancel was asked for is settled as cancelled instead."""
        if not models:
            return None
        claimable = sa.or_(
            jobs.c.status == QUEUED,
            sa.and_(jobs.c.status == RUNNING, jobs.c.lease_until < now),
        )
        q = (
            jobs.select()
            .where(jobs.c.model.in_(models), claimable)
            # interactive jobs before batch lines (false sorts before true in both dialects)
            .order_by(jobs.c.batch_id.is_not(None), jobs.c.created_at, jobs.c.id)
            .limit(1)
        )
        if self._lock_rows:
            q = q.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            while True:
                job = self._first(conn, q)
                if job is None:
                    return None
                if job.status == RUNNING and job.cancel_requested:
                    conn.execute(self._settle(job.id, CANCELLED, now))
                    continue
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id)
                    .values(
                        status=RUNNING,
                        worker=worker,
                        lease_until=now + lease_s,
                        attempts=jobs.c.attempts + 1,
                        started_at=sa.func.coalesce(jobs.c.started_at, now),
                        steps_done=0,
                    )
                )
                claimed = self._first(conn, jobs.select().where(jobs.c.id == job.id))
                return Claim(claimed, recovered=job.status == RUNNING)

    def renew(
        self, job_id: str, worker: str, now: float, lease_s: float, done: int, total: int
    ) -> tuple[bool, bool]:
        """Extend the lease and record progress: ``(still held, cancel requested)``."""
        with self.engine.begin() as conn:
            row = conn.execute(
                self._held(job_id, worker)
                .values(lease_until=now + lease_s, steps_done=done, steps_total=total)
                .returning(jobs.c.cancel_requested)
            ).first()
        return (False, False) if row is None else (True, bool(row[0]))

    def finish(
        self,
        job_id: str,
        worker: str,
        status: str,
        now: float,
        *,
        result_key: str | None = None,
        result_bytes: int | None = None,
        error: dict | None = None,
        steps: tuple[int, int] | None = None,
    ) -> str | None:
        """Settle a held job as succeeded, failed or cancelled: the status it got, None if it
        is not held. A success whose cancel was asked for first (any replica's ``cancel``,
        which commits before this) settles as cancelled, without its result: an accepted
        cancel always wins, so a client never sees its cancel accepted and the job succeed."""
        assert status in FINISHED, status
        extra: dict = {
            "result_key": result_key,
            "result_bytes": result_bytes,
            "error": None if error is None else json.dumps(error),
        }
        if status == SUCCEEDED:
            cancelled = jobs.c.cancel_requested.is_(True)
            extra.update(
                status=sa.case((cancelled, CANCELLED), else_=SUCCEEDED),
                result_key=sa.cast(sa.case((cancelled, None), else_=result_key), sa.String),
                result_bytes=sa.cast(sa.case((cancelled, None), else_=result_bytes), sa.BigInteger),
            )
        if steps is not None:
            extra.update(steps_done=steps[0], steps_total=steps[1])
        with self.engine.begin() as conn:
            row = conn.execute(
                self._settle(job_id, status, now, worker=worker)
                .values(**extra)
                .returning(jobs.c.status)
            ).first()
            return None if row is None else row[0]

    def evict_results(self, owner: str, max_bytes: int, now: float) -> list[JobRecord]:
        """Keep the owner's stored results within ``max_bytes``: the oldest succeeded jobs
        beyond it expire now (their rows and results go with the next sweep; the caller may
        delete the results at once). The newest result is always kept, even alone over the
        cap. Batch lines (``batch_id`` set) are neither counted nor evicted: their batch
        collects them into its output file. Returns the evicted jobs."""
        q = (
            jobs.select()
            .where(
                jobs.c.owner == owner,
                jobs.c.status == SUCCEEDED,
                jobs.c.result_bytes.is_not(None),
                jobs.c.expires_at > now,
                # a batch's lines wait for its output file to collect them: never evicted
                jobs.c.batch_id.is_(None),
            )
            .order_by(jobs.c.finished_at.desc(), jobs.c.id.desc())
        )
        with self.engine.begin() as conn:
            kept, evicted = 0, []
            for row in conn.execute(q).mappings():
                job = JobRecord.from_row(row)
                if kept and kept + job.result_bytes > max_bytes:
                    evicted.append(job)
                else:
                    kept += job.result_bytes
            if evicted:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id.in_([job.id for job in evicted]))
                    .values(expires_at=now, idempotency_key=None)
                )
            return evicted

    def release(self, job_id: str, worker: str) -> bool:
        """Put a held job back in the queue (this replica stops, or has no room after all);
        False if it is not held."""
        with self.engine.begin() as conn:
            done = conn.execute(
                self._held(job_id, worker).values(
                    status=QUEUED, worker=None, lease_until=None, steps_done=0
                )
            )
            return done.rowcount == 1

    def requeue_running(self) -> int:
        """Queue again every running job (a single replica's restart: whatever ran when the
        process died); returns how many."""
        with self.engine.begin() as conn:
            done = conn.execute(
                jobs.update()
                .where(jobs.c.status == RUNNING)
                .values(status=QUEUED, worker=None, lease_until=None, steps_done=0)
            )
            return done.rowcount

    def _held(self, job_id: str, worker: str):
        return jobs.update().where(
            jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == RUNNING
        )

    def _settle(self, job_id: str, status: str, now: float, worker: str | None = None):
        """The update that finishes a job: its expiry starts, its webhook becomes due."""
        q = self._held(job_id, worker) if worker else jobs.update().where(jobs.c.id == job_id)
        return q.values(
            status=status,
            finished_at=now,
            expires_at=now + self.ttl_s,
            worker=None,
            lease_until=None,
            webhook_state=_WEBHOOK_DUE,
            webhook_next_at=now,
        )

    # ------------------------------------------------------------------ webhooks
    def claim_webhook(
        self, now: float, hold_s: float, skip_owners: Sequence[str] = ()
    ) -> JobRecord | None:
        """A finished job whose webhook is due; it is not due again for ``hold_s`` (the time
        one delivery may take), so no other replica sends it meanwhile. ``skip_owners``: keys
        whose deliveries are at their limit on this replica (their webhooks wait)."""
        q = (
            jobs.select()
            .where(jobs.c.webhook_state == "pending", jobs.c.webhook_next_at <= now)
            .order_by(jobs.c.webhook_next_at)
            .limit(1)
        )
        if skip_owners:
            q = q.where(jobs.c.owner.not_in(list(skip_owners)))
        if self._lock_rows:
            q = q.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            job = self._first(conn, q)
            if job is not None:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id)
                    .values(
                        webhook_next_at=now + hold_s,
                        webhook_attempts=jobs.c.webhook_attempts + 1,
                    )
                )
                job = self._first(conn, jobs.select().where(jobs.c.id == job.id))
            return job

    def webhook_done(self, job_id: str, state: str, next_at: float | None = None) -> None:
        """Record an attempt's outcome: ``delivered``, ``failed`` (gave up), or ``pending``
        again at ``next_at``."""
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(webhook_state=state, webhook_next_at=next_at)
            )

    # ------------------------------------------------------------------ upkeep
    def fail_stale(self, now: float, error: dict) -> int:
        """Fail the jobs queued for longer than the TTL (their uploads have expired: e.g. no
        replica serves their model any more); returns how many."""
        with self.engine.begin() as conn:
            stale = conn.execute(
                jobs.select().where(jobs.c.status == QUEUED, jobs.c.created_at < now - self.ttl_s)
            ).mappings()
            ids = [row["id"] for row in stale]
            for job_id in ids:
                conn.execute(self._settle(job_id, FAILED, now).values(error=json.dumps(error)))
            return len(ids)

    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        q = jobs.select().where(jobs.c.expires_at <= now).limit(limit)
        with self.engine.begin() as conn:
            return [JobRecord.from_row(r) for r in conn.execute(q).mappings()]

    def delete(self, job_ids: list[str]) -> None:
        if job_ids:
            with self.engine.begin() as conn:
                conn.execute(jobs.delete().where(jobs.c.id.in_(job_ids)))

    def close(self) -> None:
        self.engine.dispose()
