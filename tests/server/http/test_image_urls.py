"""Image URLs in a JSON edit (``{"image_url": "http://..."}``): fetched only from allowed hosts,
at checked addresses, without redirects or content codings, under the image cap (counted in
the memory budget as the bytes arrive) and a time cap. The images come from a real HTTP server
on 127.0.0.1 (``--image-url-allow-private`` lets the tests use loopback); the SSRF refusals
are checked at validation, with literal addresses, before any connection."""

from __future__ import annotations

import asyncio
import base64
import gzip

import numpy as np
import pytest
from aiohttp import web

from server.config import ImageURLConfig, Limits
from server.errors import APIError
from server.http.fetch import ImageFetcher, host_allowed
from server.service.admission import MemoryBudget
from tests.helpers import AUTH, EDITS, IMG, MASK, b64_image, expect_error, png

NOISE = png(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))


@pytest.fixture
async def images(aiohttp_server):
    """An image host on 127.0.0.1; ``.seen`` lists the paths requested."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        name = request.match_info["name"]
        if name == "img.png":
            return web.Response(body=IMG, content_type="image/png")
        if name == "mask.png":
            return web.Response(body=MASK, content_type="image/png")
        if name == "noise.png":
            return web.Response(body=NOISE, content_type="image/png")
        if name == "redirect":
            raise web.HTTPFound("/img.png")
        if name == "gzip":
            return web.Response(body=gzip.compress(IMG), headers={"Content-Encoding": "gzip"})
        if name == "chunked":  # no Content-Length: the cap must hold while reading
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"x" * 65536)
            await response.write_eof()
            return response
        if name == "slow":
            await asyncio.sleep(30)
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/{name}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    server.seen = seen
    server.url = lambda path: f"http://127.0.0.1:{server.port}/{path}"
    return server


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def edit(image: str, mask: str | None = None, **extra) -> dict:
    doc = {"prompt": "x", "seed": 1, "images": [{"image_url": image}], **extra}
    if mask is not None:
        doc["mask"] = {"image_url": mask}
    return doc


LOOPBACK = {"image_url_allow": ("127.0.0.1",), "image_url_allow_private": True}


async def test_an_image_url_edit_equals_the_data_url_edit(make_client, images):
    client = await make_client(**LOOPBACK)
    answers = []
    for doc in (
        edit(images.url("img.png"), images.url("mask.png")),
        edit(data_url(IMG), data_url(MASK)),
    ):
        resp = await client.post(EDITS, json=doc, headers=AUTH)
        assert resp.status == 200, await resp.text()
        answers.append(b64_image((await resp.json())["data"][0]))
    assert np.array_equal(*answers)
    assert images.seen == ["/img.png", "/mask.png"]


async def test_async_jobs_get_the_fetched_bytes(make_client, images):
    client = await make_client(**LOOPBACK)
    doc = edit(images.url("img.png"), images.url("mask.png"))
    resp = await client.post(EDITS, json=doc, headers={**AUTH, "Prefer": "respond-async"})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    for _ in range(200):
        job = await (await client.get(f"/v1/images/jobs/{job['id']}", headers=AUTH)).json()
        if job["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job


async def expect_refused(client, doc, code="invalid_image_url", param="image") -> str:
    resp = await client.post(EDITS, json=doc, headers=AUTH)
    return (await expect_error(resp, 400, code=code, param=param))["message"]


async def test_hosts_off_the_allowlist_are_not_contacted(make_client, images):
    client = await make_client(
        image_url_allow=("images.example.com",), image_url_allow_private=True
    )
    message = await expect_refused(client, edit(images.url("img.png")))
    assert "--image-url-allow" in message
    assert images.seen == []


async def test_private_addresses_are_refused_without_the_test_setting(make_client, images):
    client = await make_client(image_url_allow=("127.0.0.1",))
    message = await expect_refused(client, edit(images.url("img.png")))
    assert "non-public" in message
    assert images.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",  # NAT64 of the metadata address
        "http://[2002:a9fe:a9fe::]/",  # 6to4
        "http://[::169.254.169.254]/",  # IPv4-compatible
        "http://[::ffff:169.254.169.254]/",
        "http://192.0.0.8/",
        "http://2852039166/",  # 169.254.169.254, decimal
        "http://0251.0376.0251.0376/",  # octal
        "http://0xa9fea9fe/",  # hex
        "http://0x7f.1/",  # 127.0.0.1
        "http://[fd00::1]/",
        "http://100.64.0.1/",
    ],
)
async def test_special_purpose_targets_are_refused_at_validation(make_client, url):
    client = await make_client(image_url_allow=("*",))  # any public host
    message = await expect_refused(client, edit(url, mask=data_url(MASK)))
    assert "non-public" in message


@pytest.mark.parametrize(
    ("path", "settings", "code", "words"),
    [
        ("redirect", {}, "invalid_image_url", "redirect"),
        ("gzip", {}, "invalid_image_url", "Content-Encoding"),
        ("missing", {}, "invalid_image_url", "HTTP 404"),
        ("noise.png", {"max_image_mb": 0.01}, "image_too_large", "larger than"),
        ("chunked", {"max_image_mb": 1}, "image_too_large", "larger than"),
        ("slow", {"image_url_timeout": 0.5}, "invalid_image_url", "within 0.5 seconds"),
    ],
)
async def test_what_an_answer_may_not_do(make_client, images, path, settings, code, words):
    client = await make_client(**{**LOOPBACK, **settings})
    message = await expect_refused(client, edit(images.url(path)), code=code)
    assert words in message
    assert images.seen == [f"/{path}"]  # a redirect is not followed


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.png", "http://user:pw@127.0.0.1/a.png"])
async def test_only_plain_http_urls_are_fetched(make_client, url):
    client = await make_client(**LOOPBACK)
    param = "images" if url.startswith("ftp") else "image"
    code = "invalid_value" if url.startswith("ftp") else "invalid_image_url"
    await expect_refused(client, edit(url), code=code, param=param)


async def test_fetched_bytes_are_reserved_as_they_arrive(images):
    config = ImageURLConfig(image_url_allow=("127.0.0.1",), image_url_allow_private=True)
    fetcher = ImageFetcher(config, Limits())
    budget = MemoryBudget(1 << 30)
    reservation = budget.reservation()
    data = await fetcher.fetch(images.url("noise.png"), "image", reservation)
    assert data == NOISE and reservation.held == budget.used == len(NOISE)
    small = MemoryBudget(len(NOISE) // 2).reservation()
    with pytest.raises(APIError) as caught:
        await fetcher.fetch(images.url("noise.png"), "mask", small)
    assert caught.value.status == 429 and small.held <= len(NOISE) // 2


def test_the_allowlist():
    allowed = ("images.example.com", "*.cdn.example.org", "[2001:db8::1]", "10.0.0.1")
    assert host_allowed("images.example.com", allowed)
    assert host_allowed("IMAGES.example.com.", allowed)
    assert host_allowed("a.b.cdn.example.org", allowed)
    assert not host_allowed("cdn.example.org", allowed)  # *. is for subdomains
    assert not host_allowed("evilcdn.example.org", allowed)
    assert not host_allowed("example.com", allowed)
    assert host_allowed("2001:db8::1", allowed) and host_allowed("2001:db8:0::1", allowed)
    assert host_allowed("10.0.0.1", allowed)
    assert not host_allowed("10.0.0.2", allowed)
    assert host_allowed("anything.example", ("*",))
    assert not host_allowed("anything.example", ())
