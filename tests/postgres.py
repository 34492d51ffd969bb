"""A real PostgreSQL for tests: the machine's own (127.0.0.1:5432, trust auth, database
``test``) when it answers, else a throwaway one started with Debian's binaries. How it is found,
started and stopped lives in ``benchmarks/postgres.py`` (the local cluster uses it too).

``postgres`` (session fixture; a test module imports it to use it) returns a ``Postgres``:
``schema_url()`` makes a fresh, uniquely named schema and returns a ``postgresql://`` URL whose
connections use it (``options=-csearch_path=<schema>``), so parallel test runs and tests never
share tables. The schemas are dropped, and a throwaway server stopped, at the end of the run.
Never skipped: without PostgreSQL binaries the fixture fails with what to install.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from benchmarks.postgres import INSTALL_HINT, LOCAL, Postgres, answers, initdb_binary, throwaway

__all__ = ["Postgres", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with contextlib.ExitStack() as stack:
        if answers(LOCAL):
            url = LOCAL
        else:
            if initdb_binary() is None:
                pytest.fail(INSTALL_HINT)
            url = stack.enter_context(throwaway())
        pg = Postgres(url)
        yield pg
        pg.drop_schemas()
