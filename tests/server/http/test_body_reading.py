"""The loop only moves bytes: bodies are parsed off the event loop, compressed bodies refused
without inflating, refused bodies never drained, ``100 Continue`` only after auth and size
checks, the JSON path under the multipart path's limits, slow clients cut off."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
import time

import numpy as np
import pytest

from server.http import forms
from tests.helpers import (
    AUTH,
    EDITS,
    IMG,
    KEY,
    MASK,
    edit_form,
    edit_ok,
    expect_error,
    png,
    post_edit,
)


async def raw_exchange(client, head: str, body: bytes = b"", read_s: float = 5.0) -> bytes:
    """Send ``head`` (request line + headers, no blank line) and ``body`` on a fresh socket;
    return all the server sends until it closes (or ``read_s`` passes)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head.encode() + b"\r\n\r\n" + body)
    await writer.drain()
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_s)
            if not chunk:
                break
            chunks.append(chunk)
    except (asyncio.TimeoutError, ConnectionError):
        pass
    writer.close()
    return b"".join(chunks)


async def closes_after_answer(client, head: str, body: bytes) -> tuple[int, bool, bytes]:
    """(status, closed without waiting for the rest of the declared body, raw answer)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head.encode() + b"\r\n\r\n" + body)
    await writer.drain()
    raw = b""
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            if not chunk:
                closed = True
                break
            raw += chunk
    except asyncio.TimeoutError:
        closed = False
    writer.close()
    return int(raw.split(b" ", 2)[1]), closed, raw


def post_head(client, length: int, *extra: str, auth: bool = True, ctype: str | None = None):
    mp = edit_form(IMG, MASK)
    lines = [
        f"POST {EDITS} HTTP/1.1",
        f"Host: 127.0.0.1:{client.port}",
        f"Content-Type: {ctype or mp.content_type}",
        f"Content-Length: {length}",
    ]
    if auth:
        lines.append(f"Authorization: Bearer {KEY}")
    return "\r\n".join(lines + list(extra))


# ------------------------------------------------------------------ parsing happens off the loop


async def test_bodies_are_parsed_in_a_worker_thread(client, monkeypatch):
    threads = []
    real_multipart, real_json = forms.parse_multipart, forms.parse_json

    def spy_multipart(*a):
        threads.append(threading.current_thread())
        return real_multipart(*a)

    def spy_json(*a):
        threads.append(threading.current_thread())
        return real_json(*a)

    from server.http import body as body_mod

    monkeypatch.setattr(body_mod, "parse_multipart", spy_multipart)
    monkeypatch.setattr(body_mod, "parse_json", spy_json)
    await edit_ok(client, edit_form(IMG, MASK))
    doc = {
        "prompt": "x",
        "images": [{"image_url": "data:image/png;base64," + base64.b64encode(IMG).decode()}],
    }
    resp = await client.post(EDITS, json=doc, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert len(threads) == 2
    assert all(t is not threading.main_thread() for t in threads)


async def test_health_stays_fast_while_a_large_json_body_is_parsed(client):
    """A 40 MB JSON body (long base64 string + many small values) used to be parsed, and its
    base64 decoded, on the loop; now /health answers while it is worked on."""
    pad = "A" * (40 * 2**20)
    doc = json.dumps({"prompt": "x", "images": [{"image_url": "data:image/png;base64," + pad}]})
    task = asyncio.ensure_future(
        client.post(EDITS, data=doc, headers={**AUTH, "Content-Type": "application/json"})
    )
    worst = 0.0
    while not task.done():
        t0 = time.perf_counter()
        assert (await client.get("/health")).status == 200
        worst = max(worst, time.perf_counter() - t0)
        await asyncio.sleep(0.01)
    resp = await task
    assert resp.status == 400  # 30 MB decoded > the 25 MB image limit, refused before decoding
    assert worst < 0.5, worst


# ------------------------------------------------------------------ refused without reading


async def test_compressed_bodies_are_refused_without_inflating(client):
    payload = gzip.compress(b"\0" * (8 << 20))  # 8 MB of zeros: a compression bomb in miniature
    head = post_head(client, len(payload), "Content-Encoding: gzip")
    status, closed, raw = await closes_after_answer(client, head, payload[:1024])
    assert status == 415 and closed
    err = json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["code"] == "unsupported_content_encoding"


@pytest.mark.parametrize("encoding", ["deflate", "br", "GZIP", "gzip, identity"])
async def test_any_content_encoding_is_refused(client, encoding):
    mp = edit_form(IMG, MASK)
    resp = await client.post(
        EDITS, data=mp.body, headers={**mp.headers(), "Content-Encoding": encoding}
    )
    await expect_error(resp, 415, code="unsupported_content_encoding", param=None)


async def test_identity_encoding_is_fine(client):
    mp = edit_form(IMG, MASK)
    resp = await client.post(
        EDITS, data=mp.body, headers={**mp.headers(), "Content-Encoding": "identity"}
    )
    assert resp.status == 200


async def test_401_closes_the_connection_instead_of_draining(client):
    head = post_head(client, 50 << 20, auth=False)
    status, closed, _ = await closes_after_answer(client, head, b"x" * 4096)
    assert status == 401 and closed


async def test_413_closes_the_connection_instead_of_draining(make_client):
    cl = await make_client(max_body_mb=1)
    head = post_head(cl, 50 << 20)
    status, closed, _ = await closes_after_answer(cl, head, b"x" * 4096)
    assert status == 413 and closed


async def test_a_preamble_counts_against_the_body_limit(make_client):
    cl = await make_client(max_body_mb=0.5)
    mp = edit_form(IMG, MASK)
    body = b"p" * (600 * 1024) + b"\r\n" + mp.body
    resp = await cl.post(EDITS, data=body, headers=mp.headers())
    await expect_error(resp, 413, code="image_too_large", param="image")


async def test_a_preamble_within_the_limit_is_skipped(client):
    mp = edit_form(IMG, MASK)
    resp = await client.post(EDITS, data=b"preamble\r\n" + mp.body, headers=mp.headers())
    assert resp.status == 200


# ------------------------------------------------------------------ 100 Continue


async def test_no_100_continue_before_auth(client):
    raw = await raw_exchange(client, post_head(client, 1000, "Expect: 100-continue", auth=False))
    assert not raw.startswith(b"HTTP/1.1 100"), raw[:60]
    assert raw.startswith(b"HTTP/1.1 401")


async def test_no_100_continue_for_a_body_over_the_limit(make_client):
    cl = await make_client(max_body_mb=1)
    raw = await raw_exchange(cl, post_head(cl, 2 << 20, "Expect: 100-continue"))
    assert raw.startswith(b"HTTP/1.1 413"), raw[:60]


async def test_100_continue_after_the_checks_pass(client):
    mp = edit_form(IMG, MASK)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = post_head(client, len(mp.body), "Expect: 100-continue", "Connection: close")
    writer.write(head.encode() + b"\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 100 Continue")
    writer.write(mp.body)
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]


# ------------------------------------------------------------------ JSON limits = multipart limits


def data_url(data: bytes) -> dict:
    return {"image_url": "data:image/png;base64," + base64.b64encode(data).decode()}


async def test_json_images_obey_the_per_image_byte_limit(make_client):
    cl = await make_client(max_image_mb=0.001)  # ~1 KB
    noisy = png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(noisy) > 2000
    resp = await cl.post(EDITS, json={"prompt": "x", "images": [data_url(noisy)]}, headers=AUTH)
    await expect_error(resp, 400, code="image_too_large", param="image")
    resp = await cl.post(
        EDITS,
        json={"prompt": "x", "images": [data_url(b"x" * 10)], "mask": data_url(noisy)},
        headers=AUTH,
    )
    await expect_error(resp, 400, code="image_too_large", param="mask")


async def test_json_fields_obey_the_field_limit(make_client):
    cl = await make_client(max_field_kb=1)
    doc = {"prompt": "x", "images": [data_url(IMG)], "negative_prompt": "n" * 2000}
    resp = await cl.post(EDITS, json=doc, headers=AUTH)
    await expect_error(resp, 400, code="string_above_max_length", param="negative_prompt")


async def test_json_key_and_item_counts_are_bounded(client):
    many_keys = {"prompt": "x", **{f"k{i}": 1 for i in range(100)}}
    resp = await client.post(EDITS, json=many_keys, headers=AUTH)
    await expect_error(resp, 400, code="invalid_value", param=None)
    many_items = {"prompt": "x", "images": [data_url(IMG)], "pad": [0] * 100_000}
    resp = await client.post(EDITS, json=many_items, headers=AUTH)
    body = await expect_error(resp, 400, code="invalid_value", param=None)
    assert "too many items" in body["message"]


async def test_json_image_count_is_checked_before_decoding(client):
    doc = {"prompt": "x", "images": [data_url(IMG)] * 17}
    resp = await client.post(EDITS, json=doc, headers=AUTH)
    await expect_error(resp, 400, code="invalid_value", param="image")


async def test_json_markup_is_read(client):
    doc = {
        "prompt": "x",
        "images": [data_url(IMG)],
        "markup": data_url(MASK),
        "mask": data_url(MASK),
    }
    resp = await client.post(EDITS, json=doc, headers=AUTH)
    await expect_error(resp, 400, code="invalid_value", param="markup")


# ------------------------------------------------------------------ slow clients


async def test_headers_trickled_too_slowly_are_cut_off(make_client):
    cl = await make_client(header_timeout=0.5)
    reader, writer = await asyncio.open_connection(cl.host, cl.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    t0 = time.monotonic()
    closed = False
    try:
        for _ in range(40):  # one more header line every 0.1 s, never the blank line
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                closed = True
                break
    except asyncio.TimeoutError:
        pass
    except ConnectionError:
        closed = True
    while not closed and time.monotonic() - t0 < 5:
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.2) == b""
        except asyncio.TimeoutError:
            pass
        except ConnectionError:
            closed = True
    writer.close()
    assert closed and time.monotonic() - t0 < 3


async def test_a_body_trickled_under_the_minimum_rate_gets_408(make_client, monkeypatch):
    from server.http import body as body_mod

    monkeypatch.setattr(body_mod, "BODY_RATE_GRACE_S", 0.3)
    cl = await make_client(min_body_rate_kb=64, read_timeout=5)
    mp = edit_form(IMG, MASK)
    reader, writer = await asyncio.open_connection(cl.host, cl.port)
    writer.write(post_head(cl, len(mp.body)).encode() + b"\r\n\r\n")
    raw = b""
    for i in range(0, 2000, 100):  # 100 bytes every 0.05 s: 2 KB/s, under no stall limit
        try:
            writer.write(mp.body[i : i + 100])
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(65536), 0.05)
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            pass
        break
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw[:80]
    assert b"KB/s" in raw


async def test_a_body_past_its_deadline_gets_408(make_client):
    cl = await make_client(body_timeout=0.5, read_timeout=5)
    mp = edit_form(IMG, MASK)
    reader, writer = await asyncio.open_connection(cl.host, cl.port)
    writer.write(post_head(cl, len(mp.body)).encode() + b"\r\n\r\n" + mp.body[:100])
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw[:80]
    assert b"request_timeout" in raw


async def test_fast_uploads_are_untouched_by_the_rate_floor(client):
    resp = await post_edit(client, edit_form(IMG, MASK))
    assert resp.status == 200
