"""HTTP: ``/v1/batches`` in process (aiohttp test client, SQLite in the app's files folder):
a batch of JSON edit bodies runs to ``completed`` with OpenAI's output and error lines (the
results equal the synchronous route's), validation failures fail the batch with OpenAI's
``errors``, per-line errors go to the error file, cancel, per-key visibility, list pages, the
create request's checks, the completion window, and batch lines claimed after interactive jobs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import openai.types as oa
import pytest
import sqlalchemy as sa

from server.database import engine_url
from server.jobs.database import batches as batches_table
from server.jobs.database import jobs as jobs_table
from server.jobs.database import make_jobs_engine
from server.jobs.store import JobStore
from tests.helpers import AUTH, EDITS, IMG, KEY, MASK, FakeModel, edit_form, expect_error, registry
from tests.postgres import postgres  # noqa: F401 - the session fixture
from tests.server.http.test_files_routes import OTHER, OTHER_KEY, upload

TERMINAL = ("completed", "failed", "cancelled", "expired")


class GatedModel(FakeModel):
    """A single-pass model whose calls wait until the test opens the gate."""

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name)
        self.gate = threading.Event()

    def run(self, rows):
        self.started.set()
        self.gate.wait(30)
        return super().run(rows)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def edit_body(**fields) -> dict:
    return {
        "images": [{"image_url": data_url(IMG)}],
        "mask": {"image_url": data_url(MASK)},
        "prompt": "remove the red square",
        **fields,
    }


def request_line(custom_id, body=None, **over) -> dict:
    line = {"custom_id": custom_id, "method": "POST", "url": EDITS, "body": body or edit_body()}
    return {**line, **over}


def jsonl(lines) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


async def start_batch(client, lines, headers=AUTH, **extra) -> dict:
    resp = await upload(client, jsonl(lines), headers=headers)
    assert resp.status == 200, await resp.text()
    file_id = (await resp.json())["id"]
    body = {"input_file_id": file_id, "endpoint": EDITS, "completion_window": "24h", **extra}
    resp = await client.post("/v1/batches", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    batch = await resp.json()
    oa.Batch.model_validate(batch)  # what the SDK parses
    return batch


async def wait_batch(client, batch_id, until=TERMINAL, headers=AUTH) -> dict:
    for _ in range(600):
        resp = await client.get(f"/v1/batches/{batch_id}", headers=headers)
        assert resp.status == 200, await resp.text()
        batch = await resp.json()
        if batch["status"] in until:
            oa.Batch.model_validate(batch)
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {batch['status']}")


async def file_lines(client, file_id) -> list[dict]:
    resp = await client.get(f"/v1/files/{file_id}/content", headers=AUTH)
    assert resp.status == 200
    return [json.loads(x) for x in (await resp.read()).splitlines()]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """None (SQLite in the files folder) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").schema_url()


async def test_a_batch_runs_and_its_results_equal_the_sync_route(make_client, database_url):
    client = await make_client(database_url=database_url)
    lines = [
        request_line("first", edit_body(seed=5)),
        request_line("second", edit_body(seed=6, output_format="webp")),
    ]
    batch = await start_batch(client, lines, metadata={"run": "t1"})
    assert batch["status"] == "validating" and batch["id"].startswith("batch_")
    assert batch["endpoint"] == EDITS and batch["completion_window"] == "24h"
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    assert batch["metadata"] == {"run": "t1"}
    done = await wait_batch(client, batch["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert done["error_file_id"] is None and done["errors"] is None
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert done[stamp] >= done["created_at"], stamp
    assert done["failed_at"] is done["cancelled_at"] is done["expired_at"] is None
    resp = await client.get(f"/v1/files/{done['output_file_id']}", headers=AUTH)
    meta = await resp.json()
    assert meta["purpose"] == "batch_output" and meta["filename"].endswith("_output.jsonl")
    out = await file_lines(client, done["output_file_id"])
    assert [x["custom_id"] for x in out] == ["first", "second"]
    for item, fields in zip(
        out, ({"seed": "5"}, {"seed": "6", "output_format": "webp"}), strict=True
    ):
        assert item["id"].startswith("batch_req_") and item["error"] is None
        assert item["response"]["status_code"] == 200
        assert item["response"]["request_id"].startswith("req_")
        sync = edit_form(IMG, MASK, **fields)
        resp = await client.post(EDITS, data=sync.body, headers=sync.headers())
        expected = await resp.json()
        got = item["response"]["body"]
        assert got["data"] == expected["data"]
        assert {k: v for k, v in got.items() if k != "created"} == {
            k: v for k, v in expected.items() if k != "created"
        }


async def test_bad_lines_fail_the_batch_with_openai_errors(make_client):
    client = await make_client()
    lines = [
        request_line("ok"),
        b"{not json",
        request_line("wrong-url", url="/v1/images/generations"),
        request_line("wrong-method", method="GET"),
        request_line("ok"),  # duplicate custom_id
        {"method": "POST", "url": EDITS, "body": edit_body()},  # no custom_id
    ]
    batch = await start_batch(client, lines)
    done = await wait_batch(client, batch["id"])
    assert done["status"] == "failed" and done["failed_at"] is not None
    assert done["in_progress_at"] is None and done["output_file_id"] is None
    errors = done["errors"]
    assert errors["object"] == "list"
    got = [(e["line"], e["code"], e["param"]) for e in errors["data"]]
    assert got == [
        (2, "invalid_json_line", None),
        (3, "invalid_url", "url"),
        (4, "invalid_method", "method"),
        (5, "duplicate_custom_id", "custom_id"),
        (6, "missing_required_parameter", "custom_id"),
    ]
    assert EDITS in errors["data"][1]["message"]
    # an empty file fails too
    done = await wait_batch(client, (await start_batch(client, [b""]))["id"])
    assert done["status"] == "failed" and done["errors"]["data"][0]["code"] == "empty_file"


async def test_a_bad_request_is_an_error_line_not_a_failed_batch(make_client):
    client = await make_client()
    lines = [
        request_line("good", edit_body(seed=1)),
        request_line("bad-size", edit_body(size="7x7")),
        request_line("no-prompt", {"images": [{"image_url": data_url(IMG)}]}),
        request_line("unknown-model", edit_body(model="no-such-model")),
    ]
    done = await wait_batch(client, (await start_batch(client, lines))["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert [x["custom_id"] for x in await file_lines(client, done["output_file_id"])] == ["good"]
    errors = await file_lines(client, done["error_file_id"])
    assert [x["custom_id"] for x in errors] == ["bad-size", "no-prompt", "unknown-model"]
    statuses = [x["response"]["status_code"] for x in errors]
    assert statuses == [400, 400, 404]
    for item in errors:
        assert item["error"] is None and item["id"].startswith("batch_req_")
        err = item["response"]["body"]["error"]
        assert set(err) == {"message", "type", "param", "code"}
    params = [x["response"]["body"]["error"]["param"] for x in errors]
    assert params == ["size", "prompt", "model"]


async def test_create_checks(make_client):
    client = await make_client()
    file_id = (await (await upload(client, jsonl([request_line("a")]))).json())["id"]
    vision = (await (await upload(client, b"x", purpose="vision")).json())["id"]
    base = {"input_file_id": file_id, "endpoint": EDITS, "completion_window": "24h"}
    cases = [
        ({"endpoint": "/v1/chat/completions"}, 400, "invalid_value", "endpoint"),
        ({"completion_window": "1h"}, 400, "invalid_value", "completion_window"),
        ({"input_file_id": None}, 400, "missing_required_parameter", "input_file_id"),
        ({"metadata": {str(i): "v" for i in range(17)}}, 400, "invalid_value", "metadata"),
        ({"input_file_id": vision}, 400, "invalid_value", "input_file_id"),
        ({"input_file_id": "file-" + "0" * 32}, 404, "file_not_found", "input_file_id"),
    ]
    for change, status, code, param in cases:
        resp = await client.post("/v1/batches", json={**base, **change}, headers=AUTH)
        err = await expect_error(resp, status, code=code, param=param)
        if param == "endpoint":
            assert "'/v1/images/edits'" in err["message"]


async def test_a_batch_is_visible_to_its_key_only(make_client):
    client = await make_client(api_keys=(KEY, OTHER_KEY))
    batch = await start_batch(client, [request_line("a")])
    never = "batch_" + "0" * 32
    for path in (f"/v1/batches/{batch['id']}", f"/v1/batches/{never}"):
        resp = await client.get(path, headers=OTHER)
        await expect_error(resp, 404, code="batch_not_found", param=None)
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=OTHER)
    await expect_error(resp, 404, code="batch_not_found", param=None)
    assert (await (await client.get("/v1/batches", headers=OTHER)).json())["data"] == []
    # nor can the other key start a batch on this key's file
    body = {"input_file_id": batch["input_file_id"], "endpoint": EDITS, "completion_window": "24h"}
    resp = await client.post("/v1/batches", json=body, headers=OTHER)
    await expect_error(resp, 404, code="file_not_found", param="input_file_id")
    done = await wait_batch(client, batch["id"])
    assert done["status"] == "completed"
    resp = await client.get(f"/v1/files/{done['output_file_id']}/content", headers=OTHER)
    await expect_error(resp, 404, code="file_not_found", param=None)


async def test_list_pages(make_client):
    client = await make_client()
    ids = [(await start_batch(client, [request_line("a")]))["id"] for _ in range(3)]
    page = await (await client.get("/v1/batches?limit=2", headers=AUTH)).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    page2 = await (
        await client.get(f"/v1/batches?limit=2&after={page['last_id']}", headers=AUTH)
    ).json()
    assert [b["id"] for b in page2["data"]] == [ids[0]] and page2["has_more"] is False
    resp = await client.get("/v1/batches?limit=101", headers=AUTH)
    await expect_error(resp, 400, code="invalid_value", param="limit")


async def test_cancel_stops_queued_lines_and_keeps_what_finished(make_client):
    gated = GatedModel()
    client = await make_client(registry(gated), max_batch_size=1)
    lines = [request_line(f"r{i}", edit_body(model="gated")) for i in range(4)]
    batch = await start_batch(client, lines)
    await wait_batch(client, batch["id"], until=("in_progress",))
    assert await asyncio.to_thread(gated.started.wait, 10)
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=AUTH)
    assert resp.status == 200
    cancelling = await resp.json()
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    gated.gate.set()
    done = await wait_batch(client, batch["id"])
    assert done["status"] == "cancelled" and done["cancelled_at"] is not None
    counts = done["request_counts"]
    assert counts["total"] == 4 and counts["failed"] == 0 and counts["completed"] <= 1
    finished = await file_lines(client, done["output_file_id"]) if counts["completed"] else []
    unrun = await file_lines(client, done["error_file_id"])
    assert len(finished) + len(unrun) == 4
    assert all(x["response"] is None and x["error"]["code"] == "batch_cancelled" for x in unrun)
    assert {x["custom_id"] for x in unrun} >= {"r1", "r2", "r3"}
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=AUTH)
    assert (await resp.json())["status"] == "cancelled"  # cancelling again changes nothing
    finished_batch = await start_batch(client, [request_line("a")])
    await wait_batch(client, finished_batch["id"])
    resp = await client.post(f"/v1/batches/{finished_batch['id']}/cancel", headers=AUTH)
    await expect_error(resp, 409, code="batch_not_cancellable", param=None)


async def test_past_the_window_a_batch_expires_with_what_finished(make_client):
    from server.http.jobs import JOBS

    gated = GatedModel()
    client = await make_client(registry(gated), max_batch_size=1)
    lines = [request_line(f"r{i}", edit_body(model="gated")) for i in range(3)]
    batch = await start_batch(client, lines)
    await wait_batch(client, batch["id"], until=("in_progress",))
    assert await asyncio.to_thread(gated.started.wait, 10)
    engine = client.app[JOBS].store.engine
    with engine.begin() as conn:  # the window closes now (24 h are not waited for)
        conn.execute(
            sa.update(batches_table).where(batches_table.c.id == batch["id"]).values(expires_at=0)
        )
    await asyncio.sleep(1.0)
    gated.gate.set()
    done = await wait_batch(client, batch["id"])
    assert done["status"] == "expired" and done["expired_at"] is not None
    unrun = await file_lines(client, done["error_file_id"])
    assert {x["custom_id"] for x in unrun} >= {"r1", "r2"}
    assert all(x["error"]["code"] == "batch_expired" for x in unrun)


def test_batch_lines_are_claimed_after_interactive_jobs(tmp_path, database_url):
    store = JobStore(make_jobs_engine(engine_url(database_url, tmp_path)), 3600)

    def job(job_id, created_at, batch_id=None):
        store.create(
            {
                "id": job_id,
                "owner": "",
                "model": "m",
                "rows": 1,
                "request": "{}",
                "fingerprint": job_id,
                "base_url": "http://x",
                "created_at": created_at,
                "steps_total": 1,
                "batch_id": batch_id,
            }
        )

    job("job_batch_line_old", 1.0, batch_id="batch_x")
    job("job_interactive_new", 2.0)
    first = store.claim("w", ["m"], 10.0, 30.0)
    second = store.claim("w", ["m"], 10.0, 30.0)
    assert [first.job.id, second.job.id] == ["job_interactive_new", "job_batch_line_old"]
    store.close()


async def test_lines_may_name_uploaded_files_of_their_own_key(make_client):
    client = await make_client(api_keys=(KEY, OTHER_KEY))
    image = (await (await upload(client, IMG, purpose="vision", filename="a.png")).json())["id"]
    mask = (await (await upload(client, MASK, purpose="vision", filename="m.png")).json())["id"]
    theirs = (await (await upload(client, IMG, purpose="vision", headers=OTHER)).json())["id"]
    by_id = {"images": [{"file_id": image}], "mask": {"file_id": mask}, "prompt": "x", "seed": 2}
    lines = [
        request_line("by-id", by_id),
        request_line("by-url", edit_body(prompt="x", seed=2)),
        request_line("not-mine", {**by_id, "images": [{"file_id": theirs}]}),
    ]
    done = await wait_batch(client, (await start_batch(client, lines))["id"])
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    out = {x["custom_id"]: x for x in await file_lines(client, done["output_file_id"])}
    assert out["by-id"]["response"]["body"]["data"] == out["by-url"]["response"]["body"]["data"]
    [refused] = await file_lines(client, done["error_file_id"])
    assert refused["custom_id"] == "not-mine"
    assert refused["response"]["status_code"] == 400
    err = refused["response"]["body"]["error"]
    assert err["param"] == "image" and err["code"] == "invalid_file_id"


async def test_the_openapi_document_has_every_files_and_batches_route(make_client):
    client = await make_client()
    doc = await (await client.get("/openapi.json")).json()
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in client.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith(("/v1/files", "/v1/batches"))
        and r.method != "HEAD"
    }
    assert len(routes) == 9
    for path, method in routes:
        assert method in doc["paths"][path], (path, method)
    assert set(doc["components"]["schemas"]["Batch"]["properties"]) >= set(
        oa.Batch.model_fields
    ) - {"usage"}


def test_a_jobs_table_from_before_batches_gets_its_batch_column(tmp_path, database_url):
    """A database made by an earlier release: ``make_jobs_engine`` adds ``batch_id`` (and its
    index), so the claim's ordering works on it."""
    url = engine_url(database_url, tmp_path)
    old = sa.MetaData()
    cols = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in jobs_table.columns]
    sa.Table(jobs_table.name, old, *(c for c in cols if c.name != "batch_id"))
    engine = sa.create_engine(url)
    old.create_all(engine)
    engine.dispose()
    store = JobStore(make_jobs_engine(url), 3600)
    names = {c["name"] for c in sa.inspect(store.engine).get_columns(jobs_table.name)}
    assert "batch_id" in names
    assert store.claim("w", ["m"], 10.0, 30.0) is None
    store.close()


async def test_a_line_that_keeps_failing_with_a_server_error_goes_to_the_error_file(make_client):
    """A server error while a line is submitted retries the validation (the store or the
    database may be back next time), but a line that fails LINE_FAULTS times is an error line:
    the batch finishes instead of waiting in validation until its window closes."""
    from server.batches.runner import LINE_FAULTS
    from server.http.batches import BATCHES

    client = await make_client(lease_seconds=3)
    runner = client.app[BATCHES].service.runner
    prepare, calls = runner.prepare_line, []

    async def faulty(owner, body, reservation):
        if b"poison" in body:
            calls.append(1)
            raise RuntimeError("a fault of this line")
        return await prepare(owner, body, reservation)

    runner.prepare_line = faulty
    lines = [request_line("good", edit_body(seed=1)), request_line("bad", edit_body(user="poison"))]
    done = await wait_batch(client, (await start_batch(client, lines))["id"], until=TERMINAL)
    assert done["status"] == "completed" and len(calls) == LINE_FAULTS
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    (error,) = await file_lines(client, done["error_file_id"])
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 500
    assert error["response"]["body"]["error"]["code"] == "server_error"
