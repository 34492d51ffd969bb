"""HTTP: ``/v1/files`` in process (aiohttp test client, SQLite in the app's files folder, the
local object store): upload, get, list pages, content, delete, per-key visibility, the size
cap, expiry (and the sweep), the upload counted in the memory budget."""

from __future__ import annotations

import asyncio

from server.files import object_key
from server.http.state import BUDGET, FILES, STORE
from tests.helpers import AUTH, KEY, Multipart, expect_error

OTHER_KEY = "sk-test-other"
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


def upload_form(data: bytes, purpose: str | None = "batch", filename="in.jsonl", **extra):
    mp = Multipart().file("file", data, filename=filename)
    if purpose is not None:
        mp.field("purpose", purpose)
    for name, value in extra.items():
        mp.field(name, str(value))
    return mp


async def upload(client, data: bytes, headers=AUTH, **kw):
    mp = upload_form(data, **kw)
    resp = await client.post("/v1/files", data=mp.body, headers={**mp.headers(), **headers})
    return resp


async def test_upload_get_content_delete(make_client):
    client = await make_client()
    data = b'{"custom_id": "a"}\n' * 3
    resp = await upload(client, data, filename="requests.jsonl")
    assert resp.status == 200, await resp.text()
    obj = await resp.json()
    assert obj["id"].startswith("file-") and len(obj["id"]) == 37
    assert obj["object"] == "file" and obj["bytes"] == len(data)
    assert obj["filename"] == "requests.jsonl" and obj["purpose"] == "batch"
    assert obj["status"] == "processed"
    assert obj["expires_at"] - obj["created_at"] == 3600  # --file-ttl
    resp = await client.get(f"/v1/files/{obj['id']}", headers=AUTH)
    assert resp.status == 200 and await resp.json() == obj
    resp = await client.get(f"/v1/files/{obj['id']}/content", headers=AUTH)
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Length"] == str(len(data))
    resp = await client.delete(f"/v1/files/{obj['id']}", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"id": obj["id"], "object": "file", "deleted": True}
    for path in (f"/v1/files/{obj['id']}", f"/v1/files/{obj['id']}/content"):
        await expect_error(
            await client.get(path, headers=AUTH), 404, code="file_not_found", param=None
        )
    await expect_error(
        await client.delete(f"/v1/files/{obj['id']}", headers=AUTH),
        404,
        code="file_not_found",
        param=None,
    )
    stored = client.app[STORE]
    assert stored.get_object(object_key(obj["id"])) is None  # the bytes went with the row


async def test_another_key_sees_nothing(make_client):
    client = await make_client(api_keys=(KEY, OTHER_KEY))
    obj = await (await upload(client, b"mine", purpose="vision")).json()
    for path in (f"/v1/files/{obj['id']}", f"/v1/files/{obj['id']}/content"):
        resp = await client.get(path, headers=OTHER)
        never = await client.get(path.replace(obj["id"], "file-" + "0" * 32), headers=AUTH)
        a = await expect_error(resp, 404, code="file_not_found", param=None)
        b = await expect_error(never, 404, code="file_not_found", param=None)
        assert a["message"].replace(obj["id"], "X") == b["message"].replace("file-" + "0" * 32, "X")
    await expect_error(
        await client.delete(f"/v1/files/{obj['id']}", headers=OTHER),
        404,
        code="file_not_found",
        param=None,
    )
    resp = await client.get("/v1/files", headers=OTHER)
    assert (await resp.json())["data"] == []
    resp = await client.get(f"/v1/files/{obj['id']}", headers=AUTH)
    assert resp.status == 200  # still there for its owner
    resp = await client.get("/v1/files")  # no key at all
    await expect_error(resp, 401, code=None, param=None)


async def test_list_pages_purpose_and_order(make_client):
    client = await make_client()
    ids = []
    for i in range(5):
        obj = await (await upload(client, b"x" * i, purpose="batch" if i % 2 else "vision")).json()
        ids.append(obj["id"])
    resp = await client.get("/v1/files", headers=AUTH)
    page = await resp.json()
    assert page["object"] == "list" and page["has_more"] is False
    assert [f["id"] for f in page["data"]] == ids[::-1]  # newest first
    assert page["first_id"] == ids[-1] and page["last_id"] == ids[0]
    seen, after = [], None
    while True:
        query = {"limit": "2", "order": "asc", **({"after": after} if after else {})}
        page = await (await client.get("/v1/files", params=query, headers=AUTH)).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids
    page = await (await client.get("/v1/files?purpose=batch", headers=AUTH)).json()
    assert [f["id"] for f in page["data"]] == [ids[3], ids[1]]
    for query in ("limit=0", "limit=x", "order=up"):
        resp = await client.get(f"/v1/files?{query}", headers=AUTH)
        await expect_error(resp, 400, code="invalid_value", param=query.split("=")[0])


async def test_refused_uploads(make_client):
    client = await make_client(max_file_mb=0.01)  # 10485 bytes
    resp = await upload(client, b"x" * 20000)
    await expect_error(resp, 413, code="file_too_large", param="file")
    resp = await upload(client, b"x", purpose="fine-tune")
    await expect_error(resp, 400, code="invalid_value", param="purpose")
    resp = await upload(client, b"x", purpose=None)
    await expect_error(resp, 400, code="missing_required_parameter", param="purpose")
    mp = Multipart().field("purpose", "batch")
    resp = await client.post("/v1/files", data=mp.body, headers=mp.headers())
    await expect_error(resp, 400, code="missing_required_parameter", param="file")
    for seconds in ("0", "3601", "soon"):
        resp = await upload(
            client,
            b"x",
            **{"expires_after[anchor]": "created_at", "expires_after[seconds]": seconds},
        )
        await expect_error(resp, 400, code="invalid_value", param="expires_after")
    resp = await client.post("/v1/files", json={"purpose": "batch"}, headers=AUTH)
    await expect_error(resp, 400, code="invalid_value", param=None)
    assert client.app[BUDGET].used == 0  # every refused body gave its reservation back


async def test_expiry_hides_the_file_and_the_sweep_deletes_it(make_client):
    client = await make_client()
    resp = await upload(
        client,
        b"short-lived",
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": 1},
    )
    obj = await resp.json()
    assert obj["expires_at"] - obj["created_at"] == 1
    await asyncio.sleep(1.5)
    resp = await client.get(f"/v1/files/{obj['id']}", headers=AUTH)
    await expect_error(resp, 404, code="file_not_found", param=None)
    assert (await (await client.get("/v1/files", headers=AUTH)).json())["data"] == []
    key = object_key(obj["id"])
    assert client.app[STORE].get_object(key) == b"short-lived"  # until the sweep
    assert client.app[FILES].sweep() == 1
    assert client.app[STORE].get_object(key) is None


async def test_the_upload_is_counted_in_the_memory_budget(make_client):
    client = await make_client(memory_budget_mb=1)  # 1 MiB
    resp = await upload(client, b"x" * (2 << 20))
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    # over the whole budget: no wait helps (an upload that fits would get Retry-After)
    assert resp.headers["x-should-retry"] == "false"
    resp = await upload(client, b"x" * 1000)
    assert resp.status == 200


async def test_a_key_keeps_at_most_its_stored_files_cap(make_client):
    """--max-stored-files-mb per key: past it an upload is a 429 that says what to do (no
    retry helps: x-should-retry false); another key is not affected; a delete makes room."""
    client = await make_client(api_keys=(KEY, OTHER_KEY), max_stored_files_mb=1.0)
    half = b"x" * (600 * 1024)
    first = await (await upload(client, half, purpose="vision")).json()
    resp = await upload(client, half, purpose="vision")
    err = await expect_error(
        resp, 429, type="rate_limit_exceeded", code="storage_limit_exceeded", param=None
    )
    assert "--max-stored-files-mb" in err["message"] and "DELETE" in err["message"]
    assert resp.headers["x-should-retry"] == "false" and "Retry-After" not in resp.headers
    assert (await upload(client, half, headers=OTHER, purpose="vision")).status == 200
    assert (await client.delete(f"/v1/files/{first['id']}", headers=AUTH)).status == 200
    assert (await upload(client, half, purpose="vision")).status == 200
