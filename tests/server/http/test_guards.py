"""Host names, cross-site posts to an unauthenticated local server, CORS ``null``, throttled
guessing of keys, minimal error texts, `url` links that follow --public-url."""

from __future__ import annotations

import pytest

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
    # a valid key is never locked out: only failing requests of the address are refused
    assert (await cl.get("/v1/models", headers=AUTH)).status == 200
    assert (await cl.get("/v1/models", headers=wrong)).status == 429
    assert (await cl.get("/health")).status == 200  # public routes are not throttled


def forwarded(client: str, key: dict[str, str] = AUTH) -> dict[str, str]:
    return {**key, "X-Forwarded-For": client}


async def test_behind_a_trusted_proxy_the_throttle_is_per_client(make_client):
    # every request comes from the proxy (127.0.0.1); X-Forwarded-For names the client
    cl = await make_client(auth_failures_per_minute=3, trusted_proxies=("127.0.0.0/8",))
    wrong = {"Authorization": "Bearer sk-wrong"}
    guesser = "203.0.113.7"
    for _ in range(3):
        assert (await cl.get("/v1/models", headers=forwarded(guesser, wrong))).status == 401
    assert (await cl.get("/v1/models", headers=forwarded(guesser, wrong))).status == 429
    # what the guesser writes into the header itself, left of what the proxy appended,
    # changes nothing: it is still the address the proxy saw
    spoofed = forwarded(f"198.51.100.1, {guesser}", wrong)
    assert (await cl.get("/v1/models", headers=spoofed)).status == 429
    # the other clients of the same proxy are not throttled, and keys stay valid for all
    assert (await cl.get("/v1/models", headers=forwarded("198.51.100.2", wrong))).status == 401
    assert (await cl.get("/v1/models", headers=forwarded("198.51.100.2"))).status == 200
    assert (await cl.get("/v1/models", headers=forwarded(guesser))).status == 200


async def test_forwarded_headers_of_an_untrusted_peer_are_ignored(make_client):
    cl = await make_client(auth_failures_per_minute=2)  # no --trusted-proxy
    wrong = {"Authorization": "Bearer sk-wrong"}
    for i in range(2):
        assert (await cl.get("/v1/models", headers=forwarded(f"192.0.2.{i}", wrong))).status == 401
    # a new address in X-Forwarded-For each time does not escape the peer's throttle
    assert (await cl.get("/v1/models", headers=forwarded("192.0.2.99", wrong))).status == 429


async def test_the_rfc7239_header_when_configured(make_client):
    cl = await make_client(
        auth_failures_per_minute=1, trusted_proxies=("127.0.0.1",), forwarded_header="forwarded"
    )
    wrong = {"Authorization": "Bearer sk-wrong"}
    first = {**wrong, "Forwarded": 'for="[2001:db8::1]:4711";proto=https'}
    assert (await cl.get("/v1/models", headers=first)).status == 401
    assert (await cl.get("/v1/models", headers=first)).status == 429
    # X-Forwarded-For is not the configured header: it is not read (the peer is the client
    # for this request; one failure of its own is allowed)
    assert (await cl.get("/v1/models", headers=forwarded("2001:db8::1", wrong))).status == 401
    other = {**wrong, "Forwarded": "for=192.0.2.60"}
    assert (await cl.get("/v1/models", headers=other)).status == 401


async def test_access_log_names_the_forwarded_client(make_client, caplog):
    cl = await make_client(trusted_proxies=("127.0.0.1",))
    with caplog.at_level("INFO", logger="aiohttp.access"):
        assert (await cl.get("/v1/models", headers=forwarded("203.0.113.9"))).status == 200
        assert (await cl.get("/health")).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert lines[0].startswith('203.0.113.9 "GET /v1/models HTTP/1.1" 200 ')
    assert lines[1].startswith('127.0.0.1 "GET /health HTTP/1.1" 200 ')


async def test_malformed_hosts_are_refused(make_client):
    cl = await make_client(host="0.0.0.0")  # any host name is accepted
    for host in (
        "127.0.0.1:80@evil.com",
        "user@127.0.0.1",
        "127.0.0.1:8o",
        "127.0.0.1:",
        "127.0.0.1:99999",
        "a.example/path",
        "a.example%2fx",
        "[::1",
        "[not-ipv6]:80",
        "a b.example",
    ):
        status, raw = await raw_get(cl, "/v1/models", host=host)
        assert status == 400 and b"invalid_host" in raw, host
    for host in ("images.example.com:8443", "[::1]:80", "10.0.0.1", "my_service:8000"):
        assert (await raw_get(cl, "/v1/models", host=host))[0] == 200, host
    with pytest.raises(ValueError, match="--allowed-host 'a@b.example'"):
        await make_client(allowed_hosts=("a@b.example",))


async def test_url_links_are_built_from_a_validated_host(make_client):
    cl = await make_client(host="0.0.0.0")
    mp = edit_form(IMG, MASK, response_format="url")
    headers = {**mp.headers(), "Host": "127.0.0.1:80@evil.com"}
    resp = await cl.post(EDITS, data=mp.body, headers=headers)
    body = await expect_error(resp, 400, code="invalid_host", param=None)
    assert "evil.com" not in str(body.get("data"))
    resp = await cl.post(EDITS, data=mp.body, headers={**mp.headers(), "Host": "Img.Example:8080"})
    assert resp.status == 200
    url = (await resp.json())["data"][0]["url"]
    assert url.startswith("http://img.example:8080/v1/images/files/")


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
