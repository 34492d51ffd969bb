"""The job store (server/jobs/store.py) on both databases, SQLite in a temp folder and a real
PostgreSQL (tests/postgres.py), with a fake clock: times are passed in, so leases expire when
the test says so. Claims, leases, recovery, cancel, idempotency, webhooks, expiry, and two
claimers racing for the same queue."""

from __future__ import annotations

import threading

import pytest

from server.database import engine_url
from server.jobs.database import jobs, make_jobs_engine
from server.jobs.model import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRequest,
    Upload,
    new_job_id,
)
from server.jobs.store import IdempotencyMismatch, JobStore, QueueFull
from tests.postgres import postgres  # noqa: F401 - the session fixture

TTL = 3600.0
LEASE = 30.0
T0 = 1_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = engine_url(None, tmp_path)
    else:
        url = engine_url(request.getfixturevalue("postgres").schema_url(), tmp_path)
    s = JobStore(make_jobs_engine(url), TTL)
    yield s
    s.close()


def values(created_at: float, *, model="m", owner="alice", key=None, fp="f1", webhook=None):
    job_id = new_job_id()
    req = JobRequest({"prompt": "x", "seed": "7"}, (Upload("image", f"jobs/{job_id}/upload-0"),))
    return {
        "id": job_id,
        "owner": owner,
        "model": model,
        "rows": 1,
        "request": req.to_json(),
        "fingerprint": fp,
        "idempotency_key": key,
        "base_url": "http://127.0.0.1:1",
        "webhook_url": webhook,
        "created_at": created_at,
        "steps_total": 0,
    }


def add(store, created_at=T0, **kw):
    job, created = store.create(values(created_at, **kw))
    assert created and job.status == QUEUED
    return job


def test_claims_oldest_first_only_for_served_models(store):
    late = add(store, T0 + 2)
    early = add(store, T0 + 1)
    other = add(store, T0, model="other")
    c1 = store.claim("r1", ["m"], T0 + 5, LEASE)
    assert c1.job.id == early.id and not c1.recovered
    assert c1.job.status == RUNNING and c1.job.worker == "r1" and c1.job.attempts == 1
    assert c1.job.lease_until == T0 + 5 + LEASE and c1.job.started_at == T0 + 5
    assert store.claim("r1", ["m"], T0 + 5, LEASE).job.id == late.id
    assert store.claim("r1", ["m"], T0 + 5, LEASE) is None
    assert store.claim("r1", [], T0 + 5, LEASE) is None
    assert store.get(other.id, "alice", T0).status == QUEUED
    assert store.count_queued() == 1


def test_a_renewed_lease_is_kept_and_an_expired_one_is_reclaimed(store):
    job = add(store)
    store.claim("r1", ["m"], T0, LEASE)
    # renewed before expiry: nobody else can take it, even well past the first lease
    assert store.renew(job.id, "r1", T0 + 20, LEASE, 3, 10) == (True, False)
    assert store.claim("r2", ["m"], T0 + LEASE + 1, LEASE) is None
    got = store.get(job.id, "alice", T0)
    assert (got.steps_done, got.steps_total, got.lease_until) == (3, 10, T0 + 20 + LEASE)
    # r1 dies: no renewal; after the lease r2 claims it, as a recovery, attempt 2
    claim = store.claim("r2", ["m"], T0 + 20 + LEASE + 0.5, LEASE)
    assert claim.recovered and claim.job.worker == "r2" and claim.job.attempts == 2
    assert claim.job.steps_done == 0
    # the old holder can neither renew nor settle it any more
    assert store.renew(job.id, "r1", T0 + 60, LEASE, 9, 10) == (False, False)
    assert not store.finish(job.id, "r1", SUCCEEDED, T0 + 61, result_key="k")
    assert store.finish(job.id, "r2", SUCCEEDED, T0 + 62, result_key="k", steps=(10, 10))
    done = store.get(job.id, "alice", T0 + 62)
    assert done.status == SUCCEEDED and done.result_key == "k" and done.worker is None
    assert (done.finished_at, done.expires_at) == (T0 + 62, T0 + 62 + TTL)
    assert (done.steps_done, done.steps_total) == (10, 10)


def test_failure_keeps_the_error_and_expiry_hides_the_job(store):
    job = add(store)
    store.claim("r1", ["m"], T0, LEASE)
    err = {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}
    assert store.finish(job.id, "r1", FAILED, T0 + 1, error=err)
    assert store.get(job.id, "alice", T0 + 2).error == (
        '{"message": "bad", "type": "invalid_request_error", "param": "x", "code": null}'
    )
    assert store.get(job.id, "alice", T0 + 1 + TTL + 1) is None
    assert [j.id for j in store.expired(T0 + 1 + TTL + 1)] == [job.id]
    assert store.expired(T0 + 2) == []
    store.delete([job.id])
    assert store.expired(T0 + 10 * TTL) == []


def test_jobs_are_visible_to_their_owner_only(store):
    job = add(store, owner="alice")
    assert store.get(job.id, "bob", T0) is None
    assert store.cancel(job.id, "bob", T0) is None
    assert store.get(job.id, "alice", T0).id == job.id


def test_cancel_queued_at_once_running_by_request(store):
    queued = add(store, T0 + 1)
    running = add(store, T0)
    store.claim("r1", ["m"], T0, LEASE)
    assert store.cancel(queued.id, "alice", T0 + 2).status == CANCELLED
    assert store.claim("r1", ["m"], T0 + 2, LEASE) is None  # a cancelled job is never claimed
    asked = store.cancel(running.id, "alice", T0 + 2)
    assert asked.status == RUNNING and asked.cancel_requested
    assert store.renew(running.id, "r1", T0 + 3, LEASE, 1, 5) == (True, True)
    assert store.finish(running.id, "r1", CANCELLED, T0 + 4)
    assert store.cancel(running.id, "alice", T0 + 5).status == CANCELLED  # no change


def test_a_cancelled_job_whose_replica_died_is_settled_not_rerun(store):
    job = add(store)
    store.claim("r1", ["m"], T0, LEASE)
    store.cancel(job.id, "alice", T0 + 1)
    assert store.claim("r2", ["m"], T0 + LEASE + 1, LEASE) is None
    assert store.get(job.id, "alice", T0 + LEASE + 1).status == CANCELLED


def test_release_and_requeue_put_jobs_back(store):
    a = add(store, T0)
    b = add(store, T0 + 1)
    store.claim("r1", ["m"], T0, LEASE)
    store.claim("r1", ["m"], T0, LEASE)
    assert store.release(a.id, "r1") and not store.release(a.id, "r1")
    assert store.get(a.id, "alice", T0).status == QUEUED
    assert store.requeue_running() == 1  # b, left running by a "dead process"
    got = store.get(b.id, "alice", T0)
    assert got.status == QUEUED and got.worker is None and got.attempts == 1


def test_idempotency_key_same_request_same_job_other_request_refused(store):
    first = add(store, key="k-1", fp="same")
    again, created = store.create(values(T0 + 1, key="k-1", fp="same"))
    assert not created and again.id == first.id
    with pytest.raises(IdempotencyMismatch) as clash:
        store.create(values(T0 + 1, key="k-1", fp="different"))
    assert clash.value.job.id == first.id
    other_owner, created = store.create(values(T0 + 1, key="k-1", fp="same", owner="bob"))
    assert created and other_owner.id != first.id
    assert store.count_queued("alice") == 1 and store.count_queued() == 2


def test_webhooks_due_once_per_hold_then_recorded(store):
    job = add(store, webhook="https://example.com/hook")
    plain = add(store, T0 + 1)
    for _ in range(2):
        store.claim("r1", ["m"], T0, LEASE)
    store.finish(plain.id, "r1", SUCCEEDED, T0 + 2, result_key="k")
    assert store.claim_webhook(T0 + 2, 25) is None  # not finished yet / no webhook
    store.finish(job.id, "r1", SUCCEEDED, T0 + 3, result_key="k")
    hook = store.claim_webhook(T0 + 3, 25)
    assert hook.id == job.id and hook.webhook_attempts == 1 and hook.webhook_state == "pending"
    assert store.claim_webhook(T0 + 4, 25) is None  # held while it is being sent
    store.webhook_done(job.id, "pending", T0 + 10)
    assert store.claim_webhook(T0 + 9, 25) is None
    assert store.claim_webhook(T0 + 10, 25).webhook_attempts == 2
    store.webhook_done(job.id, "delivered")
    assert store.claim_webhook(T0 + 100, 25) is None
    assert store.get(job.id, "alice", T0 + 100).webhook_state == "delivered"


def test_two_claimers_never_take_the_same_job(store):
    jobs = [add(store, T0 + i) for i in range(12)]
    got: dict[str, list[str]] = {"r1": [], "r2": []}

    def claimer(name: str) -> None:
        while (claim := store.claim(name, ["m"], T0 + 100, LEASE)) is not None:
            got[name].append(claim.job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = got["r1"] + got["r2"]
    assert sorted(taken) == sorted(j.id for j in jobs)  # each exactly once
    assert len(set(taken)) == len(taken)


def test_jobs_queued_past_the_ttl_fail(store):
    old = add(store, T0)
    fresh = add(store, T0 + TTL)
    err = {"message": "gone", "type": "invalid_request_error", "param": None, "code": "x"}
    assert store.fail_stale(T0 + TTL + 1, err) == 1
    failed = store.get(old.id, "alice", T0 + TTL + 1)
    assert failed.status == FAILED and '"code": "x"' in failed.error
    assert store.get(fresh.id, "alice", T0 + TTL + 1).status == QUEUED


def test_the_queue_limit_holds_for_concurrent_submissions(store):
    """Count and insert are one step: 12 concurrent creators of one owner, limit 5."""
    created, refused = [], []
    start = threading.Barrier(12)

    def submit() -> None:
        start.wait(30)
        try:
            created.append(store.create(values(T0), max_queued=5)[0].id)
        except QueueFull as full:
            refused.append(full.queued)

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(created) == 5 and refused == [5] * 7
    assert store.count_queued("alice") == 5
    assert store.create(values(T0, owner="bob"), max_queued=5)[1]  # per owner


def test_an_expired_jobs_idempotency_key_starts_a_new_job(store):
    first = add(store, key="k-1", fp="same")
    store.claim("r1", ["m"], T0, LEASE)
    store.finish(first.id, "r1", SUCCEEDED, T0 + 1, result_key="k", result_bytes=10)
    later = T0 + 1 + TTL + 1  # expired, not swept yet
    assert store.get(first.id, "alice", later) is None
    assert store.find_idempotent("alice", "k-1", later) is None
    again, created = store.create(values(later, key="k-1", fp="same"))
    assert created and again.id != first.id and again.status == QUEUED
    replay, created = store.create(values(later + 1, key="k-1", fp="same"))
    assert not created and replay.id == again.id  # the new job replays from now on


def test_a_cancel_accepted_before_the_result_is_stored_wins(store):
    job = add(store, webhook="https://example.com/hook")
    store.claim("r1", ["m"], T0, LEASE)
    assert store.cancel(job.id, "alice", T0 + 1).cancel_requested  # the client's 202/200
    # the holder finishes encoding after that: the job still ends cancelled, without result
    assert store.finish(job.id, "r1", SUCCEEDED, T0 + 2, result_key="k", result_bytes=9) == (
        CANCELLED
    )
    done = store.get(job.id, "alice", T0 + 2)
    assert done.status == CANCELLED and done.result_key is None and done.result_bytes is None
    assert done.webhook_state == "pending"  # its webhook says cancelled
    plain = add(store, T0 + 3)
    store.claim("r1", ["m"], T0 + 3, LEASE)
    assert store.finish(plain.id, "r1", SUCCEEDED, T0 + 4, result_key="k2") == SUCCEEDED


def test_stored_results_per_key_keep_within_the_cap_oldest_out_first(store):
    def finished(at: float, size: int, owner: str = "alice"):
        job = add(store, at, owner=owner)
        store.claim("r1", ["m"], at, LEASE)
        store.finish(job.id, "r1", SUCCEEDED, at, result_key=f"k{at}", result_bytes=size)
        return job.id

    a, b = finished(T0, 40), finished(T0 + 1, 40)
    other = finished(T0 + 2, 500, owner="bob")
    assert store.evict_results("alice", 100, T0 + 3) == []
    c = finished(T0 + 3, 40)  # 120 bytes for alice: a, the oldest, goes
    assert [j.id for j in store.evict_results("alice", 100, T0 + 3)] == [a]
    assert store.get(a, "alice", T0 + 3) is None and store.get(b, "alice", T0 + 3) is not None
    huge = finished(T0 + 4, 300)  # alone over the cap: the newest is kept, all older go
    assert {j.id for j in store.evict_results("alice", 100, T0 + 4)} == {b, c}
    assert store.get(huge, "alice", T0 + 4).status == SUCCEEDED
    assert store.get(other, "bob", T0 + 4) is not None  # another key's results are its own
    line = finished(T0 + 5, 10)  # a batch's line: its batch collects it, never evicted
    with store.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == line).values(batch_id="batch_1"))
    finished(T0 + 6, 300)
    assert {j.id for j in store.evict_results("alice", 100, T0 + 6)} == {huge}
    assert store.get(line, "alice", T0 + 6).status == SUCCEEDED
    assert {j.id for j in store.expired(T0 + 6)} == {a, b, c, huge}
