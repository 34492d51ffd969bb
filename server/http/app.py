"""App factory: routes, middlewares, typed state, resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..auth import KeyStore
from ..batching import Batcher
from ..config import ServerConfig
from ..metrics import Metrics
from ..models.registry import ModelRegistry, load_registry
from ..ratelimit import user_rate_limiter
from ..service import EditService
from ..service.admission import MemoryBudget, default_budget_bytes
from ..storage import Store, check_config, make_store
from .batches import setup_batches
from .expect import defer_continue_everywhere
from .fetch import ImageFetcher
from .files import setup_files
from .jobs import setup_jobs
from .middlewares import cors_headers, make_middlewares
from .playground import routes as playground_routes
from .routes import routes
from .state import (
    BATCHER,
    BUDGET,
    CONFIG,
    EXECUTOR,
    FETCHER,
    KEYS,
    METRICS,
    REGISTRY,
    SERVICE,
    STATE,
    STORE,
    USER_LIMITER,
    AppState,
)

log = logging.getLogger("server.app")

#: how often expired `url` files are removed
SWEEP_EVERY_S = 60.0
#: how long the model threads get to notice the stop at the very end (they are daemons)
STOP_TIMEOUT_S = 0.3


def create_app(config: ServerConfig, registry: ModelRegistry | None = None) -> web.Application:
    """Build the app. ``registry`` may be injected (tests); else models load at startup."""
    keys = KeyStore(config.auth.api_keys)
    if not config.auth.no_auth and len(keys) == 0:
        raise ValueError("no API key configured: pass --api-key, or --no-auth for local use")
    check_config(config.storage)  # bad storage settings fail here, before the start
    metrics = Metrics()
    app = web.Application(
        middlewares=make_middlewares(config, keys, metrics),
        client_max_size=config.limits.max_body_bytes,
    )
    app[CONFIG] = config
    app[STATE] = AppState()
    app[KEYS] = keys
    app[METRICS] = metrics
    app[USER_LIMITER] = user_rate_limiter(config)
    if config.image_urls.image_url_allow:  # image URLs in JSON edits: off by default
        app[FETCHER] = ImageFetcher(config.image_urls, config.limits)
    budget_mb = config.admission.memory_budget_mb
    app[BUDGET] = MemoryBudget(budget_mb * 2**20 if budget_mb else default_budget_bytes())
    app.add_routes(routes)
    app.add_routes(playground_routes)
    app.on_response_prepare.append(cors_headers)
    app.on_startup.append(defer_continue_everywhere)  # 100 Continue after auth, every route

    async def resources(app: web.Application):
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(
            config.admission.request_threads, thread_name_prefix="request"
        )
        models = config.models
        reg = registry
        if reg is None:
            reg = await loop.run_in_executor(
                executor,
                lambda: load_registry(
                    models.models_dir,
                    provider=models.provider,
                    threads=models.threads,
                    default_model=models.default_model,
                    instances=models.instances,
                    static_shapes=models.static_shapes,
                    amx_attention=models.amx_attention,
                ),
            )
        # a local folder, or an S3 bucket (probed over the network: off the loop)
        store = await loop.run_in_executor(executor, make_store, config.storage)
        batching = config.batching
        batcher = Batcher(
            reg.models,
            max_batch_size=batching.max_batch_size,
            max_wait_ms=batching.max_wait_ms,
            max_queue=batching.max_queue,
            metrics=metrics,
            instances={name: reg.instances_of(name).count for name in reg.models},
        )
        app[EXECUTOR] = executor
        app[REGISTRY] = reg
        app[STORE] = store
        app[BATCHER] = batcher
        app[SERVICE] = EditService(config, reg, batcher, store, metrics, executor)
        sweeper = asyncio.ensure_future(_sweep_files(store, executor))
        app[STATE].ready = True
        log.info("ready: models %s (default %s)", ", ".join(reg.names()), reg.default)
        yield
        app[STATE].ready = False
        app[STATE].draining = True
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await loop.run_in_executor(executor, batcher.stop, STOP_TIMEOUT_S)
        if registry is None:
            reg.close()
        store.close()
        executor.shutdown(wait=False, cancel_futures=True)

    async def drain(app: web.Application) -> None:
        app[STATE].draining = True  # new edits get 503 while in-flight ones finish

    app.cleanup_ctx.append(resources)
    setup_jobs(app)  # async jobs: routes, and a context started after resources
    setup_files(app)  # /v1/files: after the jobs (their database)
    setup_batches(app)  # /v1/batches: after the jobs and the files
    app.on_shutdown.append(drain)
    return app


async def _sweep_files(store: Store, executor) -> None:
    loop = asyncio.get_running_loop()
    while True:
        removed = await loop.run_in_executor(executor, store.cleanup)
        if removed:
            log.info("removed %d expired stored files", removed)
        await asyncio.sleep(SWEEP_EVERY_S)
