"""The loop that jobs' and batches' runners share: look every ``poll_s`` seconds, or at once
when woken, until told to stop; a failed look (the database or the object store is down) is
logged and the next one tries again, so an outage never ends the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def poll(
    tick: Callable[[], Awaitable[None]],
    wake: asyncio.Event,
    stopping: Callable[[], bool],
    poll_s: float,
    log: logging.Logger,
    what: str,
) -> None:
    """Run ``tick`` every ``poll_s`` seconds or when ``wake`` is set, until ``stopping()``."""
    while not stopping():
        try:
            await asyncio.wait_for(wake.wait(), poll_s)
        except asyncio.TimeoutError:
            pass
        wake.clear()
        if stopping():
            return
        try:
            await tick()
        except Exception:  # noqa: BLE001 - a database outage must not end the loop
            log.exception("%s: the database or the object store failed; retrying", what)
