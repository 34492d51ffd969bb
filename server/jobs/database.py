"""The job database's tables: jobs, uploaded files, batches and their lines (created if
missing, and upgraded, by ``make_jobs_engine``). The engine itself (PostgreSQL or SQLite, and
why SQLAlchemy Core) is ``server/database.py``'s.

Times are float seconds since the epoch from the server's clock (``time.time``), passed in by
the caller (tests pass a fake clock). Replicas sharing PostgreSQL compare each other's lease
times, so their clocks must agree to well under ``--lease-seconds`` (NTP does).
"""

from __future__ import annotations

import sqlalchemy as sa

from ..database import make_engine

metadata = sa.MetaData()

#: OpenAI's timestamps of a batch (``<event>_at``), in the order a batch meets them
BATCH_EVENTS = (
    "created",
    "in_progress",
    "expires",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)

#: one row per job; the request's uploads and the result live in the object store, not here
jobs = sa.Table(
    "inpaint_jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    #: the API key's id (``KeyStore.key_id``); "" when the server runs without auth
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    #: JSON: the form fields (seed pinned) and the object keys of the uploads
    sa.Column("request", sa.Text, nullable=False),
    #: sha256 of the request as submitted (fields and uploads), for Idempotency-Key
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("base_url", sa.Text, nullable=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    #: the job (and its result) is gone after this; NULL while it is queued or running
    sa.Column("expires_at", sa.Float),
    #: the replica holding the lease, and until when
    sa.Column("worker", sa.String(64)),
    sa.Column("lease_until", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("steps_done", sa.Integer, nullable=False, default=0),
    sa.Column("steps_total", sa.Integer, nullable=False, default=0),
    sa.Column("result_key", sa.String(200)),
    #: the stored result's size, for the per-key cap (``--max-stored-results-mb``)
    sa.Column("result_bytes", sa.BigInteger),
    #: JSON: the OpenAI error object (message, type, param, code) of a failed job
    sa.Column("error", sa.Text),
    #: pending / delivered / failed; NULL when the job has no webhook or has not finished
    sa.Column("webhook_state", sa.String(16)),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("webhook_next_at", sa.Float),
    #: the batch (``server/batches``) this job is a line of; NULL for an interactive job.
    #: Claims take interactive jobs first (``store.claim``)
    sa.Column("batch_id", sa.String(40)),
    sa.UniqueConstraint("owner", "idempotency_key", name="inpaint_jobs_idempotency"),
    sa.Index("inpaint_jobs_claim", "status", "model", "created_at"),
    sa.Index("inpaint_jobs_webhooks", "webhook_state", "webhook_next_at"),
    sa.Index("inpaint_jobs_expiry", "expires_at"),
    sa.Index("inpaint_jobs_batch", "batch_id", "status"),
)

#: uploaded files (``server/files``); the bytes live in the object store under ``object_key``
files = sa.Table(
    "inpaint_files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("object_key", sa.String(200), nullable=False),
    sa.Index("inpaint_files_owner", "owner", "created_at"),
    sa.Index("inpaint_files_expiry", "expires_at"),
)

#: batches (``server/batches``): the state machine; the lines are in ``batch_requests``
batches = sa.Table(
    "inpaint_batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("base_url", sa.Text, nullable=False),
    #: JSON: the client's metadata, and OpenAI's ``errors`` list of a failed validation
    sa.Column("metadata", sa.Text),
    sa.Column("errors", sa.Text),
    sa.Column("output_file_id", sa.String(64)),
    sa.Column("error_file_id", sa.String(64)),
    #: request counts: lines in the input file; completed and failed once finalized (live
    #: counts come from the jobs until then)
    sa.Column("total", sa.Integer, nullable=False, default=0),
    sa.Column("completed", sa.Integer),
    sa.Column("failed", sa.Integer),
    #: the replica validating or finalizing it, until when (NULL: nobody)
    sa.Column("worker", sa.String(64)),
    sa.Column("lease_until", sa.Float),
    *(sa.Column(f"{event}_at", sa.Float) for event in BATCH_EVENTS),
    sa.Index("inpaint_batches_owner", "owner", "created_at"),
    sa.Index("inpaint_batches_status", "status"),
)

#: one row per line of a batch's input file, in order; ``job_id`` names its job, or ``error``
#: (JSON ``{"status": int, "error": {...}}``) says why the line never became one
batch_requests = sa.Table(
    "inpaint_batch_requests",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("custom_id", sa.Text, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(40)),
    sa.Column("error", sa.Text),
)


def make_jobs_engine(url: str) -> sa.Engine:
    """An engine over the job database at ``url`` (``server.database.engine_url``), with these
    tables created and upgraded."""
    return make_engine(url, metadata, _add_missing_columns)


def _add_missing_columns(conn) -> None:
    """Columns added to a table after its first release (``create_all`` makes only missing
    tables): ``inpaint_jobs.batch_id``, ``inpaint_jobs.result_bytes``."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(jobs.name)}
    if "batch_id" not in have:
        conn.execute(sa.text(f"ALTER TABLE {jobs.name} ADD COLUMN batch_id VARCHAR(40)"))
        conn.execute(sa.text(f"CREATE INDEX inpaint_jobs_batch ON {jobs.name} (batch_id, status)"))
    if "result_bytes" not in have:
        conn.execute(sa.text(f"ALTER TABLE {jobs.name} ADD COLUMN result_bytes BIGINT"))
