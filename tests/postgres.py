"""A real PostgreSQL for tests: the machine's own (127.0.0.1:5432, trust auth, database
``test``) when it answers, else a throwaway one started with Debian's binaries. How it is found,
started and stopped lives in ``benchmarks/postgres.py`` (the local cluster uses it too).

``postgres`` (session fixture; a test module imports it to use it) returns a ``Postgres``:
``schema_url()`` makes a fresh, uniquely named schema and returns a ``postgresql://`` URL whose
connections use it (``options=-csearch_path=<schema>``), so parallel test runs and tests never
share tables. The schemas are dropped, and a throwaway server stopped, at the end of the run.
Without a PostgreSQL (none answers and Debian's binaries are missing) the tests that use it are
skipped with what to install (``missing()``), named in the run's summary (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from benchmarks.postgres import LOCAL, Postgres, answers, initdb_binary, throwaway
from tests.helpers import missing_package

__all__ = ["Postgres", "missing", "postgres"]


def missing() -> str | None:
    """The skip reason when there is no PostgreSQL to use, else None."""
    if answers(LOCAL) or initdb_binary() is not None:
        return None
    return missing_package("postgresql", f"nothing answers at {LOCAL} and no initdb")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if reason := missing():
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        url = LOCAL if answers(LOCAL) else stack.enter_context(throwaway())
        pg = Postgres(url)
        yield pg
        pg.drop_schemas()
