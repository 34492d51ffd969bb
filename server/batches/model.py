"""The batch: statuses, ids, the stored row and the object clients see (OpenAI's ``Batch``).

Status transitions, as OpenAI's: ``validating`` -> ``in_progress`` -> ``finalizing`` ->
``completed``; ``validating`` -> ``failed`` (the input file is not a valid batch);
``validating``/``in_progress`` -> ``cancelling`` -> ``cancelled``; past the completion window
``in_progress`` -> ``finalizing`` -> ``expired`` (lines not run by then are in the error file
with code ``batch_expired``).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..jobs.database import BATCH_EVENTS

VALIDATING, FAILED, IN_PROGRESS, FINALIZING = "validating", "failed", "in_progress", "finalizing"
COMPLETED, EXPIRED, CANCELLING, CANCELLED = "completed", "expired", "cancelling", "cancelled"
TERMINAL = (FAILED, COMPLETED, EXPIRED, CANCELLED)
#: the one endpoint a batch runs, and the one completion window
ENDPOINT = "/v1/images/edits"
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
#: a batch id: "batch_" + 128 random bits in hex (looked up only in this exact shape)
BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
#: OpenAI's metadata bounds: 16 pairs, keys up to 64 characters, values up to 512
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class BatchRecord:
    """One row of ``database.batches``."""

    id: str
    owner: str
    status: str
    endpoint: str
    input_file_id: str
    completion_window: str
    base_url: str
    metadata: str | None
    errors: str | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int | None
    failed: int | None
    worker: str | None
    lease_until: float | None
    created_at: float
    in_progress_at: float | None
    expires_at: float | None
    finalizing_at: float | None
    completed_at: float | None
    failed_at: float | None
    expired_at: float | None
    cancelling_at: float | None
    cancelled_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BatchRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def public(batch: BatchRecord, counts: dict[str, int]) -> dict[str, Any]:
    """OpenAI's ``Batch`` object. ``counts``: ``{total, completed, failed}``. A batch past its
    window shows ``expired_at`` once it is ``expired`` (the time is recorded when the window
    closes, while its running lines stop)."""
    body: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": None,
        "errors": None if batch.errors is None else json.loads(batch.errors),
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
    }
    for event in BATCH_EVENTS:
        body[f"{event}_at"] = _ts(getattr(batch, f"{event}_at"))
    if batch.status != EXPIRED:
        body["expired_at"] = None
    body["request_counts"] = counts
    body["metadata"] = None if batch.metadata is None else json.loads(batch.metadata)
    body["usage"] = None
    return body
