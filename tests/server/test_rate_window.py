"""The in-memory rate-limit window (``SlidingWindow``) and the failed-auth throttle: bounded in
memory and in time, with a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from server.errors import APIError
from server.ratelimit import WINDOW_S, AuthThrottle, SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_distinct_keys_stay_under_the_bound():
    clock = Clock()
    window = SlidingWindow(5, max_keys=1000, clock=clock)
    for i in range(200_000):  # one-off end users, all within one window
        assert window.take(f"user-{i}") is None
        clock.now += 1e-4
    assert len(window) == 1000
    # the most recent ones are the ones kept: their counts still apply
    for _ in range(4):
        window.take("user-199999")
    assert window.take("user-199999") is not None


def test_the_default_bound_holds_for_200k_keys():
    clock = Clock()
    window = SlidingWindow(1, clock=clock)
    for i in range(200_000):
        window.hit(f"k{i}")
    assert len(window) == window.max_keys < 200_000


def test_entries_expire_after_the_window():
    clock = Clock()
    window = SlidingWindow(2, clock=clock)
    for i in range(500):
        window.hit(f"k{i}")
    assert len(window) == 500
    clock.now += WINDOW_S + 1
    window.hit("new")  # any call drops what left the window
    assert len(window) == 1


def test_the_limit_and_its_retry_after():
    clock = Clock()
    window = SlidingWindow(2, clock=clock)
    assert window.take("a") is None
    clock.now += 10
    assert window.take("a") is None
    assert window.take("a") == 51  # the first hit leaves the window in 50 s
    assert window.take("b") is None  # other keys are not affected
    clock.now += 50.5
    assert window.take("a") is None


def test_a_key_in_use_is_not_forgotten_while_others_expire():
    clock = Clock()
    window = SlidingWindow(3, clock=clock)
    window.hit("old")
    for step in range(10):
        clock.now += 20
        window.hit("busy")
        window.hit(f"one-off-{step}")
    assert "old" not in window._hits and "busy" in window._hits
    assert len(window) <= 5  # busy + the one-offs of the last 60 s


def test_auth_throttle_refuses_only_past_its_limit():
    clock = Clock()
    throttle = AuthThrottle(2)
    throttle.window.clock = clock
    throttle.failed("203.0.113.1")
    throttle.failed("203.0.113.1")
    with pytest.raises(APIError) as err:
        throttle.failed("203.0.113.1")
    assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
    throttle.failed("203.0.113.2")  # another address
    clock.now += WINDOW_S + 1
    throttle.failed("203.0.113.1")  # the window has room again


def test_the_timestamps_are_bounded_too():
    # a high per-user limit: the keys' timestamps, not only their number, are capped
    clock = Clock()
    window = SlidingWindow(600, max_keys=1000, max_events=5000, clock=clock)
    for i in range(300):
        for _ in range(100):
            window.hit(f"heavy-{i}")
    assert window.events <= 5000 and len(window) <= 50
    assert window.events == sum(len(h) for h in window._hits.values())
    clock.now += WINDOW_S + 1
    window.hit("new")
    assert (window.events, len(window)) == (1, 1)
