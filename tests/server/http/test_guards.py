"""Host names, cross-site posts to an unauthenticated local server, CORS ``null``, throttled
guessing of keys, minimal error texts, `url` links that follow --public-url."""

from __future__ import annotations

from tests.helpers import (
    AUTH,
    EDITS,
    IMG,
    MASK,
    edit_form,
    edit_ok,
    expect_error,
    post_edit,
    raw_get,
)

PREFLIGHT = {"Access-Control-Request-Method": "POST"}


async def raw_status(client, host: str, path: str = "/v1/models") -> int:
    """The status of a GET of ``path`` sent with ``Host: host`` (which the HTTP client would
    normalise)."""
    return (await raw_get(client, path, host=host))[0]


async def test_loopback_server_answers_only_loopback_host_names(client):
    for host in ("127.0.0.1", f"127.0.0.1:{client.port}", "localhost:1", "[::1]:8000", "LOCALHOST"):
        assert await raw_status(client, host) == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io", "10.0.0.1"):
        assert await raw_status(client, host) == 400, host


async def test_allowed_host_list(make_client):
    cl = await make_client(allowed_hosts=("images.example.com",))
    assert await raw_status(cl, "images.example.com:443") == 200
    assert await raw_status(cl, "127.0.0.1") == 400
    resp = await cl.get("/v1/models", headers={"Host": "other.example", **AUTH})
    body = await expect_error(resp, 400, code="invalid_host", param=None)
    assert "images.example.com" in body["message"]
    for probe in ("/health", "/ready", "/metrics"):  # kubelet and Prometheus use the pod's IP
        assert (await cl.get(probe, headers={"Host": "10.1.2.3:8000"})).status == 200


async def test_any_host_when_bound_to_all_interfaces(make_client):
    cl = await make_client(host="0.0.0.0")
    assert await raw_status(cl, "whatever.example") == 200


async def test_url_links_use_public_url(make_client):
    cl = await make_client(public_url="https://img.example.com/base/")
    body = await edit_ok(cl, edit_form(IMG, MASK, response_format="url"))
    assert body["data"][0]["url"].startswith("https://img.example.com/base/v1/images/files/")


async def test_no_auth_loopback_refuses_cross_site_posts(make_client):
    cl = await make_client(no_auth=True, api_keys=())
    mp = edit_form(IMG, MASK)
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example"):
        resp = await cl.post(EDITS, data=mp.body, headers={**mp.headers(False), "Origin": origin})
        await expect_error(resp, 403, code="origin_not_allowed", param=None)
    for origin in ("http://localhost:3000", f"http://127.0.0.1:{cl.port}", "http://[::1]:8080"):
        resp = await cl.post(EDITS, data=mp.body, headers={**mp.headers(False), "Origin": origin})
        assert resp.status == 200, origin
    resp = await post_edit(cl, mp, auth=False)  # no Origin (curl, SDKs): fine
    assert resp.status == 200


async def test_no_auth_cross_site_allowed_when_listed(make_client):
    cl = await make_client(no_auth=True, api_keys=(), cors_origins=("https://app.example",))
    mp = edit_form(IMG, MASK)
    resp = await cl.post(
        EDITS, data=mp.body, headers={**mp.headers(False), "Origin": "https://app.example"}
    )
    assert resp.status == 200


async def test_with_auth_origins_are_not_checked(client):
    mp = edit_form(IMG, MASK)
    resp = await client.post(
        EDITS, data=mp.body, headers={**mp.headers(), "Origin": "https://evil.example"}
    )
    assert resp.status == 200  # the key is the protection; CORS decides what a page may read


async def test_origin_null_is_never_reflected(make_client):
    cl = await make_client(cors_origins=("*",))
    for resp in (
        await cl.options(EDITS, headers={"Origin": "null", **PREFLIGHT}),
        await cl.get("/v1/models", headers={"Origin": "null", **AUTH}),
    ):
        assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await cl.get("/v1/models", headers={"Origin": "https://a.example", **AUTH})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://a.example"


async def test_failed_authentication_is_throttled_per_address(make_client):
    cl = await make_client(auth_failures_per_minute=3)
    wrong = {"Authorization": "Bearer sk-wrong"}
    for _ in range(3):
        await expect_error(
            await cl.get("/v1/models", headers=wrong), 401, code="invalid_api_key", param=None
        )
    resp = await cl.get("/v1/models", headers=wrong)
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    # the window began at the first failure, moments ago: the address waits most of a minute
    assert 56 <= int(resp.headers["Retry-After"]) <= 61
    # the address waits out the window, whatever key it now presents
    resp = await cl.get("/v1/models", headers=AUTH)
    assert resp.status == 429
    assert (await cl.get("/health")).status == 200  # public routes are not throttled


async def test_successful_authentication_is_not_counted(make_client):
    cl = await make_client(auth_failures_per_minute=2)
    for _ in range(10):
        assert (await cl.get("/v1/models", headers=AUTH)).status == 200


async def test_echoed_model_names_are_truncated(client):
    resp = await post_edit(client, edit_form(IMG, MASK, model="m" * 200_000))
    body = await expect_error(resp, 404, code="model_not_found", param="model")
    assert len(body["message"]) < 300


async def test_ready_names_no_reasons(make_client, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    cl = await make_client(load_models=True, tmp_models=tmp_path)
    ready = await (await cl.get("/ready")).json()
    assert ready["unavailable"] == ["broken"]
    assert str(tmp_path) not in str(ready)
    # /v1/models says why, in a short reason without the folder's path or a traceback
    models = await (await cl.get("/v1/models", headers=AUTH)).json()
    (entry,) = [u for u in models["unavailable"] if u["id"] == "broken"]
    assert entry["reason"] and len(entry["reason"]) <= 300
    assert str(tmp_path) not in str(models) and "Traceback" not in str(models)
