"""Hardening: every input limit -> its status and OpenAI body (slow uploads included), model
faults (raising, NaN, wrong shapes, broken folders) fail only their own request, keys never in
logs or bodies, url files across a restart, CORS, loopback bind. Complements test_routes.py (the
contract's error rows) and test_fuzz_corpus.py (malformed inputs); all fast."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from server import auth as auth_mod
from server.auth import KeyStore
from server.cli import build_parser
from server.config import ServerConfig
from server.http.app import create_app
from server.http.state import STORE
from server.models.builtin import NAME as BUILTIN

from .fuzz.client import _read_response
from .helpers import (
    AUTH,
    EDITS,
    FakeModel,
    Multipart,
    alpha_mask,
    assert_error,
    config,
    default_box,
    edit_form,
    expect_error,
    form,
    huge_png_header,
    png,
    post_edit,
    registry,
    scene,
)

W, H = 64, 48
BOX = default_box(W, H)
IMG = png(scene(W, H))
MASK = png(alpha_mask(W, H, BOX))


@pytest.fixture
def make_client(aiohttp_client):
    async def make(reg=None, **kw):
        app = create_app(config(**kw), registry=reg if reg is not None else registry())
        return await aiohttp_client(app)

    return make


async def ok(client, mp: Multipart) -> dict:
    resp = await post_edit(client, mp)
    text = await resp.text()
    assert resp.status == 200, text
    return json.loads(text)


# ==================================================================== limits


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
async def test_slow_upload_gets_408(aiohttp_server, where):
    """A client that stops sending mid-body gets 408 (code request_timeout) after read_timeout_s
    without progress, instead of holding a connection and a handler forever."""
    server = await aiohttp_server(
        create_app(config(read_timeout=0.4), registry=registry()), host="127.0.0.1"
    )
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


async def test_part_count_limit(make_client):
    cl = await make_client(max_parts=4)
    fields = {"prompt": "x", "n": "1", "user": "u"}  # + image = 4 parts: at the limit
    await ok(cl, form(fields, [("image", IMG)]))
    resp = await post_edit(cl, form({**fields, "seed": "1"}, [("image", IMG)]))
    err = await expect_error(resp, 400, code=None, param=None)
    assert "4" in err["message"]


@pytest.mark.parametrize("field", ["user", "prompt", "negative_prompt", "some_unknown_field"])
async def test_field_size_limit(make_client, field):
    cl = await make_client(max_field_kb=1000 / 1024)
    fields = {"prompt": "x", field: "a" * 1000}
    await ok(cl, form(fields, [("image", IMG)]))
    resp = await post_edit(cl, form({**fields, field: "a" * 1001}, [("image", IMG)]))
    await expect_error(resp, 400, code="string_above_max_length", param=field)


async def test_field_size_counts_bytes_not_characters(make_client):
    cl = await make_client(max_field_kb=1000 / 1024)
    resp = await post_edit(cl, form({"prompt": "\u00e9" * 501}, [("image", IMG)]))  # 1002 bytes
    await expect_error(resp, 400, code="string_above_max_length", param="prompt")


async def test_sixteen_images_accepted_seventeen_refused(make_client):
    cl = await make_client()
    body = await ok(cl, form({"prompt": "x"}, [("image[]", IMG)] * 16))
    assert len(body["data"]) == 1
    resp = await post_edit(cl, form({"prompt": "x"}, [("image[]", IMG)] * 17))
    await expect_error(resp, 400, code="invalid_value", param="image")


async def test_number_of_images_is_configurable(make_client):
    cl = await make_client(max_images=2)
    await ok(cl, form({"prompt": "x"}, [("image", IMG)] * 2))
    resp = await post_edit(cl, form({"prompt": "x"}, [("image", IMG)] * 3))
    await expect_error(resp, 400, code="invalid_value", param="image")


async def test_total_pixels_per_request(make_client):
    cl = await make_client(max_request_pixels=2 * 64 * 64)
    body = await ok(cl, edit_form(IMG, MASK, n=2, size="64x64"))
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


# ==================================================================== model faults


class BadOutputModel(FakeModel):
    """Single-pass model whose output is broken for rows whose prompt names a fault."""

    def run(self, rows):
        out = super().run(rows)
        fault = rows[0].prompt if len(rows) == 1 else None
        broken = []
        for row, img in zip(rows, out, strict=True):
            kind = row.prompt
            if kind == "nan":
                img = np.full(img.shape, np.nan, np.float32)
            elif kind == "inf":
                img = img.astype(np.float32)
                img[0, 0, 0] = np.inf
            elif kind == "float":
                img = img.astype(np.float32) / 255.0
            elif kind == "shape":
                img = img[:-8]
            elif kind == "gray":
                img = img[..., 0]
            elif kind == "none":
                img = None
            broken.append(img)
        if fault == "short":
            return broken[:0]
        return broken


@pytest.mark.parametrize("fault", ["nan", "inf", "float", "shape", "gray", "none", "short"])
async def test_bad_model_output_is_a_500_for_that_request_only(make_client, fault, caplog):
    bad = BadOutputModel("bad")
    cl = await make_client(reg=registry(bad))
    resp = await post_edit(cl, edit_form(IMG, MASK, prompt=fault, model="bad"))
    err = await expect_error(resp, 500, type="server_error", code="server_error", param=None)
    for leak in ("Traceback", ".py", "nan", "NaN", "shape", "dtype", "BadModelOutput", "/"):
        assert leak not in err["message"], err["message"]
    assert "incident" in err["message"]
    # the same model keeps serving good rows, and so does the rest of the server
    assert (await post_edit(cl, edit_form(IMG, MASK, prompt="fine", model="bad"))).status == 200
    assert (await post_edit(cl, edit_form(IMG, MASK))).status == 200
    assert (await cl.get("/health")).status == 200


async def test_nan_row_fails_only_its_own_request_in_a_shared_batch(make_client):
    bad = BadOutputModel("bad")
    cl = await make_client(reg=registry(bad), max_batch_size=2, max_wait_ms=1500)
    poisoned, fine = await asyncio.gather(
        post_edit(cl, edit_form(IMG, MASK, prompt="nan", model="bad")),
        post_edit(cl, edit_form(IMG, MASK, prompt="fine", model="bad")),
    )
    assert bad.calls == 1  # both requests' rows were in the same model call
    await expect_error(poisoned, 500, type="server_error", code="server_error", param=None)
    assert fine.status == 200, await fine.text()
    body = await fine.json()
    assert len(body["data"]) == 1


async def test_metrics_count_bad_outputs(make_client):
    bad = BadOutputModel("bad")
    cl = await make_client(reg=registry(bad))
    assert (await post_edit(cl, edit_form(IMG, MASK, prompt="nan", model="bad"))).status == 500
    text = await (await cl.get("/metrics")).text()
    lines = [
        ln
        for ln in text.splitlines()
        if "error" in ln and 'model="bad"' in ln and not ln.startswith("#")
    ]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1, lines


async def test_broken_model_folders_are_listed_and_builtin_serves(aiohttp_client, tmp_path):
    (tmp_path / "broken-json").mkdir()
    (tmp_path / "broken-json" / "manifest.json").write_text("{not json")
    (tmp_path / "empty-manifest").mkdir()
    (tmp_path / "empty-manifest" / "manifest.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()  # no manifest: not a model folder, not listed
    cl = await aiohttp_client(create_app(config(tmp_path)))  # the real loader, no injection
    body = await (await cl.get("/v1/models", headers=AUTH)).json()
    assert [m["id"] for m in body["data"]] == [BUILTIN]
    assert {u["id"] for u in body["unavailable"]} == {"broken-json", "empty-manifest"}
    assert all(u["reason"] for u in body["unavailable"])
    ready = await cl.get("/ready")
    assert ready.status == 200
    assert sorted((await ready.json())["unavailable"]) == ["broken-json", "empty-manifest"]
    assert (await post_edit(cl, edit_form(IMG, MASK))).status == 200
    resp = await post_edit(cl, edit_form(IMG, MASK, model="broken-json"))
    await expect_error(resp, 404, code="model_not_found", param="model")


# ==================================================================== secrets


async def test_keys_never_in_logs_or_bodies(make_client, caplog):
    good, other, wrong = "sk-good-9f8e7d6c5b4a", "sk-other-1a2b3c4d5e", "sk-wrong-0a9b8c7d6e"
    caplog.set_level(logging.DEBUG)
    bad = FakeModel("bad", error=RuntimeError("model exploded"))
    cl = await make_client(reg=registry(bad), api_keys=(good, other), rate_limit=3)
    texts = []

    async def call(method, path, key=None, raw_header=None, **kw):
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if raw_header is not None:
            headers["Authorization"] = raw_header
        resp = await cl.request(method, path, headers=headers, **kw)
        texts.append(await resp.text() + json.dumps(dict(resp.headers)))
        return resp.status

    mp = edit_form(IMG, MASK, user="end-user-42")
    assert (
        await call("POST", EDITS, None, data=mp.body, headers={"Content-Type": mp.content_type})
        == 401
    )
    assert (
        await call("POST", EDITS, wrong, data=mp.body, headers={"Content-Type": mp.content_type})
        == 401
    )
    assert await call("GET", "/v1/models", raw_header=f"Basic {good}") == 401
    assert await call("GET", "/v1/models", raw_header=f"Bearer {good}x") == 401
    assert (
        await call("POST", EDITS, good, data=mp.body, headers={"Content-Type": mp.content_type})
        == 200
    )
    bad_mp = edit_form(IMG, MASK, model="bad")
    assert (
        await call(
            "POST", EDITS, good, data=bad_mp.body, headers={"Content-Type": bad_mp.content_type}
        )
        == 500
    )
    assert await call("GET", "/v1/models", good) == 200
    assert await call("GET", "/v1/models", good) == 429  # rate limited: 3 per minute
    assert await call("GET", "/v1/models", other) == 200
    assert "end-user-42" in caplog.text  # the log is captured (user ids are logged)
    for key in (good, other, wrong):
        assert key not in caplog.text
        assert all(key not in t for t in texts)


def test_key_comparison_is_constant_time(monkeypatch):
    """Every configured key is compared (no early exit), with hmac.compare_digest, over SHA-256
    digests of equal length whatever the presented key's length."""
    calls = []
    real = auth_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    store = KeyStore(["sk-a", "sk-b", "sk-c"])
    for presented in ("sk-a", "sk-c", "nope", "x" * 10_000, ""):
        calls.clear()
        store.check(presented)
        assert calls == [(32, 32)] * 3


# ==================================================================== url files


async def test_url_files_survive_a_restart_until_they_expire(aiohttp_client, tmp_path):
    files = tmp_path / "files"
    cl1 = await aiohttp_client(create_app(config(files_dir=files), registry=registry()))
    body = await ok(cl1, edit_form(IMG, MASK, response_format="url"))
    name = body["data"][0]["url"].rsplit("/", 1)[1]
    first = await (await cl1.get(f"/v1/images/files/{name}")).read()
    await cl1.close()  # shutdown: cleanup_ctx runs, the persistent dir stays
    assert (files / name).is_file()

    cl2 = await aiohttp_client(create_app(config(files_dir=files), registry=registry()))
    resp = await cl2.get(f"/v1/images/files/{name}")
    assert resp.status == 200
    assert await resp.read() == first
    old = time.time() - 3601  # past the 60-minute expiry
    os.utime(files / name, (old, old))
    resp = await cl2.get(f"/v1/images/files/{name}")
    await expect_error(resp, 404, code="file_not_found", param=None)
    assert not (files / name).exists()


async def test_default_files_dir_does_not_survive(aiohttp_client):
    app = create_app(config(), registry=registry())
    cl = await aiohttp_client(app)
    await ok(cl, edit_form(IMG, MASK, response_format="url"))
    directory: Path = app[STORE].directory
    assert any(directory.iterdir())
    await cl.close()
    assert not directory.exists()  # the README says: set --files-dir to keep them


# ==================================================================== CORS, bind


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_cors_off_by_default(make_client):
    cl = await make_client()
    origin = {"Origin": "https://app.example"}
    for resp in (
        await cl.options(EDITS, headers={**origin, **PREFLIGHT}),
        await cl.get("/v1/models", headers={**origin, **AUTH}),
        await cl.get("/health", headers=origin),
    ):
        assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await cl.options(EDITS, headers={**origin, **PREFLIGHT})
    assert resp.status != 204


async def test_cors_for_a_configured_origin_only(make_client):
    cl = await make_client(cors_origins=("https://app.example",))
    good = {"Origin": "https://app.example"}
    resp = await cl.options(EDITS, headers={**good, **PREFLIGHT})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    resp = await cl.get("/v1/models", headers={**good, **AUTH})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in resp.headers.get("Vary", "")
    resp = await cl.get("/v1/models", headers=good)  # errors readable by the page too
    assert (
        resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    )
    mp = edit_form(IMG, MASK, stream="true")
    resp = await cl.post(EDITS, data=mp.body, headers={**mp.headers(), **good})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert resp.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    await resp.read()
    evil = {"Origin": "https://evil.example"}
    for resp in (
        await cl.options(EDITS, headers={**evil, **PREFLIGHT}),
        await cl.get("/v1/models", headers={**evil, **AUTH}),
    ):
        assert "Access-Control-Allow-Origin" not in resp.headers


def test_binds_to_loopback_by_default(monkeypatch):
    monkeypatch.delenv("HOST", raising=False)
    assert ServerConfig().http.host == "127.0.0.1"
    assert build_parser({}).parse_args([]).__dict__["http.host"] == "127.0.0.1"


# ==================================================================== regressions found by fuzzing


def _mp_raw(*parts: bytes) -> bytes:
    b = Multipart.BOUNDARY.encode()
    return b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + b + b"--\r\n"


_IMG_PART = (
    b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + IMG
)


@pytest.mark.parametrize(
    "body",
    [
        _mp_raw(
            b'Content-Disposition: form-data; name="prompt"\r\nX-Pad: '
            + b"p" * 20000
            + b"\r\n\r\nx",
            _IMG_PART,
        ),  # part header line too long
        _mp_raw(
            b'Content-Disposition: form-data; name="prompt"\r\n'
            + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
            + b"\r\nx",
            _IMG_PART,
        ),  # too many
        _mp_raw(
            b'Content-Disposition: form-data; name="prompt"\r\nbad header line\r\n\r\nx', _IMG_PART
        ),  # invalid part header
    ],
    ids=["header-too-long", "too-many-headers", "invalid-header"],
)
async def test_malformed_part_headers_are_400(make_client, body):
    cl = await make_client()
    resp = await cl.post(
        EDITS, data=body, headers={**AUTH, "Content-Type": Multipart().content_type}
    )
    await expect_error(resp, 400, code=None, param=None)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads
        b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}",  # int over Python's digit limit
        b'{"prompt": "x", "images": 5}',  # images not a list
        b'{"prompt": "x", "images": {"image_url": 1}}',
    ],
    ids=["deep-nesting", "5000-digits", "images-int", "images-object"],
)
async def test_hostile_json_bodies_are_400(make_client, raw):
    cl = await make_client()
    resp = await cl.post(EDITS, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}


async def test_json_body_larger_than_one_read_chunk(make_client):
    """The JSON body is read to its end (one StreamReader.read() returns only what has arrived)."""
    import base64

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


@pytest.mark.parametrize("size", ["\u00b2x8", "8x\u00b3", "\u2460x8"])
async def test_unicode_digit_like_sizes_are_400(make_client, size):
    """'²'.isdigit() is True but int('²') raises: such sizes were a 500."""
    cl = await make_client()
    resp = await post_edit(cl, edit_form(IMG, MASK, size=size))
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "size"
