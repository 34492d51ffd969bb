"""HTTP: every input limit -> its status and OpenAI body: body, part, field, image and pixel
limits, slow uploads (408), the per-key rate limit. All fast."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from tests.fuzz.client import _read_response
from tests.helpers import (
    AUTH,
    EDITS,
    IMG,
    MASK,
    H,
    W,
    assert_error,
    edit_form,
    edit_ok,
    expect_error,
    form,
    huge_png_header,
    png,
    post_edit,
)

# ==================================================================== limits: body and parts


async def raw_exchange(port: int, head: bytes, body_part: bytes, wait_s: float):
    """Send headers and part of a body, then stall; return (status, body dict, seconds)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body_part)
        await writer.drain()
        status, _, body = await asyncio.wait_for(_read_response(reader, "POST"), wait_s)
        return status, json.loads(body), time.monotonic() - t0
    finally:
        writer.close()


@pytest.mark.parametrize("where", ["before-first-part", "inside-image-part", "json-body"])
async def test_slow_upload_gets_408(make_client, where):
    """A client that stops sending mid-body gets 408 (code request_timeout) after read_timeout_s
    without progress, instead of holding a connection and a handler forever."""
    server = await make_client(read_timeout=0.4)  # on 127.0.0.1
    if where == "json-body":
        body, ctype = (
            json.dumps({"prompt": "x", "images": [], "pad": "p" * 5000}).encode(),
            "application/json",
        )
    else:
        mp = edit_form(IMG, MASK)
        body, ctype = mp.body, mp.content_type
    cut = {"before-first-part": 0, "inside-image-part": len(body) // 3, "json-body": 100}[where]
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH['Authorization']}"
        f"\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, err, seconds = await raw_exchange(server.port, head, body[:cut], wait_s=5)
    assert_error(status, err, 408, code="request_timeout", param=None)
    assert 0.35 < seconds < 3.0
    # the server is fine afterwards
    mp = edit_form(IMG, MASK)
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH['Authorization']}"
        f"\r\nContent-Type: {mp.content_type}\r\nContent-Length: {len(mp.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    status, body, _ = await raw_exchange(server.port, head, mp.body, wait_s=10)
    assert status == 200 and len(body["data"]) == 1


async def test_body_over_limit_413(make_client):
    cl = await make_client(max_body_mb=20_000 / 2**20)
    big = png(np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8))  # ~30 kB
    assert len(big) > 20_000
    resp = await post_edit(cl, edit_form(big))
    await expect_error(resp, 413, code="image_too_large", param="image")


async def test_body_over_limit_413_chunked(make_client):
    """No Content-Length (chunked): the limit is enforced while reading."""
    cl = await make_client(max_body_mb=20_000 / 2**20)
    big = png(np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8))
    mp = edit_form(big)

    async def gen():
        body = mp.body
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    resp = await cl.post(EDITS, data=gen(), headers=mp.headers())
    await expect_error(resp, 413, code="image_too_large", param="image")


async def test_json_body_larger_than_one_read_chunk(make_client):
    """The JSON body is read to its end (one StreamReader.read() returns only what has arrived)."""

    noisy = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    data = png(noisy)
    assert len(data) > 150_000
    body = {
        "images": [{"image_url": "data:image/png;base64," + base64.b64encode(data).decode()}],
        "prompt": "x",
        "size": "256x256",
    }
    cl = await make_client()
    resp = await cl.post(
        EDITS, data=json.dumps(body).encode(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 200, await resp.text()


async def test_part_count_limit(make_client):
    cl = await make_client(max_parts=4)
    fields = {"prompt": "x", "n": "1", "user": "u"}  # + image = 4 parts: at the limit
    await edit_ok(cl, form(fields, [("image", IMG)]))
    resp = await post_edit(cl, form({**fields, "seed": "1"}, [("image", IMG)]))
    err = await expect_error(resp, 400, code="invalid_value", param=None)
    assert "4" in err["message"]


@pytest.mark.parametrize("field", ["user", "prompt", "negative_prompt", "some_unknown_field"])
async def test_field_size_limit(make_client, field):
    cl = await make_client(max_field_kb=1000 / 1024)
    fields = {"prompt": "x", field: "a" * 1000}
    await edit_ok(cl, form(fields, [("image", IMG)]))
    resp = await post_edit(cl, form({**fields, field: "a" * 1001}, [("image", IMG)]))
    await expect_error(resp, 400, code="string_above_max_length", param=field)


async def test_field_size_counts_bytes_not_characters(make_client):
    cl = await make_client(max_field_kb=1000 / 1024)
    resp = await post_edit(cl, form({"prompt": "\u00e9" * 501}, [("image", IMG)]))  # 1002 bytes
    await expect_error(resp, 400, code="string_above_max_length", param="prompt")


# ==================================================================== limits: images and pixels


async def test_too_many_images(client, img_png):
    mp = form({"prompt": "x"}, [("image[]", img_png)] * 17)
    await expect_error(await post_edit(client, mp), 400, code="invalid_value", param="image")


async def test_sixteen_images_accepted_seventeen_refused(make_client):
    cl = await make_client()
    body = await edit_ok(cl, form({"prompt": "x"}, [("image[]", IMG)] * 16))
    assert len(body["data"]) == 1
    resp = await post_edit(cl, form({"prompt": "x"}, [("image[]", IMG)] * 17))
    await expect_error(resp, 400, code="invalid_value", param="image")


async def test_number_of_images_is_configurable(make_client):
    cl = await make_client(max_images=2)
    await edit_ok(cl, form({"prompt": "x"}, [("image", IMG)] * 2))
    resp = await post_edit(cl, form({"prompt": "x"}, [("image", IMG)] * 3))
    await expect_error(resp, 400, code="invalid_value", param="image")


async def test_image_too_large_pixels(client):
    resp = await post_edit(client, edit_form(huge_png_header(60000, 60000)))
    err = await expect_error(resp, 400, code="image_too_large", param="image")
    assert "pixels" in err["message"]


async def test_image_too_large_bytes(make_client, img_png):
    cl = await make_client(max_image_mb=(len(img_png) - 1) / 2**20)
    resp = await post_edit(cl, edit_form(img_png))
    await expect_error(resp, 400, code="image_too_large", param="image")


async def test_total_pixels_per_request(make_client):
    cl = await make_client(max_request_pixels=2 * 64 * 64)
    body = await edit_ok(cl, edit_form(IMG, MASK, n=2, size="64x64"))
    assert len(body["data"]) == 2
    resp = await post_edit(cl, edit_form(IMG, MASK, n=3, size="64x64"))
    err = await expect_error(resp, 400, code="image_too_large", param="n")
    assert "n x size" in err["message"]


async def test_default_total_pixels_refuses_n10_at_4096_fast(make_client):
    cl = await make_client()
    t0 = time.perf_counter()
    resp = await post_edit(cl, edit_form(IMG, MASK, n=10, size="4096x4096"))
    await expect_error(resp, 400, code="image_too_large", param="n")
    assert time.perf_counter() - t0 < 2.0  # refused before any 4096x4096 buffer exists


async def test_decoded_pixels_limit_is_configurable(make_client):
    cl = await make_client(max_image_pixels=W * H - 1)
    resp = await post_edit(cl, edit_form(IMG))
    err = await expect_error(resp, 400, code="image_too_large", param="image")
    assert str(W * H - 1) in err["message"]


async def test_mask_decompression_bomb_refused_from_header(make_client):
    cl = await make_client()
    t0 = time.perf_counter()
    resp = await post_edit(cl, edit_form(IMG, huge_png_header(60000, 60000)))
    await expect_error(resp, 400, code="image_too_large", param="mask")
    assert time.perf_counter() - t0 < 2.0


# ==================================================================== rate limit


async def test_per_key_rate_limit(make_client):
    cl = await make_client(rate_limit=2, api_keys=("sk-test", "sk-other"))
    assert (await cl.get("/v1/models", headers=AUTH)).status == 200
    assert (await cl.get("/v1/models", headers=AUTH)).status == 200
    resp = await cl.get("/v1/models", headers=AUTH)
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    # the window began at the first request, moments ago: room again in most of a minute
    assert 56 <= int(resp.headers["Retry-After"]) <= 61
    # per key: another key is not limited; probes are never limited
    assert (await cl.get("/v1/models", headers={"Authorization": "Bearer sk-other"})).status == 200
    assert (await cl.get("/health")).status == 200


async def test_per_end_user_rate_limit(make_client):
    # one key serving many people: safety_identifier (else user) is limited on its own
    cl = await make_client(rate_limit_per_user=1, api_keys=("sk-test", "sk-other"))
    await edit_ok(cl, edit_form(IMG, MASK, safety_identifier="alice"))
    resp = await post_edit(cl, edit_form(IMG, MASK, safety_identifier="alice"))
    error = await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert "end user" in error["message"]
    # the window began at the first request, moments ago: room again in most of a minute
    assert 56 <= int(resp.headers["Retry-After"]) <= 61
    # `user` is the fallback id
    again = await post_edit(cl, edit_form(IMG, MASK, safety_identifier="", user="alice"))
    assert again.status == 429
    # another person, the same person under another key, or no id at all: not limited
    await edit_ok(cl, edit_form(IMG, MASK, safety_identifier="bob"))
    mp = edit_form(IMG, MASK, safety_identifier="alice")
    other = {**mp.headers(auth=False), "Authorization": "Bearer sk-other"}
    assert (await cl.post(EDITS, data=mp.body, headers=other)).status == 200
    await edit_ok(cl, edit_form(IMG, MASK))
    await edit_ok(cl, edit_form(IMG, MASK))
