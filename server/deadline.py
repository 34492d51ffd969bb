"""``deadline(seconds)``: an async context manager that cancels its block after ``seconds`` and
raises ``asyncio.TimeoutError`` (the same class as the builtin ``TimeoutError`` from Python
3.11 on). ``asyncio.timeout`` where it exists (3.11+); on 3.10, ``async_timeout``, which
aiohttp itself depends on there (the lock pins it for Python < 3.11). Catch
``asyncio.TimeoutError``: on 3.10 it is not the builtin ``TimeoutError``.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # pragma: no cover - exercised on Python 3.10 only
    from async_timeout import timeout as deadline

__all__ = ["deadline"]
