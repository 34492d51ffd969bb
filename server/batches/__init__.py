"""The Batch API for edits (OpenAI's ``/v1/batches`` with ``endpoint: "/v1/images/edits"``): a
JSONL input file (``server/files``) of JSON edit bodies, run as jobs (``server/jobs``) at a
lower priority than interactive requests, with an output file and an error file in OpenAI's
line format.

Modules: ``model.py`` (statuses, ids, the public object), ``lines.py`` (the input and output
line formats), ``store.py`` (every statement), ``runner.py`` (validation and finalization,
by whichever replica gets there first). ``BatchService`` is what the HTTP layer asks; nothing
here imports aiohttp (the JSON edit body's parser is handed in as ``prepare_line``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import ServerConfig
from ..database import is_sqlite
from ..errors import APIError, invalid
from ..files import FileService, not_found
from ..jobs import Jobs
from ..service.admission import MemoryBudget
from .model import (
    BATCH_ID,
    CANCELLED,
    CANCELLING,
    COMPLETION_WINDOW,
    ENDPOINT,
    METADATA_KEY,
    METADATA_PAIRS,
    METADATA_VALUE,
    VALIDATING,
    WINDOW_S,
    new_batch_id,
    public,
)
from .runner import BatchRunner, PrepareLine
from .store import BatchStore

__all__ = ["BatchService", "Batches", "start_batches"]


def batch_not_found(batch_id: str) -> APIError:
    return APIError(
        404,
        f"No batch '{batch_id[:48]}' for this API key: it never existed, belongs to another "
        "key, or is older than the server keeps batches.",
        code="batch_not_found",
    )


def check_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata: up to 16 string pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > METADATA_PAIRS
        or not all(
            isinstance(k, str)
            and isinstance(v, str)
            and len(k) <= METADATA_KEY
            and len(v) <= METADATA_VALUE
            for k, v in value.items()
        )
    ):
        raise invalid(
            f"'metadata' must be an object of at most {METADATA_PAIRS} string pairs, keys up "
            f"to {METADATA_KEY} characters, values up to {METADATA_VALUE}.",
            "metadata",
            "invalid_value",
        )
    return value


class BatchService:
    def __init__(
        self,
        store: BatchStore,
        files: FileService,
        runner: BatchRunner,
        executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.files = files
        self.runner = runner
        self.executor = executor
        self.clock = clock

    async def _db(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def _public(self, batch) -> dict:
        return public(batch, await self._db(self.store.counts, batch))

    async def create(self, owner: str, doc: Any, base_url: str) -> dict:
        """Check the request (not the file: that is the ``validating`` step), store the batch."""
        if not isinstance(doc, dict):
            raise invalid("The body must be a JSON object.", None)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise invalid(
                    f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
                )
        if doc["endpoint"] != ENDPOINT:
            raise invalid(
                f"endpoint {doc['endpoint'][:60]!r} is not supported by this server: use "
                f"{ENDPOINT!r}.",
                "endpoint",
                "invalid_value",
            )
        if doc["completion_window"] != COMPLETION_WINDOW:
            raise invalid(
                f"completion_window must be {COMPLETION_WINDOW!r}.",
                "completion_window",
                "invalid_value",
            )
        metadata = check_metadata(doc.get("metadata"))
        record = await self.files.get(owner, doc["input_file_id"])
        if record is None:
            raise not_found(doc["input_file_id"], "input_file_id")
        if record.purpose != "batch":
            raise invalid(
                f"File {record.id} was uploaded with purpose {record.purpose!r}; a batch's "
                "input file needs purpose 'batch'.",
                "input_file_id",
                "invalid_value",
            )
        now = self.clock()
        values = {
            "id": new_batch_id(),
            "owner": owner,
            "status": VALIDATING,
            "endpoint": ENDPOINT,
            "input_file_id": record.id,
            "completion_window": COMPLETION_WINDOW,
            "base_url": base_url,
            "metadata": None if metadata is None else json.dumps(metadata),
            "total": 0,
            "created_at": now,
            "expires_at": now + WINDOW_S,
        }
        batch = await self._db(self.store.create, values)
        self.runner.wake()
        return await self._public(batch)

    async def get(self, owner: str, batch_id: str) -> dict:
        batch = None
        if BATCH_ID.match(batch_id):
            batch = await self._db(self.store.get, batch_id, owner)
        if batch is None:
            raise batch_not_found(batch_id)
        return await self._public(batch)

    async def list(self, owner: str, limit: int, after: str | None) -> tuple[list[dict], bool]:
        page, more = await self._db(self.store.page, owner, limit, after)
        return [await self._public(b) for b in page], more

    async def cancel(self, owner: str, batch_id: str) -> dict:
        """``cancelling`` (then ``cancelled`` once its running lines stopped); a batch that is
        already finalizing or settled cannot be cancelled (409)."""
        batch = None
        if BATCH_ID.match(batch_id):
            batch = await self._db(self.store.cancel, batch_id, owner, self.clock())
        if batch is None:
            raise batch_not_found(batch_id)
        if batch.status not in (CANCELLING, CANCELLED):
            raise APIError(
                409,
                f"Batch {batch.id} is {batch.status}; only a validating or in-progress batch can "
                "be cancelled.",
                code="batch_not_cancellable",
            )
        self.runner.wake()
        return await self._public(batch)


@dataclass
class Batches:
    service: BatchService
    runner: BatchRunner

    async def close(self) -> None:
        await self.runner.stop()


async def start_batches(
    config: ServerConfig,
    *,
    jobs: Jobs,
    files: FileService,
    edits,
    objects,
    budget: MemoryBudget,
    prepare_line: PrepareLine,
    clock: Callable[[], float] = time.time,
) -> Batches:
    """The batch runner over the jobs' database, started; its service."""
    store = BatchStore(jobs.store.engine, jobs.store.ttl_s)
    runner = BatchRunner(
        store=store,
        files=files,
        jobs=jobs.store,
        job_runner=jobs.runner,
        objects=objects,
        edits=edits,
        prepare_line=prepare_line,
        budget=budget,
        config=config,
        executor=jobs.executor,
        replica=jobs.runner.replica,
        clock=clock,
    )
    await runner.start(release=is_sqlite(jobs.store.engine))
    return Batches(BatchService(store, files, runner, jobs.executor, clock), runner)
