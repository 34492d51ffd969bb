"""The database behind jobs and the shared rate-limit window: one SQLAlchemy Core engine over
PostgreSQL (psycopg 3) or SQLite, and the tables (created if missing).

Why SQLAlchemy Core and our own SQL rather than a queue library: the library had to run on
PostgreSQL and SQLite, hold leases that are renewed and reclaimed after expiry, and let the
server claim a job only when its own batcher has room, without a broker. procrastinate,
PgQueuer and SAQ (its SQL queue) are PostgreSQL only; Huey and Dramatiq take a task off the
queue when a worker starts it (a worker that dies loses it: no lease), and they run tasks in
their own consumers, which cannot wait for our batcher's room. The queue is a handful of
statements (``store.py``); SQLAlchemy gives one dialect-neutral way to write them.

Times are float seconds since the epoch from the server's clock (``time.time``), passed in by
the caller (tests pass a fake clock). Replicas sharing PostgreSQL compare each other's lease
times, so their clocks must agree to well under ``--lease-seconds`` (NTP does).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

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

#: requests per API key per fixed minute (the shared rate limiter's window, ``ratelimit.py``)
rate_windows = sa.Table(
    "inpaint_rate_windows",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("window", sa.BigInteger, primary_key=True),
    sa.Column("hits", sa.Integer, nullable=False),
)

SQLITE_FILE = "jobs.sqlite3"
#: seconds a SQLite writer waits for another one before "database is locked"
SQLITE_BUSY_S = 30.0
#: the PostgreSQL advisory lock taken while the tables are created
SCHEMA_LOCK = 0x1A7A1A7


def engine_url(database_url: str | None, default_dir: Path) -> str:
    """The SQLAlchemy URL for ``--database-url`` (``postgresql://`` -> psycopg 3); without one,
    a SQLite file in ``default_dir``. ValueError names the setting for anything else."""
    if database_url is None:
        return f"sqlite:///{Path(default_dir) / SQLITE_FILE}"
    scheme, sep, rest = database_url.partition("://")
    if not sep:
        raise ValueError(
            f"--database-url {database_url[:40]!r}: expected postgresql://user@host/db "
            "or sqlite:///path"
        )
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        return database_url
    raise ValueError(
        f"--database-url with scheme {scheme!r}: use postgresql://user@host/db (several "
        "replicas) or sqlite:////absolute/path/jobs.sqlite3 (one replica)"
    )


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> sa.Engine:
    """An engine with the tables created. SQLite: WAL journal (readers never wait for the
    writer), a busy timeout, and every transaction ``BEGIN IMMEDIATE`` so that a claim's
    select-then-update is atomic. PostgreSQL: connections checked before use."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_S}
        )

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    with engine.begin() as conn:
        if not is_sqlite(engine):  # replicas starting together: one creates, the others wait
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        metadata.create_all(conn)
        _add_missing_columns(conn)
    return engine


def _add_missing_columns(conn) -> None:
    """Columns added to a table after its first release (``create_all`` makes only missing
    tables): ``inpaint_jobs.batch_id``, ``inpaint_jobs.result_bytes``."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(jobs.name)}
    if "batch_id" not in have:
        conn.execute(sa.text(f"ALTER TABLE {jobs.name} ADD COLUMN batch_id VARCHAR(40)"))
        conn.execute(sa.text(f"CREATE INDEX inpaint_jobs_batch ON {jobs.name} (batch_id, status)"))
    if "result_bytes" not in have:
        conn.execute(sa.text(f"ALTER TABLE {jobs.name} ADD COLUMN result_bytes BIGINT"))
