"""A real PostgreSQL on loopback: the machine's own (127.0.0.1:5432, trust auth, database
``test``) when it answers, else a throwaway one started here with Debian's binaries (``initdb``
in a temporary folder, ``pg_ctl`` on a free loopback port; as the ``postgres`` user when run as
root, which PostgreSQL refuses to run as).

Used by the test fixture ``postgres`` (tests/postgres.py) and by the local cluster
(``benchmarks/cluster.py``, ``make cluster``): ``LOCAL if answers(LOCAL) else throwaway()``
gives a database URL; ``Postgres(url).schema_url()`` makes a fresh, uniquely named schema and
returns a ``postgresql://`` URL whose connections use it (``options=-csearch_path=<schema>``), so
parallel runs never share tables; ``drop_schemas()`` removes them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOCAL = "postgresql://127.0.0.1:5432/test"
START_S = 60
INSTALL_HINT = "PostgreSQL is needed: apt-get install postgresql (initdb, pg_ctl)"


def answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@dataclass
class Postgres:
    #: a database URL without a schema: where the schemas are made
    url: str
    schemas: list[str] = field(default_factory=list)

    def schema_url(self) -> str:
        import psycopg

        name = f"inpaint_test_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        self.schemas.append(name)
        return f"{self.url}?options=-csearch_path%3D{name}"

    def drop_schemas(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initdb_binary() -> str | None:
    """Debian's ``initdb`` (on PATH or under /usr/lib/postgresql/*/bin), None without it."""
    found = shutil.which("initdb") or next(
        iter(Path("/usr/lib/postgresql").glob("*/bin/initdb")), None
    )
    return None if found is None else str(found)


@contextlib.contextmanager
def throwaway() -> Iterator[str]:
    """A PostgreSQL started in a temporary folder; yields the URL of its ``test`` database.
    RuntimeError (``INSTALL_HINT``) without PostgreSQL's binaries."""
    initdb = initdb_binary()
    if initdb is None:
        raise RuntimeError(INSTALL_HINT)
    bindir = Path(initdb).resolve().parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="inpaint-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()
    run = {"check": True, "capture_output": True, "timeout": START_S}
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], **run
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-o", options, "-l", str(folder / "log"), "-w", "start"], **run)
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "test",
            ],
            **run,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/test"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=START_S)
        shutil.rmtree(folder, ignore_errors=True)
