"""End to end: the Batch API through the official SDKs against the real server (``python -m
server``): openai-python (``files.create``, ``batches.create/retrieve/cancel``,
``files.content``) and openai-node (the same calls, ``tests/e2e/node/batch.js``). A two-line
batch's results equal the same edits made synchronously with the same seeds. And a batch
survives a SIGKILL with its lines half done: a restart (SQLite in ``--files-dir``) and the loss
of one of two replicas (PostgreSQL and S3), with the tiny SD model."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import time

import openai
import psycopg
import pytest

from tests.e2e import node_sdk
from tests.e2e.test_async_jobs import metric, s3_env, server_args, wait_for_steps  # noqa: F401
from tests.helpers import KEY, alpha_mask, default_box, png, scene
from tests.postgres import postgres  # noqa: F401 - the session fixture

EDITS = "/v1/images/edits"
SEEDS = (3, 4)
W, H = 96, 64
BOX = default_box(W, H)
IMG, MASK = png(scene(W, H)), png(alpha_mask(W, H, BOX))
TERMINAL = ("completed", "failed", "cancelled", "expired")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def batch_input(seeds=SEEDS, **fields) -> bytes:
    """One line per seed: the JSON edit body (data URLs) of the same edit."""
    lines = []
    for seed in seeds:
        body = {
            "images": [{"image_url": data_url(IMG)}],
            "mask": {"image_url": data_url(MASK)},
            "prompt": "remove the red square",
            "seed": seed,
            **fields,
        }
        lines.append({"custom_id": f"seed-{seed}", "method": "POST", "url": EDITS, "body": body})
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def sync_b64(client: openai.OpenAI, seed: int, **extra) -> list[str]:
    result = client.images.edit(
        image=("photo.png", IMG, "image/png"),
        mask=("mask.png", MASK, "image/png"),
        prompt="remove the red square",
        extra_body={"seed": seed, **extra},
    )
    return [d.b64_json for d in result.data]


def wait_batch(client: openai.OpenAI, batch_id: str, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")


def outputs(text: str) -> dict[str, list[str]]:
    """custom_id -> the b64 images of an output file's lines (each a 200)."""
    got = {}
    for line in text.splitlines():
        item = json.loads(line)
        assert item["error"] is None and item["response"]["status_code"] == 200, item
        got[item["custom_id"]] = [d["b64_json"] for d in item["response"]["body"]["data"]]
    return got


@pytest.fixture(scope="module")
def served(start_server, tmp_path_factory):
    """The built-in model (fast), the test key."""
    models = tmp_path_factory.mktemp("models")
    return start_server(
        ["--api-key", KEY, "--models-dir", str(models), "--log-level", "WARNING"],
        key=KEY,
        ready_s=60,
        stop_s=10,
    )


def test_python_sdk_batch_equals_the_sync_edits(served):
    _, client = served
    uploaded = client.files.create(file=("edits.jsonl", batch_input()), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.status == "processed"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=EDITS,
        completion_window="24h",
        metadata={"test": "python"},
    )
    assert batch.status == "validating" and batch.metadata == {"test": "python"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 2 and done.request_counts.completed == 2
    assert done.error_file_id is None
    text = client.files.content(done.output_file_id).text
    got = outputs(text)
    assert got == {f"seed-{s}": sync_b64(client, s) for s in SEEDS}
    assert [b.id for b in client.batches.list(limit=10)][0] == batch.id


def test_python_sdk_cancel(served):
    _, client = served
    # many lines at a size that takes a while to validate: the cancel lands before the end
    lines = batch_input(seeds=range(40), size="512x512")
    uploaded = client.files.create(file=("many.jsonl", lines), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=EDITS, completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    if done.error_file_id is None:  # cancelled before its file was read: no line recorded
        assert counts.total == counts.completed == 0 and done.output_file_id is None
    else:  # the lines that did not run are in the error file
        assert counts.total == 40 and counts.completed < 40
        errors = client.files.content(done.error_file_id).text.splitlines()
        assert len(errors) == 40 - counts.completed
        assert all(json.loads(x)["error"]["code"] == "batch_cancelled" for x in errors)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)


@pytest.mark.skipif(node_sdk.missing() is not None, reason=node_sdk.missing() or "")
def test_node_sdk_batch_equals_the_sync_edits(served, tmp_path):
    server, client = served
    path = tmp_path / "edits.jsonl"
    path.write_bytes(batch_input())
    done = node_sdk.run_node("batch.js", server.base + "/v1", KEY, str(path))
    result = json.loads(done.stdout)
    batch = result["batch"]
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert outputs(result["output"]) == {f"seed-{s}": sync_b64(client, s) for s in SEEDS}


@pytest.fixture(scope="module")
def tiny_models(tiny_model_fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_fp32, folder / "tiny-sd")
    return folder


@pytest.mark.slow
def test_a_batch_survives_a_restart_with_lines_half_done(
    start_server, tiny_models, tmp_path_factory
):
    """SQLite in --files-dir, one row at a time: SIGKILL while the first line runs and the
    others wait; after the restart the batch completes, every line equal to the sync edit."""
    files = tmp_path_factory.mktemp("batch-restart")
    args = server_args(tiny_models, "--api-key", KEY, "--files-dir", str(files))
    srv, client = start_server(args, key=KEY, timeout=120)
    seeds = (11, 12, 13)
    lines = batch_input(seeds=seeds, steps=40)
    uploaded = client.files.create(file=("edits.jsonl", lines), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=EDITS, completion_window="24h"
    )
    wait_for_steps(srv.base, 0)
    mid = client.batches.retrieve(batch.id)
    # the first line may run while the others are still being validated (queued one by one)
    assert mid.status in ("validating", "in_progress") and mid.request_counts.completed < 3
    srv.proc.kill()
    srv.proc.wait(10)
    srv2, client2 = start_server(args, key=KEY, timeout=120)
    done = wait_batch(client2, batch.id, timeout=300)
    assert done.status == "completed", done
    assert done.request_counts.total == 3 and done.request_counts.completed == 3
    assert metric(srv2.base, "inpaint_jobs_recovered_total") >= 1
    got = outputs(client2.files.content(done.output_file_id).text)
    assert got == {f"seed-{s}": sync_b64(client2, s, steps=40) for s in seeds}


@pytest.mark.slow
def test_two_replicas_on_postgresql_one_killed_mid_batch(start_server, tiny_models, request):
    """Two servers share PostgreSQL and S3. The one running a line of the batch is SIGKILLed;
    the other claims that line once its lease (3 s) expired, runs the rest and finalizes the
    batch: every line equal to the sync edit."""
    database = request.getfixturevalue("postgres").schema_url()
    s3 = request.getfixturevalue("s3_env")
    args = server_args(
        tiny_models,
        *("--api-key", KEY, "--database-url", database, "--lease-seconds", "3"),
        *("--s3-bucket", s3.bucket, "--s3-prefix", f"batches-{time.time_ns()}/"),
        *("--s3-endpoint-url", s3.endpoint, "--s3-addressing-style", "path"),
    )
    a, client_a = start_server(args, key=KEY, timeout=120)
    b, client_b = start_server(args, key=KEY, timeout=120)
    seeds = (21, 22)
    uploaded = client_a.files.create(
        file=("e.jsonl", batch_input(seeds, steps=60)), purpose="batch"
    )
    batch = client_a.batches.create(
        input_file_id=uploaded.id, endpoint=EDITS, completion_window="24h"
    )
    with psycopg.connect(database) as conn:
        for _ in range(600):
            row = conn.execute(
                "SELECT worker FROM inpaint_jobs WHERE batch_id = %s AND worker IS NOT NULL",
                (batch.id,),
            ).fetchone()
            if row is not None:
                break
            time.sleep(0.05)
    assert row is not None, "no line of the batch started"
    holder, survivor = (a, b) if int(row[0].rsplit("-", 2)[1]) == a.pid else (b, a)
    survivor_client = client_b if survivor is b else client_a
    wait_for_steps(holder.base, 0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.wait(10)
    done = wait_batch(survivor_client, batch.id, timeout=300)
    assert done.status == "completed", done
    assert done.request_counts.completed == 2
    assert metric(survivor.base, "inpaint_jobs_recovered_total") >= 1
    got = outputs(survivor_client.files.content(done.output_file_id).text)
    assert got == {f"seed-{s}": sync_b64(survivor_client, s, steps=60) for s in seeds}
