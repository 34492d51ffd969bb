"""Asynchronous jobs: ``POST /v1/images/edits`` with ``Prefer: respond-async`` answers ``202``
with a job to poll (``GET /v1/images/jobs/{id}``), cancel (``DELETE``) or be called back about
(``webhook_url``). The state is durable, in a database shared by every replica.

Modules, in the order a job meets them:

- ``model.py``: states, ids, object keys, the stored request (seed pinned), the public object;
- ``service.py``: ``JobService``: submit (same validation as the synchronous route, uploads to
  the object store, Idempotency-Key), read and cancel, per API key;
- ``database.py`` / ``store.py``: the tables and every statement (PostgreSQL or SQLite);
- ``runner.py``: ``JobRunner``: claims jobs when the batcher has room, runs them, holds leases
  (progress is counted by ``service/progress.py``, as for streams);
- ``deliveries.py`` / ``webhooks.py``: signed webhooks (Standard Webhooks), SSRF rules, retries.

``start_jobs`` assembles them for the app; nothing here imports aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..batching import Batcher
from ..config import JobsConfig, ServerConfig
from ..database import engine_url, is_sqlite
from ..metrics import Metrics
from ..service import EditService
from ..service.admission import MemoryBudget
from ..storage import FileStore, Store
from .database import make_jobs_engine
from .deliveries import Deliveries
from .runner import JobRunner
from .service import JobService
from .store import JobStore
from .webhooks import parse_secret

__all__ = ["Jobs", "JobService", "check_config", "start_jobs"]

log = logging.getLogger("server.jobs")

#: threads for the job database and the object store (blocking calls)
DB_THREADS = 4


def check_config(config: JobsConfig) -> None:
    """ValueError naming the setting to fix; touches nothing (``start_jobs`` connects)."""
    engine_url(config.database_url, Path("."))
    if config.webhook_secret is not None:
        parse_secret(config.webhook_secret)
    if config.lease_seconds < 3:
        raise ValueError("--lease-seconds: at least 3 (the lease is renewed every third of it)")
    for flag, value in (
        ("--webhook-retries", config.webhook_retries),
        ("--max-queued-jobs", config.max_queued_jobs),
    ):
        if value < 0:
            raise ValueError(f"{flag}: expected a number >= 0, got {value}")
    if config.max_stored_results_mb <= 0:
        raise ValueError(
            f"--max-stored-results-mb: expected megabytes > 0, got {config.max_stored_results_mb}"
        )
    if config.webhook_backoff <= 0 or config.webhook_timeout <= 0:
        raise ValueError("--webhook-backoff and --webhook-timeout: expected seconds > 0")


def replica_name() -> str:
    """This process's name in job leases: host, pid and a random tail (pids repeat)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Jobs:
    """The running parts, as the app holds them."""

    service: JobService
    runner: JobRunner
    store: JobStore
    executor: ThreadPoolExecutor
    tmp: tempfile.TemporaryDirectory | None = None

    async def close(self) -> None:
        """Stop claiming, put running jobs back in the queue, close the database."""
        await self.runner.stop()
        await asyncio.get_running_loop().run_in_executor(self.executor, self.store.close)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.tmp is not None:
            self.tmp.cleanup()


async def start_jobs(
    config: ServerConfig,
    *,
    objects: Store,
    edits: EditService,
    batcher: Batcher,
    budget: MemoryBudget,
    metrics: Metrics,
    draining: Callable[[], bool],
    clock: Callable[[], float] = time.time,
) -> Jobs:
    """Connect the job database (creating its tables), start the runner. Without
    ``--database-url`` the SQLite file lives in the local store's folder (``--files-dir``, or
    its temp dir), or in a temp dir of its own beside an S3 store."""
    check_config(config.jobs)
    tmp = None
    if isinstance(objects, FileStore):
        folder = objects.directory
    else:
        tmp = tempfile.TemporaryDirectory(prefix="inpaint-jobs-")
        folder = Path(tmp.name)
    if config.jobs.database_url is None and tmp is not None:
        log.warning("jobs: no --database-url: their state is in a temp dir, lost on restart")
    executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="jobs")
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(
        executor, make_jobs_engine, engine_url(config.jobs.database_url, folder)
    )
    store = JobStore(engine, config.storage.file_ttl)
    deliveries = Deliveries(store, config.jobs, metrics, executor, clock)
    runner = JobRunner(
        store=store,
        objects=objects,
        service=edits,
        batcher=batcher,
        budget=budget,
        config=config,
        metrics=metrics,
        executor=executor,
        deliveries=deliveries,
        replica=replica_name(),
        draining=draining,
        clock=clock,
    )
    await runner.start(requeue=is_sqlite(engine))
    service = JobService(store, objects, runner, edits, config, metrics, executor, clock)
    log.info("jobs: %s database, replica %s", engine.dialect.name, runner.replica)
    return Jobs(service, runner, store, executor, tmp)
