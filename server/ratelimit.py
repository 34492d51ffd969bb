"""Per-minute limits kept in memory: requests per API key, and failed authentications per client
address (so that guessing keys is throttled)."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from .errors import APIError

WINDOW_S = 60.0
#: past this many tracked keys, empty windows are dropped (clients that went quiet)
PRUNE_ABOVE = 10_000


class SlidingWindow:
    """Events per key in the last ``WINDOW_S`` seconds; ``per_minute`` <= 0 = unlimited."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` has room again, or None when it has room now."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic()
        hits = self._hits.get(key)
        while hits and now - hits[0] > WINDOW_S:
            hits.popleft()
        if hits is None or len(hits) < self.per_minute:
            return None
        return max(1, int(WINDOW_S - (now - hits[0])) + 1)

    def hit(self, key: str) -> None:
        if self.per_minute <= 0:
            return
        if len(self._hits) > PRUNE_ABOVE:
            for k in [k for k, v in self._hits.items() if not v]:
                del self._hits[k]
        self._hits[key].append(time.monotonic())


def too_many(retry_after: int, message: str) -> APIError:
    return APIError(
        429,
        message,
        type="rate_limit_exceeded",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after)},
    )


class RateLimiter:
    """``check(key_id)`` raises a 429 with Retry-After past ``per_minute`` requests; 0 = off."""

    def __init__(self, per_minute: int) -> None:
        self.window = SlidingWindow(per_minute)

    def check(self, key_id: str) -> None:
        retry = self.window.retry_after(key_id)
        if retry is not None:
            raise too_many(
                retry,
                f"Rate limit reached: {self.window.per_minute} requests per minute for this API "
                "key. Retry after the number of seconds in the Retry-After header.",
            )
        self.window.hit(key_id)


class AuthThrottle:
    """Failed authentications per client address: past ``per_minute`` the address gets 429s
    (before its key is even looked at) until the window has room again; 0 = off."""

    def __init__(self, per_minute: int) -> None:
        self.window = SlidingWindow(per_minute)

    def check(self, address: str) -> None:
        retry = self.window.retry_after(address)
        if retry is not None:
            raise too_many(
                retry,
                "Too many failed authentications from this address. Check the API key and "
                "retry after the number of seconds in the Retry-After header.",
            )

    def failed(self, address: str) -> None:
        self.window.hit(address)
