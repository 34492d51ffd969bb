"""Job logic without HTTP: the runner (claims only when the batcher has room, recovery after a
lease expired, requeue at a restart), progress, and webhooks (signing per the spec, retries with
backoff, giving up) against a real receiver on loopback, with a fake clock where time matters."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path

import pytest

from server.batching import Batcher
from server.jobs import start_jobs
from server.jobs.model import RUNNING, SUCCEEDED, JobRequest, Upload, new_job_id, upload_key
from server.jobs.webhooks import backoff, parse_secret, signature
from server.metrics import Metrics
from server.models.base import Row
from server.service import EditService
from server.service.admission import MemoryBudget
from server.service.progress import Progress, planned_steps
from server.storage import FileStore
from tests.helpers import IMG, MASK, FakeModel, config, registry
from tests.webhook_receiver import InvalidSignature, Receiver, verify

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


class Clock:
    """A fake ``time.time``: it moves only when the test says."""

    def __init__(self, now: float = 2_000_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatedModel(FakeModel):
    def __init__(self) -> None:
        super().__init__("gated")
        self.gate = threading.Event()

    def run(self, rows):
        self.started.set()
        self.gate.wait(30)
        return super().run(rows)


@pytest.fixture
async def parts(tmp_path: Path):
    """Build the app's parts around a model; ``(jobs, metrics, objects)`` after start_jobs."""
    started = []

    async def build(model=None, clock=None, budget=None, **settings):
        reg = registry(model) if model is not None else registry()
        name = model.name if model is not None else reg.default
        cfg = config(**{"max_batch_size": 1, **settings})
        metrics = Metrics()
        objects = FileStore(tmp_path / "files", 3600)
        batcher = Batcher(reg.models, max_batch_size=1, max_wait_ms=0, max_queue=8, metrics=metrics)
        edits = EditService(cfg, reg, batcher, objects, metrics)
        jobs = await start_jobs(
            cfg,
            objects=objects,
            edits=edits,
            batcher=batcher,
            budget=budget or MemoryBudget(1 << 30),
            metrics=metrics,
            draining=lambda: False,
            clock=clock or Clock(),
        )
        started.append((jobs, batcher))
        return jobs, metrics, objects, name

    yield build
    for jobs, batcher in started:
        await jobs.close()
        batcher.stop(1)


def queue_job(
    jobs, objects, model: str, now: float, webhook: str | None = None, queue_as: str | None = None
) -> str:
    """A queued job for ``model`` (listed under ``queue_as`` in the queue, if given: a model
    nobody here serves keeps it from this runner)."""
    job_id = new_job_id()
    uploads = (Upload("image", upload_key(job_id, 0)), Upload("mask", upload_key(job_id, 1)))
    objects.put_object(uploads[0].key, IMG, "application/octet-stream")
    objects.put_object(uploads[1].key, MASK, "application/octet-stream")
    jobs.store.create(
        {
            "id": job_id,
            "owner": "",
            "model": queue_as or model,
            "rows": 1,
            "request": JobRequest({"prompt": "p", "seed": "1", "model": model}, uploads).to_json(),
            "fingerprint": "f",
            "idempotency_key": None,
            "base_url": "http://127.0.0.1:1",
            "webhook_url": webhook,
            "created_at": now,
            "steps_total": 1,
        }
    )
    jobs.runner.wake()
    return job_id


async def until(predicate, timeout: float = 20.0):
    for _ in range(int(timeout / 0.05)):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_claims_only_while_the_batcher_has_room(parts):
    gated = GatedModel()
    clock = Clock()
    jobs, metrics, objects, model = await parts(gated, clock)
    first = queue_job(jobs, objects, model, clock.now)
    second = queue_job(jobs, objects, model, clock.now + 1)
    await asyncio.get_running_loop().run_in_executor(None, gated.started.wait, 10)
    await asyncio.sleep(3 * 0.5)  # several polls: the second stays queued (batch size 1, full)
    assert jobs.store.get(first, "", clock.now).status == RUNNING
    assert jobs.store.get(second, "", clock.now).status == "queued"
    assert metrics.jobs_claimed._value.get() == 1
    gated.gate.set()
    await until(lambda: jobs.store.get(second, "", clock.now).status == SUCCEEDED)
    done = jobs.store.get(first, "", clock.now)
    assert done.status == SUCCEEDED and metrics.jobs_claimed._value.get() == 2
    result = json.loads(objects.get_object(done.result_key))
    assert len(result["data"]) == 1 and result["size"] == "64x48"
    assert objects.get_object(upload_key(first, 0)) is None  # uploads go once the job has run


async def test_a_job_without_memory_room_goes_back_to_the_queue(parts):
    budget = MemoryBudget(1000)  # far too small for any edit: 429 inside the job
    clock = Clock()
    jobs, metrics, objects, model = await parts(clock=clock, budget=budget)
    job_id = queue_job(jobs, objects, model, clock.now)
    job = await until(lambda: (j := jobs.store.get(job_id, "", clock.now)).attempts >= 2 and j)
    assert job.status in ("queued", "running") and job.error is None  # released, not failed
    budget.total = 1 << 30
    job = await until(
        lambda: (j := jobs.store.get(job_id, "", clock.now)).status == SUCCEEDED and j
    )
    assert job.attempts >= 3


async def test_a_job_whose_replica_died_is_recovered_after_its_lease(parts):
    clock = Clock()
    jobs, metrics, objects, model = await parts(clock=clock, lease_seconds=30.0)
    job_id = queue_job(jobs, objects, model, clock.now, queue_as="elsewhere")
    # a replica that serves it claimed it, and died without renewing its lease
    from server.jobs.database import jobs as table

    with jobs.store.engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.id == job_id)
            .values(
                model=model, status=RUNNING, worker="dead", lease_until=clock.now + 30, attempts=1
            )
        )
    jobs.runner.wake()
    await asyncio.sleep(1.0)
    assert jobs.store.get(job_id, "", clock.now).worker == "dead"  # its lease still holds
    clock.now += 31
    job = await until(
        lambda: (j := jobs.store.get(job_id, "", clock.now)).status == SUCCEEDED and j
    )
    assert job.attempts == 2 and metrics.jobs_recovered._value.get() == 1


async def test_a_restart_requeues_what_was_running(parts, tmp_path):
    clock = Clock()
    jobs, metrics, objects, model = await parts(clock=clock)
    await jobs.runner.stop()  # this "process" dies with a job running
    job_id = queue_job(jobs, objects, model, clock.now)
    jobs.store.claim("old-process", [model], clock.now, 3600)
    jobs2, metrics2, _, _ = await parts(clock=clock)  # the same files folder: the same SQLite
    job = await until(
        lambda: (j := jobs2.store.get(job_id, "", clock.now)).status == SUCCEEDED and j
    )
    assert job.attempts == 2 and metrics2.jobs_recovered._value.get() == 1


async def test_webhooks_are_signed_retried_with_backoff_and_delivered(parts):
    clock = Clock()
    jobs, metrics, objects, model = await parts(
        clock=clock, webhook_secret=SECRET, webhook_backoff=4.0, webhook_allow_private=True
    )
    with Receiver([500, 500]) as receiver:
        job_id = queue_job(jobs, objects, model, clock.now, webhook=receiver.url)

        def retry_recorded(attempt: int):  # the failed attempt's next time is written
            job = jobs.store.get(job_id, "", clock.now)
            return job.webhook_attempts == attempt and (
                job.webhook_next_at <= clock.now + backoff(attempt, 4.0)
            )

        for attempt in (1, 2):
            await until(lambda attempt=attempt: retry_recorded(attempt))
            await asyncio.sleep(1.0)
            assert len(receiver.calls) == attempt  # the retry waits for its backoff
            clock.now += backoff(attempt, 4.0)  # 4 s, then 8 s
        await until(lambda: jobs.store.get(job_id, "", clock.now).webhook_state == "delivered")
        calls = receiver.calls
    assert len(calls) == 3 and len({c.headers["webhook-id"] for c in calls}) == 1
    for call in calls:
        assert call.path == "/hooks/inpaint?x=1"
        verify(SECRET, call.headers, call.body, now=clock.now)
        with pytest.raises(InvalidSignature):
            verify(SECRET, call.headers, call.body.replace(b"succeeded", b"failed"), now=clock.now)
    event = json.loads(calls[-1].body)
    assert event["type"] == "image.edit.job.succeeded" and event["data"]["id"] == job_id
    assert event["data"]["status"] == SUCCEEDED and "result" not in event["data"]
    deliveries = metrics.webhook_deliveries
    assert deliveries.labels("retry")._value.get() == 2
    assert deliveries.labels("success")._value.get() == 1


async def test_webhooks_give_up_after_the_configured_retries(parts):
    clock = Clock()
    jobs, metrics, objects, model = await parts(
        clock=clock, webhook_secret=SECRET, webhook_retries=1, webhook_allow_private=True
    )
    with Receiver([500] * 5) as receiver:
        job_id = queue_job(jobs, objects, model, clock.now, webhook=receiver.url)

        def retry_recorded() -> bool:  # attempt 1 failed, attempt 2 due after the backoff
            job = jobs.store.get(job_id, "", clock.now)
            return job.webhook_attempts == 1 and job.webhook_next_at < clock.now + 5

        await until(retry_recorded)
        clock.now += 60
        await until(lambda: jobs.store.get(job_id, "", clock.now).webhook_state == "failed")
        clock.now += 600
        await asyncio.sleep(1.0)
        assert len(receiver.calls) == 2
    assert metrics.webhook_deliveries.labels("failed")._value.get() == 1


def test_signature_matches_the_spec_example_and_secrets_are_checked():
    # the Standard Webhooks specification's published example
    key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sig = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_short", "whsec_!!!!"):
        with pytest.raises(ValueError, match="whsec_"):
            parse_secret(bad)
    assert [backoff(n, 2.0) for n in (1, 2, 3, 12)] == [2.0, 4.0, 8.0, 600.0]


def test_progress_counts_steps_against_the_planned_total():
    rows = [Row(image=None, mask=None, prompt="", seed=0, steps=10, strength=0.55)] * 2
    assert planned_steps(rows[0]) == 5
    assert planned_steps(Row(image=None, mask=None, prompt="", seed=0)) == 1  # single pass
    p = Progress()
    p.attach(rows)
    assert p.attached and p.snapshot() == (0, 10)
    for _ in range(11):  # a scheduler with one more model call than planned (PNDM)
        rows[0].on_step()
    assert p.snapshot() == (11, 11) and p.complete() == (11, 11)
