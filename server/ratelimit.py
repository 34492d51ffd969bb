"""Per-minute limits: requests per API key, requests per end user under a key (the request's
``safety_identifier``, else ``user``: one key usually serves many people), and failed
authentications per client address (so that guessing keys is throttled).

The request window is kept in memory (``SlidingWindow``), or, when replicas share a PostgreSQL
job database (``--database-url``), in that database (``SqlWindow``, see ``rate_limiter``), so
the limit holds across replicas. The auth-failure throttle stays per replica: it protects each
process from key guessing at its own door, and a shared one would let one address's failures
lock out a whole NAT on every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .config import ServerConfig
from .database import engine_url, make_engine
from .errors import overloaded

WINDOW_S = 60.0
#: most keys (API keys, end users, client addresses) one window tracks at once: past it the
#: least recently counted are forgotten (one-off end users, or a flood of addresses, cannot
#: grow the process)
MAX_KEYS = 100_000
#: most timestamps one window holds over all its keys (~40 MB), whatever ``per_minute`` is
MAX_EVENTS = 1_000_000


class SlidingWindow:
    """Events per key in the last ``WINDOW_S`` seconds; ``per_minute`` <= 0 = unlimited.

    Keys are kept in the order they were last counted (an ``OrderedDict``), so each call
    drops, from the old end, the keys whose newest event left the window, and the least
    recently counted past ``max_keys`` keys or ``max_events`` timestamps: O(1) amortized per
    call (a key is dropped once per time it was added), bounded in memory and in time.
    ``clock``: ``time.monotonic`` (tests pass a fake one).
    """

    def __init__(
        self,
        per_minute: int,
        max_keys: int = MAX_KEYS,
        max_events: int = MAX_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self.max_events = max_events
        self.clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._events = 0  # timestamps held over all keys

    def __len__(self) -> int:
        """Keys tracked now."""
        return len(self._hits)

    @property
    def events(self) -> int:
        """Timestamps held now, over all keys."""
        return self._events

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` has room again, or None when it has room now."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        hits = self._hits.get(key)
        while hits and now - hits[0] > WINDOW_S:
            hits.popleft()
            self._events -= 1
        if not hits or len(hits) < self.per_minute:
            return None
        return max(1, int(WINDOW_S - (now - hits[0])) + 1)

    def hit(self, key: str) -> None:
        if self.per_minute <= 0:
            return
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque(maxlen=self.per_minute)
        else:
            self._hits.move_to_end(key)
        if len(hits) < self.per_minute:  # else the oldest timestamp makes room
            self._events += 1
        hits.append(now)
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop, from the old end, the keys whose newest event is out of the window, and the
        least recently counted past ``max_keys`` keys or ``max_events`` timestamps."""
        entries = self._hits
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if (
                len(entries) <= self.max_keys
                and self._events <= self.max_events
                and now - oldest[-1] <= WINDOW_S
            ):
                return
            del entries[oldest_key]
            self._events -= len(oldest)

    def take(self, key: str) -> int | None:
        """Count one event for ``key`` if it has room (None), else the seconds until it has."""
        retry = self.retry_after(key)
        if retry is None:
            self.hit(key)
        return retry


class RateLimiter:
    """``check(key_id)`` raises a 429 with Retry-After past ``per_minute`` requests; 0 = off.
    ``window``: where the counts live (default: this process's memory)."""

    def __init__(
        self,
        per_minute: int,
        window: SlidingWindow | SqlWindow | None = None,
        scope: str = "API key",
    ) -> None:
        self.window = window if window is not None else SlidingWindow(per_minute)
        self.scope = scope  # what is limited, for the message

    async def acheck(self, key_id: str, scope: str | None = None) -> None:
        """``check`` from the event loop: a database window's round trip runs in a thread."""
        if isinstance(self.window, SqlWindow):
            await asyncio.get_running_loop().run_in_executor(None, self.check, key_id, scope)
        else:
            self.check(key_id, scope)

    def check(self, key_id: str, scope: str | None = None) -> None:
        """``scope``: what is limited, for this call's message (default: the limiter's)."""
        retry = self.window.take(key_id)
        if retry is not None:
            raise overloaded(
                retry,
                f"Rate limit reached: {self.window.per_minute} requests per minute for this "
                f"{scope or self.scope}. Retry after the number of seconds in the Retry-After "
                "header.",
            )


#: the shared window's table, in the job database (``SqlWindow``); created on first use
rate_metadata = sa.MetaData()
#: requests per API key (or end user) per fixed minute
rate_windows = sa.Table(
    "inpaint_rate_windows",
    rate_metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("window", sa.BigInteger, primary_key=True),
    sa.Column("hits", sa.Integer, nullable=False),
)


class SqlWindow:
    """Requests per key in the job database, shared by every replica that uses it.

    Counts are kept per fixed minute (``inpaint_rate_windows``); the last 60 s are estimated as
    this minute's count plus the previous minute's, weighted by how much of it is still inside
    the 60 s (the usual sliding-window approximation). ``take`` counts and checks in one
    transaction (the row lock orders concurrent replicas), and takes the count back when over
    the limit, so refused requests do not count. Blocking: one round trip per call (the auth
    middleware makes it in a thread: ``RateLimiter.acheck``). The engine is made on first use;
    ``clock`` is ``time.time`` (tests pass a fake one).
    """

    def __init__(self, per_minute: int, database_url: str, clock=time.time) -> None:
        self.per_minute = per_minute
        self.database_url = database_url
        self.clock = clock
        self._engine = None
        self._lock = threading.Lock()
        self._swept = -1

    def _connect(self):
        with self._lock:
            if self._engine is None:
                url = engine_url(self.database_url, Path("."))
                self._engine = make_engine(url, rate_metadata)
            return self._engine

    def take(self, key: str) -> int | None:
        if self.per_minute <= 0:
            return None
        t = rate_windows
        now = self.clock()
        window, into = divmod(now, WINDOW_S)
        window = int(window)
        engine = self._connect()
        dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
        upsert = dialect.insert(t).values(key=key, window=window, hits=1)
        upsert = upsert.on_conflict_do_update(
            index_elements=[t.c.key, t.c.window], set_={"hits": t.c.hits + 1}
        ).returning(t.c.hits)
        with engine.begin() as conn:
            hits = conn.execute(upsert).scalar_one()
            previous = (
                conn.execute(
                    sa.select(t.c.hits).where(t.c.key == key, t.c.window == window - 1)
                ).scalar_one_or_none()
                or 0
            )
            weight = 1.0 - into / WINDOW_S
            if hits + previous * weight <= self.per_minute:
                if window != self._swept:  # once a minute per replica: old windows go
                    self._swept = window
                    conn.execute(sa.delete(t).where(t.c.window < window - 1))
                return None
            conn.execute(
                sa.update(t).where(t.c.key == key, t.c.window == window).values(hits=t.c.hits - 1)
            )
        return max(1, int(_seconds_to_room(hits - 1, previous, into, self.per_minute)) + 1)


def _seconds_to_room(current: int, previous: int, into: float, per_minute: int) -> float:
    """Seconds until ``current + previous * (1 - (into + t) / 60) + 1 <= per_minute``; past the
    minute's end, until the next minute starts (the estimate then restarts from this one)."""
    if previous > 0 and current + 1 <= per_minute:
        needed = 1.0 - (per_minute - 1 - current) / previous  # the weight fraction to pass
        return max(0.0, needed * WINDOW_S - into)
    return WINDOW_S - into


def rate_limiter(config: ServerConfig) -> RateLimiter:
    """The per-key request limiter the settings ask for (``--rate-limit``)."""
    return _limiter(config, config.auth.rate_limit, "API key")


def user_rate_limiter(config: ServerConfig) -> RateLimiter:
    """The per-end-user limiter (``--rate-limit-per-user``); count with ``user_key`` and name
    the field the id came from with ``user_scope``."""
    return _limiter(config, config.auth.rate_limit_per_user, user_scope("safety_identifier"))


def user_scope(field: str) -> str:
    """The per-user limit's scope text, naming the request field that identified the user
    (``safety_identifier``, else ``user``)."""
    return f"end user ({field})"


def user_key(key_id: str, end_user: str) -> str:
    """The window key of one end user under one API key: hashed, so that any identifier (up to
    the protocol's length bound) fits the database's 64-character key and never names a person
    in it; the same identifier under two keys is two users."""
    return "u:" + hashlib.sha256(f"{key_id}\0{end_user}".encode()).hexdigest()[:60]


def _limiter(config: ServerConfig, per_minute: int, scope: str) -> RateLimiter:
    """Counts in the job database when it is a PostgreSQL one (shared by replicas), else in
    memory (one replica)."""
    url = config.jobs.database_url
    if per_minute > 0 and url is not None and url.startswith(("postgresql", "postgres:")):
        return RateLimiter(per_minute, SqlWindow(per_minute, url), scope)
    return RateLimiter(per_minute, scope=scope)


class AuthThrottle:
    """Failed authentications per client address (``client_address``: behind a trusted proxy,
    the proxy's client); 0 = off.

    Only failures are refused: the key is checked first (in constant time), and a request
    whose key is valid passes whatever its address did, so that no one can lock others out,
    not even behind a shared proxy or NAT. A failing request from an address past
    ``per_minute`` failures gets a 429 instead of its 401 (and is not counted further) until
    the window has room again.
    """

    def __init__(self, per_minute: int) -> None:
        self.window = SlidingWindow(per_minute)

    def failed(self, address: str) -> None:
        """Count one failure of ``address``; a 429 ``APIError`` when it is over its limit."""
        retry = self.window.take(address)
        if retry is not None:
            raise overloaded(
                retry,
                "Too many failed authentications from this address. Check the API key and "
                "retry after the number of seconds in the Retry-After header.",
            )
