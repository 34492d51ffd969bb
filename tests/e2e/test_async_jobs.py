"""End to end, async jobs: the real server (``python -m server``) with the exported tiny SD
model, the official OpenAI SDK (the edit sent by ``client.images.edit`` with
``extra_headers={"Prefer": "respond-async"}``; polling and cancelling through the SDK's
``client.get`` / ``client.delete``), a real webhook receiver on loopback, SQLite across a
restart, and two replicas sharing a real PostgreSQL and S3 store, one of them SIGKILLed mid-job.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import time
import urllib.request

import numpy as np
import openai
import psycopg
import pytest

from tests.helpers import decode_b64, png
from tests.postgres import postgres  # noqa: F401 - the session fixture
from tests.webhook_receiver import DripReceiver, InvalidSignature, Receiver, verify

KEY = "sk-e2e-jobs"
OTHER_KEY = "sk-e2e-jobs-other"
SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-signing-key-0123456").decode()
ASYNC = {"Prefer": "respond-async"}
#: a job long enough to be caught mid-way: n x steps denoising steps at batch size 1
LONG = {"n": 10, "extra_body": {"steps": 150}}


def picture() -> tuple[bytes, bytes]:
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    img[..., 2] = 160
    mask = np.full((64, 64, 4), 255, np.uint8)
    mask[16:48, 16:48, 3] = 0
    return png(img), png(mask)


IMG, MASK = picture()


def submit(client: openai.OpenAI, headers=None, extra_body=None, prompt="a wooden bench", **kw):
    """The SDK's own edit call, asking for a job: (status, headers, job)."""
    raw = client.images.with_raw_response.edit(
        image=("photo.png", IMG, "image/png"),
        mask=("mask.png", MASK, "image/png"),
        prompt=prompt,
        extra_headers={**ASYNC, **(headers or {})},
        extra_body=extra_body,
        **kw,
    )
    return raw.status_code, raw.headers, json.loads(raw.http_response.text)


def sync_edit(client: openai.OpenAI, extra_body: dict, **kw) -> list[np.ndarray]:
    r = client.images.edit(
        image=("photo.png", IMG, "image/png"),
        mask=("mask.png", MASK, "image/png"),
        prompt="a wooden bench",
        extra_body=extra_body,
        **kw,
    )
    return [decode_b64(d.b64_json) for d in r.data]


def get_job(client: openai.OpenAI, job_id: str) -> dict:
    return client.get(f"/images/jobs/{job_id}", cast_to=object)


def wait_for(client, job_id: str, until=("succeeded", "failed", "cancelled"), timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = get_job(client, job_id)
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is still {job['status']} after {timeout} s")


def metric(base: str, name: str) -> float:
    """The sum of a metric's samples (all label values) on the server at ``base``."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


def wait_for_steps(base: str, above: float, timeout=60.0) -> float:
    """Block until the server has computed more denoising steps than ``above``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        steps = metric(base, "inpaint_denoising_steps_total")
        if steps > above:
            return steps
        time.sleep(0.02)
    raise AssertionError("the server computed no denoising step")


def images_of(job: dict) -> list[np.ndarray]:
    return [decode_b64(d["b64_json"]) for d in job["result"]["data"]]


@pytest.fixture(scope="module")
def models(tiny_model_fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_fp32, folder / "tiny-sd")
    return folder


def server_args(models, *extra) -> list[str]:
    return [
        "--models-dir",
        str(models),
        "--provider",
        "cpu",
        "--max-batch-size",
        "1",  # one row at a time: queued jobs wait in the database, long jobs stay long
        "--log-level",
        "WARNING",
        *extra,
    ]


@pytest.fixture(scope="module")
def served(start_server, models, tmp_path_factory):
    files = tmp_path_factory.mktemp("files")
    args = server_args(
        models,
        *("--api-key", KEY, "--api-key", OTHER_KEY, "--files-dir", str(files)),
        *("--webhook-secret", SECRET, "--webhook-allow-private", "--webhook-backoff", "0.2"),
    )
    return start_server(args, key=KEY, timeout=120)


def test_202_location_and_polling_give_the_sync_routes_image(served):
    srv, client = served
    status, headers, job = submit(client, extra_body={"seed": 42, "steps": 12})
    assert status == 202, job
    assert headers["location"] == f"/v1/images/jobs/{job['id']}"
    assert headers["preference-applied"] == "respond-async"
    assert job["status"] in ("queued", "running") and job["model"] == "tiny-sd"
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    # the tiny model's PNDM scheduler makes 12 steps in 13 UNet calls
    assert done["progress"]["steps_done"] == done["progress"]["steps_total"] >= 12
    result = done["result"]
    assert set(result) >= {"created", "data", "background", "output_format", "size", "usage"}
    assert result["size"] == "64x64" and result["output_format"] == "png"
    [sync] = sync_edit(client, {"seed": 42, "steps": 12})
    assert np.array_equal(images_of(done)[0], sync)


def test_another_key_gets_404_and_no_key_401(served):
    srv, client = served
    _, _, job = submit(client, extra_body={"steps": 2})
    other = openai.OpenAI(base_url=srv.base + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        other.get(f"/images/jobs/{job['id']}", cast_to=object)
    assert missing.value.body["code"] == "job_not_found"
    with pytest.raises(openai.NotFoundError):
        other.delete(f"/images/jobs/{job['id']}", cast_to=object)
    anonymous = openai.OpenAI(base_url=srv.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.get(f"/images/jobs/{job['id']}", cast_to=object)
    assert wait_for(client, job["id"])["status"] == "succeeded"


def test_idempotency_key_gives_the_same_job_and_refuses_another_body(served):
    srv, client = served
    key = {"Idempotency-Key": f"e2e-{time.time_ns()}"}
    s1, _, first = submit(client, headers=key, extra_body={"steps": 2})
    s2, _, second = submit(client, headers=key, extra_body={"steps": 2})
    assert (s1, s2) == (202, 202) and first["id"] == second["id"]
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        submit(client, headers=key, extra_body={"steps": 3})
    assert reused.value.status_code == 422
    assert reused.value.body["code"] == "idempotency_key_reused"
    assert wait_for(client, first["id"])["status"] == "succeeded"


def test_delete_cancels_a_long_job_and_its_steps_stop(served):
    srv, client = served
    before = metric(srv.base, "inpaint_denoising_steps_total")
    _, _, job = submit(client, **LONG)
    wait_for_steps(srv.base, before)  # it is denoising now
    cancelled = client.delete(f"/images/jobs/{job['id']}", cast_to=object)
    assert cancelled["status"] == "cancelled", cancelled
    stopped_at = metric(srv.base, "inpaint_denoising_steps_total")
    time.sleep(1.0)
    assert metric(srv.base, "inpaint_denoising_steps_total") == stopped_at  # no more steps
    final = get_job(client, job["id"])
    assert final["status"] == "cancelled" and "result" not in final
    assert final["progress"]["steps_done"] < final["progress"]["steps_total"] == 10 * 150
    assert metric(srv.base, 'inpaint_jobs_finished_total{status="cancelled"}') >= 1


def test_webhook_is_signed_and_retried_after_two_500s(served):
    srv, client = served
    with Receiver([500, 500]) as receiver:
        _, _, job = submit(client, extra_body={"steps": 2, "webhook_url": receiver.url})
        calls = receiver.wait(3, timeout=60)
    assert len(calls) == 3, calls
    assert len({c.headers["webhook-id"] for c in calls}) == 1  # one event, three attempts
    for call in calls:
        verify(SECRET, call.headers, call.body)
        tampered = call.body.replace(b'"succeeded"', b'"failed"')
        assert tampered != call.body
        with pytest.raises(InvalidSignature):
            verify(SECRET, call.headers, tampered)
        with pytest.raises(InvalidSignature):
            verify("whsec_" + base64.b64encode(b"x" * 32).decode(), call.headers, call.body)
    # exponential backoff: 0.2 s, then 0.4 s (lower bounds: load only makes gaps longer)
    assert calls[1].at - calls[0].at >= 0.2 and calls[2].at - calls[1].at >= 0.4
    event = json.loads(calls[0].body)
    assert event["type"] == "image.edit.job.succeeded" and event["data"]["id"] == job["id"]
    done = wait_for(client, job["id"])
    for _ in range(50):
        if get_job(client, job["id"])["webhook"]["status"] == "delivered":
            break
        time.sleep(0.1)
    assert get_job(client, job["id"])["webhook"] == {
        "url": receiver.url,
        "status": "delivered",
        "attempts": 3,
    }
    assert done["status"] == "succeeded"
    assert metric(srv.base, 'inpaint_webhook_deliveries_total{result="retry"}') >= 2


@pytest.mark.slow
def test_a_restart_keeps_queued_jobs_and_completes_them(start_server, models, tmp_path_factory):
    """SQLite in --files-dir: the process is SIGKILLed with one job running and one queued;
    after a restart both complete, the queued one with the same image as the sync route."""
    files = tmp_path_factory.mktemp("restart-files")
    args = server_args(models, "--api-key", KEY, "--files-dir", str(files))
    srv, client = start_server(args, key=KEY, timeout=120)
    _, _, running = submit(client, **LONG)
    _, _, queued = submit(client, extra_body={"seed": 9, "steps": 12})
    wait_for_steps(srv.base, 0)
    assert get_job(client, queued["id"])["status"] == "queued"
    srv.proc.kill()  # SIGKILL: no chance to put the running job back
    srv.proc.wait(10)
    srv2, client2 = start_server(args, key=KEY, timeout=120)
    first = wait_for(client2, running["id"])
    second = wait_for(client2, queued["id"])
    assert first["status"] == second["status"] == "succeeded"
    assert first["attempts"] == 2 and second["attempts"] == 1
    assert metric(srv2.base, "inpaint_jobs_recovered_total") == 1
    [sync] = sync_edit(client2, {"seed": 9, "steps": 12})
    assert np.array_equal(images_of(second)[0], sync)


@pytest.fixture
def s3_env(s3_server):
    with pytest.MonkeyPatch.context() as mp:  # the children copy the environment at start
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        yield s3_server


@pytest.mark.slow
def test_two_replicas_on_postgresql_one_killed_mid_job(start_server, models, s3_env, request):
    """Two servers share PostgreSQL (jobs) and S3 (uploads, results). The one running a job is
    SIGKILLed mid-way; the other claims it once the lease (3 s) has expired and makes the
    same image (the seed, drawn at submission, is pinned in the job)."""
    database = request.getfixturevalue("postgres").schema_url()
    args = server_args(
        models,
        *("--api-key", KEY, "--database-url", database, "--lease-seconds", "3"),
        *("--s3-bucket", s3_env.bucket, "--s3-prefix", f"jobs-{time.time_ns()}/"),
        *("--s3-endpoint-url", s3_env.endpoint, "--s3-addressing-style", "path"),
    )
    a, client_a = start_server(args, key=KEY, timeout=120)
    b, client_b = start_server(args, key=KEY, timeout=120)
    _, _, job = submit(client_a, n=3, extra_body={"steps": 150})  # no seed: one is drawn
    with psycopg.connect(database) as conn:
        for _ in range(200):
            worker, request = conn.execute(
                "SELECT worker, request FROM inpaint_jobs WHERE id = %s", (job["id"],)
            ).fetchone()
            if worker is not None:
                break
            time.sleep(0.05)
    holder, survivor = (a, b) if int(worker.rsplit("-", 2)[1]) == a.pid else (b, a)
    survivor_client = client_b if survivor is b else client_a
    wait_for_steps(holder.base, 0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.wait(10)
    done = wait_for(survivor_client, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert metric(survivor.base, "inpaint_jobs_recovered_total") == 1
    seed = int(json.loads(request)["fields"]["seed"])
    sync = sync_edit(survivor_client, {"seed": seed, "steps": 150}, n=3)
    for got, want in zip(images_of(done), sync, strict=True):
        assert np.array_equal(got, want)


@pytest.mark.slow
def test_sigterm_exits_promptly_with_webhooks_stuck_on_slow_receivers(
    start_server, models, tmp_path_factory
):
    """Receivers that answer one byte every 0.3 s forever: the process still exits soon after
    SIGTERM (their attempts are abandoned, to be sent again later), not when they finish."""
    files = tmp_path_factory.mktemp("drip-files")
    args = server_args(
        models,
        *("--api-key", KEY, "--files-dir", str(files), "--shutdown-grace", "2"),
        *("--webhook-secret", SECRET, "--webhook-allow-private", "--webhook-timeout", "600"),
    )
    srv, client = start_server(args, key=KEY, timeout=120)
    with DripReceiver() as slow:
        for _ in range(4):
            submit(client, extra_body={"steps": 1, "webhook_url": slow.url})
        assert slow.wait(2, timeout=120) >= 2  # attempts in flight, held by the receiver
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        assert time.monotonic() - started < 30
