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
from server.jobs.model import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobRequest,
    Upload,
    new_job_id,
    result_key,
    upload_key,
)
from server.jobs.webhooks import backoff, parse_secret, request_head, signature
from server.metrics import Metrics
from server.models.base import Row
from server.service import EditService
from server.service.admission import MemoryBudget
from server.service.progress import Progress, planned_steps
from server.storage import FileStore
from tests.helpers import IMG, MASK, FakeModel, config, registry
from tests.webhook_receiver import DripReceiver, InvalidSignature, Receiver, verify

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
    jobs,
    objects,
    model: str,
    now: float,
    webhook: str | None = None,
    queue_as: str | None = None,
    owner: str = "",
    fields: dict | None = None,
) -> str:
    """A queued job for ``model`` (listed under ``queue_as`` in the queue, if given: a model
    nobody here serves keeps it from this runner), of ``owner``, with extra edit ``fields``."""
    job_id = new_job_id()
    uploads = (Upload("image", upload_key(job_id, 0)), Upload("mask", upload_key(job_id, 1)))
    objects.put_object(uploads[0].key, IMG, "application/octet-stream")
    objects.put_object(uploads[1].key, MASK, "application/octet-stream")
    jobs.store.create(
        {
            "id": job_id,
            "owner": owner,
            "model": queue_as or model,
            "rows": 1,
            "request": JobRequest(
                {"prompt": "p", "seed": "1", "model": model, **(fields or {})}, uploads
            ).to_json(),
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
    budget = MemoryBudget(1 << 30)
    budget.used = budget.total  # held by other requests: a retryable 429 inside the job
    clock = Clock()
    jobs, metrics, objects, model = await parts(clock=clock, budget=budget)
    job_id = queue_job(jobs, objects, model, clock.now)
    job = await until(lambda: (j := jobs.store.get(job_id, "", clock.now)).attempts >= 2 and j)
    assert job.status in ("queued", "running") and job.error is None  # released, not failed
    budget.used = 0
    job = await until(
        lambda: (j := jobs.store.get(job_id, "", clock.now)).status == SUCCEEDED and j
    )
    assert job.attempts >= 3


async def test_a_job_larger_than_the_whole_memory_budget_fails_at_once(parts):
    """No wait makes it fit: the job fails with the 429 that says so (x-should-retry false),
    instead of going back to the queue for ever."""
    clock = Clock()
    jobs, metrics, objects, model = await parts(clock=clock, budget=MemoryBudget(1000))
    job_id = queue_job(jobs, objects, model, clock.now)
    job = await until(lambda: (j := jobs.store.get(job_id, "", clock.now)).status == FAILED and j)
    assert job.attempts == 1 and "whole budget" in json.loads(job.error)["message"]


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


async def test_slow_receivers_of_one_key_neither_hold_an_attempt_nor_freeze_other_keys(parts):
    clock = Clock()
    jobs, metrics, objects, model = await parts(
        clock=clock, webhook_secret=SECRET, webhook_allow_private=True, webhook_timeout=2.0
    )
    with DripReceiver() as slow, Receiver() as good:
        for _ in range(6):  # more than a replica used to have delivery threads
            queue_job(jobs, objects, model, clock.now, webhook=slow.url, owner="attacker")
        await until(lambda: slow.connections >= 2)
        victim = queue_job(jobs, objects, model, clock.now, webhook=good.url, owner="victim")
        # the other key's webhook goes out while the dripping receivers still hold theirs
        await until(lambda: len(good.calls) == 1, timeout=30)
        await until(
            lambda: jobs.store.get(victim, "victim", clock.now).webhook_state == "delivered"
        )
        # each dripping attempt ends at --webhook-timeout as a whole (a retry is scheduled)
        retries = metrics.webhook_deliveries.labels("retry")
        await until(lambda: retries._value.get() >= 2, timeout=30)
        assert slow.connections <= 6  # one attempt per job: the retries wait for the backoff


async def test_a_stop_abandons_slow_attempts_and_leaves_them_due_again(parts):
    clock = Clock()
    jobs, metrics, objects, model = await parts(
        clock=clock, webhook_secret=SECRET, webhook_allow_private=True, webhook_timeout=60.0
    )
    with DripReceiver() as slow:
        job_ids = [
            queue_job(jobs, objects, model, clock.now, webhook=slow.url, owner=f"key{i}")
            for i in range(4)
        ]
        await until(lambda: slow.connections >= 4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await jobs.runner.stop()
        assert loop.time() - started < 20  # STOP_WAIT_S (0.4 s), not the 60 s attempts
        # nothing keeps sending after the stop (no thread left blocked on a receiver)
        await until(lambda: not [t for t in threading.enumerate() if t.name.startswith("webhook_")])
        for job_id in job_ids:  # claimed, not recorded: due again once the claim's hold ends
            job = jobs.store.get(job_id, f"key{job_ids.index(job_id)}", clock.now)
            assert job.webhook_state == "pending" and job.webhook_attempts == 1
            assert clock.now < job.webhook_next_at <= clock.now + 60.0 + 10.0


class SteppedModel(FakeModel):
    """A single-pass model that runs one call per permit the test gives (``permits``)."""

    def __init__(self) -> None:
        super().__init__("stepped")
        self.permits = threading.Semaphore(0)

    def run(self, rows):
        self.started.set()
        assert self.permits.acquire(timeout=30)
        return super().run(rows)


async def test_a_single_pass_jobs_progress_counts_images_and_reaches_its_total(parts):
    model = SteppedModel()
    clock = Clock()
    jobs, metrics, objects, name = await parts(model, clock)  # batch size 1: a call per image
    job_id = queue_job(jobs, objects, name, clock.now, fields={"n": "3"})

    def progress():
        job = jobs.store.get(job_id, "", clock.now)
        return job.steps_done, job.steps_total

    model.permits.release()  # the first image only
    await until(lambda: progress() == (1, 3))  # written with the next lease renewal
    model.permits.release(2)
    await until(lambda: jobs.store.get(job_id, "", clock.now).status == SUCCEEDED)
    assert progress() == (3, 3)


class CancelledWhileFinishing(FakeModel):
    """The client's DELETE lands as the model returns: the images are made, the job is still
    encoding them when the cancel is accepted."""

    def __init__(self) -> None:
        super().__init__("late-cancel")
        self.cancel = None  # set by the test: cancels the job through the store

    def run(self, rows):
        images = super().run(rows)
        self.cancel()
        return images


async def test_a_cancel_accepted_while_the_result_is_encoded_wins(parts):
    model = CancelledWhileFinishing()
    clock = Clock()
    jobs, metrics, objects, name = await parts(model, clock)
    job_id = new_job_id()  # queue_job's id is known only once queued: cancel by lookup
    accepted = []
    model.cancel = lambda: accepted.append(jobs.store.cancel(job_id, "", clock.now))
    uploads = (Upload("image", upload_key(job_id, 0)), Upload("mask", upload_key(job_id, 1)))
    objects.put_object(uploads[0].key, IMG, "application/octet-stream")
    objects.put_object(uploads[1].key, MASK, "application/octet-stream")
    jobs.store.create(
        {
            "id": job_id,
            "owner": "",
            "model": name,
            "rows": 1,
            "request": JobRequest({"prompt": "p", "seed": "1", "model": name}, uploads).to_json(),
            "fingerprint": "f",
            "idempotency_key": None,
            "base_url": "http://127.0.0.1:1",
            "webhook_url": None,
            "created_at": clock.now,
            "steps_total": 1,
        }
    )
    jobs.runner.wake()
    job = await until(
        lambda: (j := jobs.store.get(job_id, "", clock.now)).finished and j, timeout=30
    )
    assert accepted[0].status == RUNNING and accepted[0].cancel_requested  # what DELETE saw
    assert job.status == "cancelled" and job.result_key is None
    await until(lambda: objects.get_object(result_key(job_id)) is None)  # no result kept
    assert metrics.jobs_finished.labels("cancelled")._value.get() == 1
    assert metrics.jobs_finished.labels(SUCCEEDED)._value.get() == 0


async def test_stored_results_per_key_are_capped_oldest_removed_first(parts):
    clock = Clock()
    # a cap of one byte: each key keeps its newest result only (the newest always stays)
    jobs, metrics, objects, model = await parts(clock=clock, max_stored_results_mb=1 / 2**20)
    done = []
    for owner in ("alice", "alice", "bob", "alice"):
        job_id = queue_job(jobs, objects, model, clock.now, owner=owner)
        await until(lambda job_id=job_id, owner=owner: jobs.store.get(job_id, owner, clock.now))
        await until(
            lambda job_id=job_id, owner=owner: jobs.store.get(job_id, owner, clock.now).finished
        )
        done.append((job_id, owner))
        clock.now += 1
    sizes = {j: jobs.store.get(j, o, clock.now) for j, o in done}
    kept = {j for j, job in sizes.items() if job is not None}
    assert kept == {done[2][0], done[3][0]}  # alice's newest and bob's only one
    for job_id, _ in done[:2]:  # deleted at once, not at the next sweep
        await until(lambda job_id=job_id: objects.get_object(result_key(job_id)) is None)
    newest = sizes[done[3][0]]
    assert newest.status == SUCCEEDED and newest.result_bytes > 1000
    assert len(objects.get_object(result_key(done[3][0]))) == newest.result_bytes


def test_the_request_head_names_the_host_and_quotes_the_path():
    head = request_head(
        "https://[2001:db8::1]:8443/hooks/é?x=1", "2001:db8::1", 8443, "https", {"A": "b"}, 12
    ).decode()
    lines = head.split("\r\n")
    assert lines[:4] == [
        "POST /hooks/%C3%A9?x=1 HTTP/1.1",
        "Host: [2001:db8::1]:8443",
        "Content-Length: 12",
        "Connection: close",
    ]
    assert lines[4] == "A: b" and head.endswith("\r\n\r\n")
    plain = request_head("http://bücher.example/", "bücher.example", 80, "http", {}, 0).decode()
    assert "Host: xn--bcher-kva.example\r\n" in plain and plain.startswith("POST / HTTP/1.1")
