"""HTTP: the side routes (/v1/models, /health, /ready, /metrics, /openapi.json) and the url files
(/v1/images/files/: served, bad names refused, kept across a restart until they expire)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

from server.http.state import STORE
from server.models.builtin import NAME as BUILTIN
from tests.helpers import (
    AUTH,
    BOX,
    IMG,
    MASK,
    FakeModel,
    H,
    W,
    bw_mask,
    check_kept_and_edited,
    decode_image,
    edit_form,
    edit_ok,
    expect_error,
    png,
    post_edit,
    raw_get,
    registry,
    scene,
)

# ==================================================================== url files


async def test_url_response_and_file_route(client, img, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png, response_format="url", n=2))
    urls = [d["url"] for d in body["data"]]
    assert len(set(urls)) == 2
    for url in urls:
        m = re.fullmatch(r"http://[^/]+/v1/images/files/([0-9a-f]{32})\.png", url)
        assert m, url
        resp = await client.get(url.split("://", 1)[1].split("/", 1)[1].join(["/", ""]))
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        out, fmt = decode_image(await resp.read())
        assert fmt == "PNG"
        check_kept_and_edited(out, img, BOX)
    # no key needed for the link (it is unguessable), like a signed URL
    path = "/" + urls[0].split("/", 3)[3]
    assert (await client.get(path)).status == 200
    # webp and jpeg files are served with their types
    for fmt, ctype in (("jpeg", "image/jpeg"), ("webp", "image/webp")):
        body = await edit_ok(
            client, edit_form(img_png, mask_png, response_format="url", output_format=fmt)
        )
        url = body["data"][0]["url"]
        assert url.endswith("." + fmt)
        resp = await client.get("/" + url.split("/", 3)[3])
        assert resp.headers["Content-Type"] == ctype
        assert decode_image(await resp.read())[0].shape == (H, W, 3)


async def test_file_route_rejects_bad_names(client, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png, response_format="url"))
    name = body["data"][0]["url"].rsplit("/", 1)[1]
    ident = name.split(".")[0]
    bad = [
        f"{ident.upper()}.png",
        f"{ident}.jpeg",
        f"{ident}.PNG",
        f"{ident}.gif",
        f"{ident[:-1]}.png",
        f"{ident}0.png",
        f"{ident}.png.png",
        f"{ident}",
        "0" * 32 + ".png",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "....%2F%2Fetc%2Fpasswd",
        ".%2e",
        "%00.png",
        f"%2e{ident}.png",
    ]
    for b in bad:
        # with a key: names the client normalises (".%2e" -> "..") land on other routes, also 404
        resp = await client.get("/v1/images/files/" + b, headers=AUTH)
        assert resp.status == 404, b
        body = await resp.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
    # a literal traversal is normalised away by the router: never a file, always JSON
    for raw in ("/v1/images/files/../../etc/passwd", "/v1/images/files/../../../etc/passwd"):
        resp = await client.get(raw, headers=AUTH)
        assert resp.status == 404
        assert "root:" not in await resp.text()
        await expect_error(resp, 404, code="not_found", param=None)
    assert (await client.get("/v1/images/files/" + name)).status == 200
    # the same, byte-exact on the wire (no client-side normalisation or re-encoding)
    for target in (
        "/v1/images/files/../../etc/passwd",
        "/v1/images/files/%2e%2e%2fetc%2fpasswd",
        "/v1/images/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        f"/v1/images/files/..%2f{name}",
        f"/v1/images/files/%2e%2e%2f{name}",
    ):
        status, raw = await raw_get(client, target)
        assert status in (401, 404), (target, status)
        assert b"root:" not in raw and b"\x89PNG" not in raw
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    # percent-encoding an unreserved character names the same file (RFC 3986): that is fine
    status, raw = await raw_get(client, f"/v1/images/files/{ident}%2epng")
    assert status == 200


async def test_url_files_survive_a_restart_until_they_expire(make_client, tmp_path):
    files = tmp_path / "files"
    cl1 = await make_client(files_dir=files)
    body = await edit_ok(cl1, edit_form(IMG, MASK, response_format="url"))
    name = body["data"][0]["url"].rsplit("/", 1)[1]
    first = await (await cl1.get(f"/v1/images/files/{name}")).read()
    await cl1.close()  # shutdown: cleanup_ctx runs, the persistent dir stays
    assert (files / name).is_file()

    cl2 = await make_client(files_dir=files)
    resp = await cl2.get(f"/v1/images/files/{name}")
    assert resp.status == 200
    assert await resp.read() == first
    old = time.time() - 3601  # past the 60-minute expiry
    os.utime(files / name, (old, old))
    resp = await cl2.get(f"/v1/images/files/{name}")
    await expect_error(resp, 404, code="file_not_found", param=None)
    assert not (files / name).exists()


async def test_default_files_dir_does_not_survive(make_client):
    cl = await make_client()
    await edit_ok(cl, edit_form(IMG, MASK, response_format="url"))
    directory: Path = cl.app[STORE].directory
    assert any(directory.iterdir())
    await cl.close()
    assert not directory.exists()  # the README says: set --files-dir to keep them


# ==================================================================== side routes


async def test_models_list(client):
    resp = await client.get("/v1/models", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert BUILTIN in ids
    for m in body["data"]:
        assert m["object"] == "model"
        assert isinstance(m["created"], int) and isinstance(m["owned_by"], str)
    resp = await client.get(f"/v1/models/{BUILTIN}", headers=AUTH)
    assert resp.status == 200
    card = await resp.json()
    assert card["id"] == BUILTIN and card["object"] == "model"


async def test_health_ready(client):
    resp = await client.get("/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/ready")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ready"
    assert BUILTIN in body["models"] and body["default_model"] == BUILTIN


async def test_metrics_after_request(client, img_png, mask_png):
    await edit_ok(client, edit_form(img_png, mask_png))
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert re.search(
        r'^inpaint_requests_total\{route="/v1/images/edits",status="200"\} 1\.0$', text, re.M
    ), text
    assert "# TYPE inpaint_requests_total counter" in text
    assert "inpaint_request_latency_seconds_bucket" in text
    assert f'inpaint_images_total{{model="{BUILTIN}"}} 1.0' in text


async def test_metrics_count_errors(client, img_png):
    await post_edit(client, edit_form(img_png), auth=False)
    text = await (await client.get("/metrics")).text()
    assert 'inpaint_requests_total{route="/v1/images/edits",status="401"} 1.0' in text


async def test_openapi_document(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    op = doc["paths"]["/v1/images/edits"]["post"]
    props = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for seed in ("image", "mask", "prompt", "model", "n", "size", "response_format"):
        assert seed in props, seed
    from server.protocol import EditRequest

    for field in EditRequest.model_fields:
        assert field in props, field
    assert set(op["requestBody"]["content"]["multipart/form-data"]["schema"]["required"]) == {
        "image",
        "prompt",
    }
    schema = doc["components"]["schemas"]["ImageResponse"]
    assert "created" in schema["properties"] and "data" in schema["properties"]
    item = schema["properties"]["data"]["items"]["properties"]
    assert {"url", "b64_json", "revised_prompt"} <= set(item)
    assert doc["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    assert op["security"] == [{"BearerAuth": []}]


async def test_health_answers_while_an_edit_runs(make_client, img_png):
    slow = FakeModel("slow", delay=1.5)
    cl = await make_client(reg=registry(slow))
    task = asyncio.ensure_future(post_edit(cl, edit_form(img_png, model="slow")))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 5)
    t0 = time.perf_counter()
    resp = await cl.get("/health")
    assert resp.status == 200
    assert time.perf_counter() - t0 < 0.5
    assert not task.done()
    assert (await task).status == 200


async def test_health_answers_while_a_big_image_is_processed(client):
    """Decode, prepare, composite and encode of a big upload run off the event loop too: /health
    stays fast for the whole life of the request."""
    mp = edit_form(png(scene(2048, 2048)), png(bw_mask(2048, 2048, (900, 900, 1000, 1000))))
    task = asyncio.ensure_future(post_edit(client, mp))
    worst, probes = 0.0, 0
    while not task.done():
        t0 = time.perf_counter()
        assert (await client.get("/health")).status == 200
        worst = max(worst, time.perf_counter() - t0)
        probes += 1
        await asyncio.sleep(0.02)
    assert (await task).status == 200
    assert probes >= 3
    assert worst < 0.5, worst
