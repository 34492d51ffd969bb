"""``BatchStore``: every statement batches need, over the jobs' engine (``jobs/database.py``),
PostgreSQL or SQLite alike. Blocking: call it from a thread, never on the event loop.

Who does what is settled by conditional updates, so that any replica may validate or finalize
a batch and two never do it at once: ``claim`` takes a batch's lease (``worker``,
``lease_until``) only when nobody holds it or the holder's lease expired (its replica died);
every later write names the holder. A batch's lines run as jobs (``jobs.batch_id``); their
state is the jobs' own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from ..jobs.database import batch_requests, batches, jobs
from ..jobs.model import CANCELLED as JOB_CANCELLED
from ..jobs.model import QUEUED, RUNNING, SUCCEEDED
from .model import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    TERMINAL,
    VALIDATING,
    BatchRecord,
)


@dataclass(frozen=True)
class Line:
    """One row of ``database.batch_requests``: a line of the input file."""

    line: int
    custom_id: str
    request_id: str
    job_id: str | None
    #: JSON ``{"status": int, "error": {...}}`` for a line that never became a job
    error: str | None


class BatchStore:
    def __init__(self, engine: sa.Engine, job_ttl_s: float) -> None:
        self.engine = engine
        #: a settled job lives this long (the jobs' rule), cancelled lines too
        self.job_ttl_s = job_ttl_s

    def _one(self, conn, batch_id: str) -> BatchRecord | None:
        row = conn.execute(batches.select().where(batches.c.id == batch_id)).mappings().first()
        return None if row is None else BatchRecord.from_row(row)

    # ------------------------------------------------------------------ clients
    def create(self, values: dict) -> BatchRecord:
        with self.engine.begin() as conn:
            conn.execute(batches.insert().values(**values))
            return self._one(conn, values["id"])

    def get(self, batch_id: str, owner: str | None = None) -> BatchRecord | None:
        with self.engine.begin() as conn:
            batch = self._one(conn, batch_id)
        if batch is None or (owner is not None and batch.owner != owner):
            return None
        return batch

    def page(self, owner: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Newest first, after the batch ``after``: ``(page, has_more)``."""
        q = batches.select().where(batches.c.owner == owner)
        if after is not None:
            with self.engine.begin() as conn:
                anchor = conn.execute(
                    sa.select(batches.c.created_at).where(
                        batches.c.id == after, batches.c.owner == owner
                    )
                ).first()
            if anchor is not None:
                at = anchor[0]
                q = q.where(
                    sa.or_(
                        batches.c.created_at < at,
                        sa.and_(batches.c.created_at == at, batches.c.id < after),
                    )
                )
        q = q.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit + 1)
        with self.engine.begin() as conn:
            rows = [BatchRecord.from_row(r) for r in conn.execute(q).mappings()]
        return rows[:limit], len(rows) > limit

    def counts(self, batch: BatchRecord) -> dict[str, int]:
        """OpenAI's ``request_counts``: the stored ones once finalized, else live: lines,
        succeeded jobs, and failed lines (refused at validation or failed as jobs)."""
        if batch.completed is not None:
            return {"total": batch.total, "completed": batch.completed, "failed": batch.failed}
        with self.engine.begin() as conn:
            refused = conn.execute(
                sa.select(sa.func.count())
                .select_from(batch_requests)
                .where(batch_requests.c.batch_id == batch.id, batch_requests.c.error.is_not(None))
            ).scalar_one()
            by_status = dict(
                conn.execute(
                    sa.select(jobs.c.status, sa.func.count())
                    .where(jobs.c.batch_id == batch.id)
                    .group_by(jobs.c.status)
                ).all()
            )
        return {
            "total": batch.total,
            "completed": by_status.get(SUCCEEDED, 0),
            "failed": refused + by_status.get("failed", 0),
        }

    def cancel(self, batch_id: str, owner: str, now: float) -> BatchRecord | None:
        """``validating``/``in_progress`` -> ``cancelling``, and its lines stop (``stop_jobs``).
        Returns the batch after the change; None when it does not exist for ``owner``."""
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update()
                .where(
                    batches.c.id == batch_id,
                    batches.c.owner == owner,
                    batches.c.status.in_((VALIDATING, IN_PROGRESS)),
                )
                .values(status=CANCELLING, cancelling_at=now)
            )
            if done.rowcount == 1:
                self._stop_jobs(conn, batch_id, now)
            batch = self._one(conn, batch_id)
        return None if batch is None or batch.owner != owner else batch

    def _stop_jobs(self, conn, batch_id: str, now: float) -> None:
        """Queued lines are cancelled at once; running ones get ``cancel_requested`` (their
        runner stops them at the next step, on whichever replica)."""
        conn.execute(
            jobs.update()
            .where(jobs.c.batch_id == batch_id, jobs.c.status == QUEUED)
            .values(
                status=JOB_CANCELLED,
                finished_at=now,
                expires_at=now + self.job_ttl_s,
                worker=None,
                lease_until=None,
            )
        )
        conn.execute(
            jobs.update()
            .where(jobs.c.batch_id == batch_id, jobs.c.status == RUNNING)
            .values(cancel_requested=True)
        )

    # ------------------------------------------------------------------ the batch runner
    def active(self) -> list[BatchRecord]:
        """Every batch not yet terminal (any owner): the runner's work list."""
        q = batches.select().where(batches.c.status.not_in(TERMINAL)).order_by(batches.c.created_at)
        with self.engine.begin() as conn:
            return [BatchRecord.from_row(r) for r in conn.execute(q).mappings()]

    def claim(
        self, batch_id: str, expected: str, worker: str, now: float, lease_s: float, values: dict
    ) -> BatchRecord | None:
        """Take the batch's lease if its status is still ``expected`` and nobody holds it (or
        the holder's lease expired), setting ``values`` too; the batch, or None if not taken."""
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update()
                .where(
                    batches.c.id == batch_id,
                    batches.c.status == expected,
                    sa.or_(batches.c.lease_until.is_(None), batches.c.lease_until < now),
                )
                .values(worker=worker, lease_until=now + lease_s, **values)
            )
            return self._one(conn, batch_id) if done.rowcount == 1 else None

    def renew(self, batch_id: str, worker: str, now: float, lease_s: float) -> BatchRecord | None:
        """Extend a held lease; the batch (its status may have become ``cancelling``), or
        None when this replica no longer holds it."""
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.worker == worker)
                .values(lease_until=now + lease_s)
            )
            return self._one(conn, batch_id) if done.rowcount == 1 else None

    def release_all(self) -> int:
        """Give back every lease (a single replica's restart: what the dead process held)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update()
                .where(batches.c.worker.is_not(None))
                .values(worker=None, lease_until=None)
            )
            return done.rowcount

    def release(self, batch_id: str, worker: str, **values) -> bool:
        """Give the lease back, setting ``values`` (a status change); False if not held."""
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.worker == worker)
                .values(worker=None, lease_until=None, **values)
            )
            return done.rowcount == 1

    @staticmethod
    def _end_validation(conn, batch_id: str, worker: str, **values):
        """Set ``values`` on a batch that ``worker`` holds and that is still ``validating``,
        giving the lease back; the statement's result (rowcount 0: cancelled meanwhile, or
        no longer held)."""
        return conn.execute(
            batches.update()
            .where(
                batches.c.id == batch_id,
                batches.c.worker == worker,
                batches.c.status == VALIDATING,
            )
            .values(worker=None, lease_until=None, **values)
        )

    def validated(self, batch_id: str, worker: str, now: float) -> bool:
        """``validating`` -> ``in_progress`` (lease given back). A batch cancelled meanwhile
        stays ``cancelling`` (lease given back too, for the finalizer; lines queued after the
        cancel stop as well). Whether it started."""
        with self.engine.begin() as conn:
            done = self._end_validation(
                conn, batch_id, worker, status=IN_PROGRESS, in_progress_at=now
            )
            batch = self._one(conn, batch_id) if done.rowcount == 0 else None
            if batch is not None and (batch.status == CANCELLING or batch.expired_at):
                self._stop_jobs(conn, batch_id, now)  # a line queued after the cancel stops too
        if done.rowcount == 1:
            return True
        self.release(batch_id, worker)
        return False

    def fail(self, batch_id: str, worker: str, now: float, errors: list[dict]) -> bool:
        """A validation failure: ``failed`` with OpenAI's ``errors`` list."""
        doc = json.dumps({"object": "list", "data": errors})
        with self.engine.begin() as conn:
            done = self._end_validation(
                conn,
                batch_id,
                worker,
                status=FAILED,
                failed_at=now,
                errors=doc,
                completed=0,
                failed=0,
            )
        if done.rowcount == 1:
            return True
        self.release(batch_id, worker)  # cancelled meanwhile: the finalizer settles it
        return False

    def expire(self, batch_id: str, now: float) -> bool:
        """The completion window closed: record it (``expired_at``) and stop the lines; the
        finalizer then writes what finished and settles the batch as ``expired``."""
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update()
                .where(
                    batches.c.id == batch_id,
                    batches.c.status.in_((VALIDATING, IN_PROGRESS)),
                    batches.c.expired_at.is_(None),
                )
                .values(expired_at=now)
            )
            if done.rowcount == 1:
                self._stop_jobs(conn, batch_id, now)
            return done.rowcount == 1

    # ------------------------------------------------------------------ lines
    def add_lines(self, batch_id: str, lines: list[tuple[int, str, str]]) -> None:
        """The input file's lines ``(line, custom_id, request_id)``, once (a validation
        started again after a crash finds them there)."""
        with self.engine.begin() as conn:
            have = conn.execute(
                sa.select(sa.func.count())
                .select_from(batch_requests)
                .where(batch_requests.c.batch_id == batch_id)
            ).scalar_one()
            if have == 0 and lines:
                conn.execute(
                    batch_requests.insert(),
                    [
                        {"batch_id": batch_id, "line": n, "custom_id": c, "request_id": r}
                        for n, c, r in lines
                    ],
                )
            conn.execute(batches.update().where(batches.c.id == batch_id).values(total=len(lines)))

    def lines(self, batch_id: str) -> list[Line]:
        q = (
            sa.select(
                batch_requests.c.line,
                batch_requests.c.custom_id,
                batch_requests.c.request_id,
                batch_requests.c.job_id,
                batch_requests.c.error,
            )
            .where(batch_requests.c.batch_id == batch_id)
            .order_by(batch_requests.c.line)
        )
        with self.engine.begin() as conn:
            return [Line(*row) for row in conn.execute(q).all()]

    def set_line(self, batch_id: str, line: int, *, job_id=None, error=None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                batch_requests.update()
                .where(batch_requests.c.batch_id == batch_id, batch_requests.c.line == line)
                .values(job_id=job_id, error=None if error is None else json.dumps(error))
            )

    def existing_jobs(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        with self.engine.begin() as conn:
            return {r[0] for r in conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(job_ids)))}

    def unsettled(self, batch_id: str) -> int:
        """The batch's lines still queued or running."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(jobs.c.batch_id == batch_id, jobs.c.status.in_((QUEUED, RUNNING)))
            ).scalar_one()

    def job_states(self, batch_id: str) -> dict[str, dict]:
        """``{job id: {status, result_key, error}}`` of the batch's lines."""
        q = sa.select(jobs.c.id, jobs.c.status, jobs.c.result_key, jobs.c.error).where(
            jobs.c.batch_id == batch_id
        )
        with self.engine.begin() as conn:
            return {
                r.id: {"status": r.status, "result_key": r.result_key, "error": r.error}
                for r in conn.execute(q)
            }

    def settle(self, batch_id: str, worker: str, now: float, **values) -> bool:
        """The finalizer's last write: ``completed``/``cancelled``/``expired`` with the files
        and the counts; False when this replica no longer holds the batch."""
        status = values["status"]
        assert status in (COMPLETED, CANCELLED, EXPIRED), status
        stamp = {} if status == EXPIRED else {f"{status}_at": now}  # expired_at is set
        return self.release(batch_id, worker, **stamp, **values)

    # ------------------------------------------------------------------ upkeep
    def delete_old(self, before: float) -> int:
        """Delete terminal batches created before ``before`` (and their lines)."""
        q = sa.select(batches.c.id).where(
            batches.c.status.in_(TERMINAL), batches.c.created_at < before
        )
        with self.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(q.limit(500))]
            if ids:
                conn.execute(batch_requests.delete().where(batch_requests.c.batch_id.in_(ids)))
                conn.execute(batches.delete().where(batches.c.id.in_(ids)))
        return len(ids)


__all__ = ["BatchStore", "Line", "FINALIZING", "IN_PROGRESS", "VALIDATING", "CANCELLING"]
