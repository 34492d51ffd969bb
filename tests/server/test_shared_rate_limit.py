"""The rate limiter's window in the job database (server/ratelimit.py ``SqlWindow``): two
limiters ("replicas") sharing one PostgreSQL (and, for the same code path, SQLite) count
together; refused requests do not count; the previous minute fades out; a fake clock."""

from __future__ import annotations

import pytest

from server.errors import APIError
from server.ratelimit import RateLimiter, SqlWindow, rate_limiter
from tests.helpers import config
from tests.postgres import postgres  # noqa: F401 - the session fixture


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return request.getfixturevalue("postgres").schema_url()


def test_replicas_share_the_window(database_url):
    clock = Clock(6_000_000.0)  # the start of a minute
    a = RateLimiter(3, SqlWindow(3, database_url, clock))
    b = RateLimiter(3, SqlWindow(3, database_url, clock))
    a.check("key1")
    b.check("key1")
    a.check("key1")
    for limiter in (a, b):
        with pytest.raises(APIError) as refused:
            limiter.check("key1")
        assert refused.value.status == 429
        # at the minute's start with nothing before it: room again when the next minute starts
        assert int(refused.value.headers["Retry-After"]) == 61
    b.check("key2")  # another key has its own count
    # half a minute into the next one: 3 * 0.5 = 1.5 still counted from before -> one more fits
    clock.now += 90
    a.check("key1")
    with pytest.raises(APIError) as refused:
        b.check("key1")
    assert refused.value.status == 429
    # the next minute's start: the previous one counts whole; it holds 1 (the refused request
    # did not count, else 2), so 2 more fit
    clock.now += 30
    a.check("key1")
    b.check("key1")
    with pytest.raises(APIError):
        a.check("key1")


def test_retry_after_points_to_when_there_is_room(database_url):
    clock = Clock(6_000_000.0 + 30)
    window = SqlWindow(2, database_url, clock)
    assert window.take("k") is None and window.take("k") is None
    retry = window.take("k")  # full this minute: room when the next one starts (30 s)
    assert retry == 31
    clock.now += 30 + 15  # next minute, 15 s in: previous 2 weigh 1.5 -> 2.5 > 2 -> wait
    retry = window.take("k")
    # room once 2 * (1 - t / 60) + 1 <= 2, at t = 30 s: 15 s from now
    assert retry == 16
    clock.now += 15
    assert window.take("k") is None


def test_the_database_window_is_used_only_for_a_shared_postgresql(tmp_path):
    pg = rate_limiter(config(rate_limit=5, database_url="postgresql://db.example/x"))
    assert isinstance(pg.window, SqlWindow)
    sqlite = rate_limiter(config(rate_limit=5, database_url=f"sqlite:///{tmp_path}/j.db"))
    assert not isinstance(sqlite.window, SqlWindow)
    assert not isinstance(rate_limiter(config(rate_limit=0)).window, SqlWindow)
