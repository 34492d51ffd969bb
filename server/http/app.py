"""App factory: routes, middlewares, typed state, resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque

from aiohttp import web

from .auth import PUBLIC_PREFIXES, KeyStore, authenticate
from .batching import Batcher
from .config import ServerConfig
from .errors import APIError, error_middleware
from .keys import BATCHER, CONFIG, KEYS, METRICS, REGISTRY, SERVICE, STATE, STORE, AppState
from .metrics import Metrics
from .models.registry import ModelRegistry, load_registry
from .routes import routes
from .serving import EditService
from .storage import FileStore

log = logging.getLogger("server.app")


class RateLimiter:
    """Requests per minute per key id, sliding window. 0 = off."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, key_id: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        hits = self._hits[key_id]
        while hits and now - hits[0] > 60.0:
            hits.popleft()
        if len(hits) >= self.per_minute:
            retry = max(1, int(60.0 - (now - hits[0])) + 1)
            raise APIError(
                429,
                f"Rate limit reached: {self.per_minute} requests per minute for this API key. "
                "Retry after the number of seconds in the Retry-After header.",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        hits.append(now)


# request key: the allowed Origin, "" = not allowed, absent = CORS off (RequestKey: aiohttp >= 3.12)
_CORS_ORIGIN = web.RequestKey("cors_origin", str) if hasattr(web, "RequestKey") else "cors_origin"


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.get(_CORS_ORIGIN)
    if origin is None:
        return
    response.headers["Vary"] = "Origin"  # caches must not serve one origin's answer to another
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def make_middlewares(config: ServerConfig, keys: KeyStore, metrics: Metrics):
    limiter = RateLimiter(config.rate_limit_per_minute)
    origins = set(config.cors_origins)

    @web.middleware
    async def count(request: web.Request, handler):
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.requests.labels(_route_label(request), str(status)).inc()

    @web.middleware
    async def cors(request: web.Request, handler):
        # Headers are added in on_response_prepare (_cors_headers), so that streamed (SSE) and
        # file responses, prepared inside their handlers, carry them too.
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if origin is not None and origins:
            request[_CORS_ORIGIN] = origin if allowed else ""
        if allowed and request.method == "OPTIONS":
            return web.Response(status=204)
        return await handler(request)

    @web.middleware
    async def auth(request: web.Request, handler):
        if config.no_auth or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        key_id = authenticate(request, keys)
        limiter.check(key_id)
        return await handler(request)

    # outermost first: count sees the final status of everything, errors included
    return [count, cors, error_middleware, auth]


def create_app(config: ServerConfig, registry: ModelRegistry | None = None) -> web.Application:
    """Build the app. ``registry`` may be injected (tests); else models load at startup."""
    keys = KeyStore(config.api_keys)
    if not config.no_auth and len(keys) == 0:
        raise ValueError("no API key configured: pass --api-key, or --no-auth for local use")
    metrics = Metrics()
    app = web.Application(
        middlewares=make_middlewares(config, keys, metrics),
        client_max_size=config.limits.max_body_bytes,
    )
    app[CONFIG] = config
    app[STATE] = AppState()
    app[KEYS] = keys
    app[METRICS] = metrics
    app.add_routes(routes)
    app.on_response_prepare.append(_cors_headers)

    async def resources(app: web.Application):
        loop = asyncio.get_running_loop()
        reg = registry
        if reg is None:
            reg = await loop.run_in_executor(
                None,
                lambda: load_registry(
                    config.models_dir,
                    provider=config.provider,
                    threads=config.threads,
                    default_model=config.default_model,
                ),
            )
        store = FileStore(config.files_dir, config.file_ttl_s)
        batcher = Batcher(
            reg.models,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            metrics=metrics,
        )
        app[REGISTRY] = reg
        app[STORE] = store
        app[BATCHER] = batcher
        app[SERVICE] = EditService(config, reg, batcher, store, metrics)
        sweeper = asyncio.ensure_future(_sweep_files(store))
        app[STATE].ready = True
        log.info("ready: models %s (default %s)", ", ".join(reg.names()), reg.default)
        yield
        app[STATE].ready = False
        app[STATE].draining = True
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await loop.run_in_executor(None, batcher.stop, config.shutdown_grace_s)
        if registry is None:
            reg.close()
        store.close()

    async def drain(app: web.Application) -> None:
        app[STATE].draining = True  # new edits get 503 while in-flight ones finish

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(drain)
    return app


async def _sweep_files(store: FileStore, every_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        removed = await loop.run_in_executor(None, store.cleanup)
        if removed:
            log.info("removed %d expired image files", removed)
        await asyncio.sleep(every_s)
