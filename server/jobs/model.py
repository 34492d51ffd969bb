"""The job: its states, ids and object keys, the stored request, and the object clients see.

A job runs one ``POST /v1/images/edits`` request later. What is stored:

- in the database (``database.jobs``): the state, the lease, progress, the request's text fields
  (seed pinned at submission, so a rerun after a crash gives the same image), the webhook;
- in the object store (``server/storage``, generic objects, expiring like ``url`` files): the
  request's uploads until the job has run (``jobs/<id>/upload-<i>``) and the result
  (``jobs/<id>/result.json``: exactly the body the synchronous route returns).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol import EDIT_FIELDS

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
#: a job id: "job_" + 128 random bits in hex (ids are looked up only in this exact shape)
JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
#: seeds pinned at submission are drawn as the synchronous route draws them
SEED_RANGE = 2**31
#: the extension field naming the webhook (kept out of the stored edit fields)
WEBHOOK_FIELD = "webhook_url"


def new_job_id() -> str:
    return f"job_{secrets.token_hex(16)}"


def upload_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/upload-{index}"


def result_key(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"


@dataclass(frozen=True)
class Upload:
    """One uploaded file of a job: the form field it came in (``image``, ``image[]``, ``mask``,
    ``markup``) and where its bytes are (an object key)."""

    field: str
    key: str


@dataclass(frozen=True)
class JobRequest:
    """What reruns the request: its text fields (as a form carries them, seed pinned) and its
    uploads in order."""

    fields: dict[str, str]
    uploads: tuple[Upload, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"fields": self.fields, "uploads": [[u.field, u.key] for u in self.uploads]}
        )

    @classmethod
    def from_json(cls, text: str) -> JobRequest:
        doc = json.loads(text)
        return cls(dict(doc["fields"]), tuple(Upload(f, k) for f, k in doc["uploads"]))


def edit_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """The fields that define the edit, the ones the protocol reads (``EDIT_FIELDS``): what a
    job stores. Unknown fields (the edit ignores them) and the webhook (the job's, not the
    edit's) are left out, so a request padded with fields costs no database space."""
    return {k: v for k, v in fields.items() if k in EDIT_FIELDS}


def pin_seed(fields: dict[str, str]) -> dict[str, str]:
    """``fields`` with a seed: the request's own, else one drawn now (a blank value is no
    seed, as the protocol reads it)."""
    if (fields.get("seed") or "").strip():
        return fields
    return {**fields, "seed": str(random.randrange(SEED_RANGE))}


def fingerprint(fields: Mapping[str, str], files: list[tuple[str, bytes]]) -> str:
    """sha256 hex of a request's content, independent of its encoding (multipart boundary,
    field order, JSON or form): the same request sent twice (webhook included) has the same
    fingerprint."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(fields.items())).encode())
    for field, data in files:
        h.update(f"\0{field}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class JobRecord:
    """One row of ``database.jobs``, as read."""

    id: str
    owner: str
    model: str
    rows: int
    status: str
    request: str
    fingerprint: str
    idempotency_key: str | None
    base_url: str
    webhook_url: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    worker: str | None
    lease_until: float | None
    attempts: int
    cancel_requested: bool
    steps_done: int
    steps_total: int
    result_key: str | None
    error: str | None
    webhook_state: str | None
    webhook_attempts: int
    webhook_next_at: float | None
    #: the stored result's size in bytes (succeeded jobs)
    result_bytes: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def public(job: JobRecord, result: dict | None = None) -> dict:
    """The job as ``GET /v1/images/jobs/{id}`` shows it (and webhooks carry, without ``result``).

    ``result``: the stored ``ImagesResponse`` body of a succeeded job; ``error``: the OpenAI
    error object (``message``, ``type``, ``param``, ``code``) of a failed one. Times are Unix
    seconds; ``progress`` counts denoising steps over all the request's images (a single-pass
    model counts one step per image)."""
    body: dict[str, Any] = {
        "id": job.id,
        "object": "image.edit.job",
        "status": job.status,
        "model": job.model,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "completed_at": _ts(job.finished_at),
        "expires_at": _ts(job.expires_at),
        "progress": {"steps_done": job.steps_done, "steps_total": job.steps_total},
        "attempts": job.attempts,
    }
    if job.cancel_requested and not job.finished:
        body["cancel_requested"] = True
    if job.webhook_url is not None:
        body["webhook"] = {
            "url": job.webhook_url,
            "status": job.webhook_state,
            "attempts": job.webhook_attempts,
        }
    if result is not None:
        body["result"] = result
    if job.error is not None:
        body["error"] = json.loads(job.error)
    return body
