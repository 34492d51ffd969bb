"""HTTP: every error answer says whether a retry can succeed, the way the official SDKs read it
(openai-python's and openai-node's ``_should_retry``): ``x-should-retry: false`` on failures the
same request meets again (the deadline 504, validation, 404, 409, a request that can never fit),
``Retry-After`` on each retryable 429/503, and no ``false`` where a retry can help. Also the
per-user 429 naming the field the user id came from, and the CORS exposure of the header."""

from __future__ import annotations

import asyncio

import pytest

from server.errors import APIError, sdk_retries
from server.http.state import STATE
from tests.helpers import (
    AUTH,
    EDITS,
    IMG,
    MASK,
    FakeModel,
    edit_form,
    edit_ok,
    expect_error,
    post_edit,
    registry,
)


def should_retry(resp) -> str | None:
    return resp.headers.get("x-should-retry")


async def test_the_deadline_504_says_do_not_retry(make_client):
    slow = FakeModel("slow", delay=1.0)
    cl = await make_client(reg=registry(slow), request_timeout=0.2)
    resp = await post_edit(cl, edit_form(IMG, MASK, model="slow"))
    err = await expect_error(resp, 504, type="timeout", code="timeout", param=None)
    assert "fewer images" in err["message"]
    assert should_retry(resp) == "false"
    assert "Retry-After" not in resp.headers


async def test_a_full_queue_says_when(make_client):
    slow = FakeModel("slow", delay=1.0)
    cl = await make_client(reg=registry(slow), max_queue=2, max_batch_size=1)
    # one row runs, its second waits in the queue: a request of 2 rows fits an empty queue
    # (so it is not refused for good) but not this one
    first = asyncio.ensure_future(post_edit(cl, edit_form(IMG, MASK, model="slow", n=2)))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 5)
    resp = await post_edit(cl, edit_form(IMG, MASK, model="slow", n=2))
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert int(resp.headers["Retry-After"]) >= 1
    assert should_retry(resp) is None  # the SDKs retry a 429 by themselves, after Retry-After
    assert (await first).status == 200


async def test_a_request_larger_than_the_queue_is_not_retried(make_client):
    """It would be refused by an idle server too: waiting cannot help."""
    cl = await make_client(max_queue=2)
    resp = await post_edit(cl, edit_form(IMG, MASK, n=3))
    err = await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert "Lower n or size" in err["message"]
    assert should_retry(resp) == "false"
    assert "Retry-After" not in resp.headers
    assert (await post_edit(cl, edit_form(IMG, MASK, n=2))).status == 200


async def test_rate_limits_say_when(make_client):
    cl = await make_client(rate_limit=1)
    await edit_ok(cl, edit_form(IMG, MASK))
    resp = await post_edit(cl, edit_form(IMG, MASK))
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    # the window (60 s) opened by the first request, a moment ago: not the 1 s default
    assert 50 <= int(resp.headers["Retry-After"]) <= 60
    assert should_retry(resp) is None


async def test_shutting_down_says_when(make_client):
    cl = await make_client()
    cl.app[STATE].draining = True
    resp = await post_edit(cl, edit_form(IMG, MASK))
    await expect_error(resp, 503, type="server_error", code="shutting_down", param=None)
    assert int(resp.headers["Retry-After"]) >= 1
    assert should_retry(resp) is None  # the SDKs retry a 503 by themselves
    ready = await cl.get("/ready")  # a probe, with the same advice
    assert ready.status == 503 and int(ready.headers["Retry-After"]) >= 1
    cl.app[STATE].draining = False


async def test_an_internal_fault_may_be_retried(make_client):
    broken = FakeModel("broken", error=RuntimeError("boom"))
    cl = await make_client(reg=registry(broken))
    resp = await post_edit(cl, edit_form(IMG, MASK, model="broken"))
    assert resp.status == 500
    assert should_retry(resp) != "false"


@pytest.mark.parametrize(
    "method, path, headers, status",
    [
        ("GET", "/v1/models/dall-e-9", AUTH, 404),
        ("GET", "/v1/nope", AUTH, 404),
        ("GET", EDITS, AUTH, 405),
        ("GET", "/v1/models", {}, 401),
        ("GET", "/v1/models", {"Authorization": "Bearer sk-wrong"}, 401),
        ("POST", EDITS, {**AUTH, "Content-Encoding": "gzip"}, 415),
    ],
)
async def test_deterministic_failures_say_do_not_retry(client, method, path, headers, status):
    resp = await client.request(method, path, headers=headers, data=b"x")
    assert resp.status == status
    assert should_retry(resp) == "false"


async def test_a_body_over_the_limit_says_do_not_retry(make_client):
    cl = await make_client(max_body_mb=1)
    resp = await post_edit(cl, edit_form(IMG + b"\0" * (2 << 20), MASK))
    assert resp.status == 413
    assert should_retry(resp) == "false"


def test_the_advice_is_decided_once_by_status():
    """The defaults every raiser gets (``errors.APIError``), and what the SDKs do without it."""
    assert APIError(409, "finished", code="job_already_finished").headers == {
        "x-should-retry": "false"
    }
    assert APIError(422, "reused").headers == {"x-should-retry": "false"}
    assert APIError(429, "busy").headers == {"Retry-After": "1"}
    assert APIError(429, "busy", headers={"Retry-After": "7"}).headers == {"Retry-After": "7"}
    assert APIError(503, "later", retry_after_s=5).headers == {"Retry-After": "5"}
    assert APIError(500, "fault").headers == {}
    # a retryable status the SDKs would not retry on their own: say so explicitly
    assert APIError(400, "gone", retry=True).headers == {"x-should-retry": "true"}
    assert APIError(400, "bad").code == "invalid_value"  # every 400 has a code
    assert [s for s in (400, 404, 408, 409, 429, 500, 503, 504) if sdk_retries(s)] == [
        408, 409, 429, 500, 503, 504,
    ]  # fmt: skip


@pytest.mark.parametrize("field", ["safety_identifier", "user"])
async def test_the_per_user_limit_names_the_field_used(make_client, field):
    cl = await make_client(rate_limit_per_user=1)
    await edit_ok(cl, edit_form(IMG, MASK, **{field: "alice"}))
    resp = await post_edit(cl, edit_form(IMG, MASK, **{field: "alice"}))
    err = await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    other = ({"safety_identifier", "user"} - {field}).pop()
    assert f"end user ({field})" in err["message"] and f"({other})" not in err["message"]


async def test_cors_exposes_the_retry_headers(make_client):
    cl = await make_client(cors_origins=("https://app.example",))
    resp = await cl.get("/v1/models/nope", headers={**AUTH, "Origin": "https://app.example"})
    assert resp.status == 404
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-should-retry", "retry-after"} <= exposed
    assert should_retry(resp) == "false"
