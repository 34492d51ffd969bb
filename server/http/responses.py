"""JSON answers too big to encode on the event loop.

A synchronous edit with ``n=10`` at 2048x2048 answers ~100 MB of base64: ``json.dumps`` of it
on the loop stalled every other request (``/health`` included) for 1.6 s. ``encode_json``
runs the encoding in the app's executor, in pieces (``server/jsonbody.py``) so that the loop's
thread gets the GIL between them.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import jsonbody
from .state import EXECUTOR


async def encode_json(request: web.Request, body: dict) -> bytes:
    """``json.dumps(body).encode()``, computed off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], jsonbody.encode, body)
