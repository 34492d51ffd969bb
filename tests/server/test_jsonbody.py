"""server/jsonbody.py: big JSON answers encoded in pieces give exactly ``json.dumps``'s bytes,
whatever the slicing (escapes, non-ASCII and astral characters across piece boundaries)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from server import jsonbody

BODIES = [
    {"created": 1, "data": [{"b64_json": "QUJD" * 50}, {"url": "http://x/y"}], "size": "8x8"},
    {"a": 'quote " backslash \\ newline \n tab \t', "b": [1, 2.5, None, True, False, []]},
    {"text": "é😀\u2028\x00" * 40, "nested": {"deep": [{"x": "y" * 33}]}},
    ["top", "level", {"list": ()}],
    "just a long string " * 20,
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("body", BODIES)
def test_pieces_join_to_json_dumps(monkeypatch, body, piece):
    monkeypatch.setattr(jsonbody, "PIECE_CHARS", piece)
    assert jsonbody.encode(body) == json.dumps(body).encode()


def test_a_long_string_is_escaped_in_many_short_calls(monkeypatch):
    monkeypatch.setattr(jsonbody, "PIECE_CHARS", 1000)
    body = {"data": [{"b64_json": "A" * 10_500}]}
    pieces = list(jsonbody.pieces(body))
    assert max(len(p) for p in pieces) == 1000 and len(pieces) > 11
    assert b"".join(pieces) == json.dumps(body).encode()


async def test_the_event_loop_keeps_running_while_a_big_answer_is_encoded():
    """An answer of ten ~6 MB base64 images encoded in an executor: the loop's longest gap
    stays far below the whole encoding's time (``json.dumps`` in the same thread holds the GIL
    for all of it: about 0.6 s here, 1.1 s for 107 MB measured on the project's machine)."""
    loop = asyncio.get_running_loop()
    body = {"data": [{"b64_json": base64.b64encode(os.urandom(4_500_000)).decode()}] * 10}
    worst, running = 0.0, True

    async def ticker() -> None:
        nonlocal worst
        while running:
            started = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - started)

    with ThreadPoolExecutor(1) as executor:
        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.02)
        encoded = await loop.run_in_executor(executor, jsonbody.encode, body)
        running = False
        await tick
    assert len(encoded) > 60_000_000
    assert worst < 0.3, f"the loop stalled {worst:.2f} s"
