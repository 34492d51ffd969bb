"""HTTP: API keys (missing, wrong, several, none), keys never in logs or bodies, CORS."""

from __future__ import annotations

import json
import logging

import pytest

from server.http.app import create_app
from tests.helpers import (
    AUTH,
    EDITS,
    IMG,
    MASK,
    FakeModel,
    config,
    edit_form,
    expect_error,
    post_edit,
    registry,
)

# ==================================================================== errors: auth


async def test_no_authorization_header(client, img_png):
    resp = await post_edit(client, edit_form(img_png), auth=False)
    await expect_error(resp, 401, code=None, param=None)
    resp = await client.get("/v1/models")
    await expect_error(resp, 401, code=None, param=None)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sk-wrong",
        "Bearer sk-tes",
        "Bearer sk-test2",
        "Basic c2stdGVzdA==",
        "Bearer ",
        "sk-test",
    ],
)
async def test_wrong_key(client, header):
    resp = await client.get("/v1/models", headers={"Authorization": header})
    err = await expect_error(resp, 401, code="invalid_api_key", param=None)
    assert "sk-" not in err["message"].replace("sk-xxxx", "")  # never echoes the key


async def test_several_keys(make_client):
    cl = await make_client(api_keys=("sk-a", "sk-b"))
    for key in ("sk-a", "sk-b"):
        resp = await cl.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200
    resp = await cl.get("/v1/models", headers={"Authorization": "Bearer sk-c"})
    assert resp.status == 401


async def test_no_auth_mode(make_client):
    cl = await make_client(no_auth=True, api_keys=())
    assert (await cl.get("/v1/models")).status == 200


def test_create_app_refuses_no_key():
    with pytest.raises(ValueError):
        create_app(config(api_keys=()), registry=registry())


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


# ==================================================================== CORS


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
