"""Middlewares, outermost first: request counts, CORS, OpenAI-shaped errors, auth + rate limit.

aiohttp's own HTTP exceptions (unknown route, wrong method, body over the limit) are translated
here into ``APIError``s; every other exception goes through ``errors.to_api_error``.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..auth import KeyStore, authenticate
from ..config import ServerConfig
from ..errors import APIError, to_api_error
from ..metrics import Metrics
from ..ratelimit import RateLimiter

#: Routes anyone may call: probes, docs, and `url` files (unguessable ids, like signed links).
PUBLIC_PREFIXES = ("/health", "/ready", "/metrics", "/openapi.json", "/v1/images/files/")

# request key: the allowed Origin, "" = not allowed, absent = CORS off (RequestKey: aiohttp >= 3.12)
CORS_ORIGIN = web.RequestKey("cors_origin", str) if hasattr(web, "RequestKey") else "cors_origin"


def error_response(err: APIError) -> web.Response:
    return web.Response(
        status=err.status,
        text=json.dumps(err.body()),
        content_type="application/json",
        headers=err.headers,
    )


def from_http_exception(exc: web.HTTPException) -> APIError:
    """aiohttp's own errors (404 route, 405 method, 413 body too large...): same status,
    OpenAI body."""
    status = exc.status
    if status == 413:
        return APIError(
            413,
            "Request body too large. Send smaller images (see the server's --max-body-mb).",
            code="image_too_large",
            param="image",
        )
    if status == 404:
        return APIError(404, f"Unknown route: {exc.reason}.", code="not_found")
    if status == 405:
        return APIError(405, "Method not allowed for this route.", code="method_not_allowed")
    return APIError(status, exc.reason or "HTTP error.")


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects etc. pass through
            raise
        return error_response(from_http_exception(exc))
    except Exception as exc:  # noqa: BLE001 - the single catch-all that keeps internals private
        return error_response(to_api_error(exc))


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook, so that streamed (SSE) and file responses, prepared inside
    their handlers, carry the CORS headers too."""
    origin = request.get(CORS_ORIGIN)
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


def make_middlewares(config: ServerConfig, keys: KeyStore, metrics: Metrics) -> list:
    limiter = RateLimiter(config.auth.rate_limit)
    origins = set(config.http.cors_origins)
    no_auth = config.auth.no_auth

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
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if origin is not None and origins:
            request[CORS_ORIGIN] = origin if allowed else ""
        if allowed and request.method == "OPTIONS":
            return web.Response(status=204)
        return await handler(request)

    @web.middleware
    async def auth(request: web.Request, handler):
        if no_auth or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        key_id = authenticate(request.headers.get("Authorization"), keys)
        limiter.check(key_id)
        return await handler(request)

    # outermost first: count sees the final status of everything, errors included
    return [count, cors, errors, auth]
