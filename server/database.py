"""The SQL engine shared by the job database (``jobs/database.py``: jobs, files, batches) and the
shared rate-limit window (``ratelimit.py``): one SQLAlchemy Core engine over PostgreSQL
(psycopg 3) or SQLite, with its owner's tables created if missing.

It sits below both users and imports nothing of ours: each user declares its own tables (its
own ``sa.MetaData``) and passes them to ``make_engine``, which creates them under one lock.

Why SQLAlchemy Core and our own SQL rather than a queue library: the library had to run on
PostgreSQL and SQLite, hold leases that are renewed and reclaimed after expiry, and let the
server claim a job only when its own batcher has room, without a broker. procrastinate,
PgQueuer and SAQ (its SQL queue) are PostgreSQL only; Huey and Dramatiq take a task off the
queue when a worker starts it (a worker that dies loses it: no lease), and they run tasks in
their own consumers, which cannot wait for our batcher's room. The queue is a handful of
statements (``jobs/store.py``); SQLAlchemy gives one dialect-neutral way to write them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

#: the SQLite file's name in the default folder when no ``--database-url`` is given
SQLITE_FILE = "jobs.sqlite3"
#: seconds a SQLite writer waits for another one before "database is locked"
SQLITE_BUSY_S = 30.0
#: the PostgreSQL advisory lock taken while tables are created
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


def make_engine(
    url: str,
    metadata: sa.MetaData,
    upgrade: Callable[[sa.Connection], None] | None = None,
) -> sa.Engine:
    """An engine with ``metadata``'s tables created, then ``upgrade(conn)`` run (columns added
    after a table's first release: ``create_all`` makes only missing tables), in one
    transaction. SQLite: WAL journal (readers never wait for the writer), a busy timeout, and
    every transaction ``BEGIN IMMEDIATE`` so that a claim's select-then-update is atomic.
    PostgreSQL: connections checked before use."""
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
        if upgrade is not None:
            upgrade(conn)
    return engine
