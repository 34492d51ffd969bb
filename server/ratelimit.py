"""Requests per minute per API key (a sliding window kept in memory)."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from .errors import APIError

WINDOW_S = 60.0


class RateLimiter:
    """``check(key_id)`` raises a 429 ``APIError`` with Retry-After past ``per_minute``; 0 = off."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, key_id: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        hits = self._hits[key_id]
        while hits and now - hits[0] > WINDOW_S:
            hits.popleft()
        if len(hits) >= self.per_minute:
            retry = max(1, int(WINDOW_S - (now - hits[0])) + 1)
            raise APIError(
                429,
                f"Rate limit reached: {self.per_minute} requests per minute for this API key. "
                "Retry after the number of seconds in the Retry-After header.",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        hits.append(now)
