"""Middlewares, outermost first: request counts, CORS, OpenAI-shaped errors, the guard
(compressed bodies, Host, cross-site posts to an unauthenticated loopback server), auth + rate
limits.

aiohttp's own HTTP exceptions (unknown route, wrong method, body over the limit) are translated
here into ``APIError``s; every other exception goes through ``errors.to_api_error``. An error
answered before the request body was read closes the connection: nothing is drained (or
inflated) after a 401/413/415.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from aiohttp import web

from ..auth import KeyStore, authenticate
from ..config import ServerConfig
from ..errors import APIError, to_api_error
from ..metrics import Metrics
from ..ratelimit import AuthThrottle, rate_limiter

#: liveness, readiness and metrics: called by orchestrators with whatever Host they use
PROBE_PATHS = ("/health", "/ready", "/metrics")
#: Routes anyone may call: probes, docs, and `url` files (unguessable ids, like signed links).
#: The playground page too (http/playground.py): its API calls carry the key the user enters.
PUBLIC_PREFIXES = (
    "/health",
    "/ready",
    "/metrics",
    "/openapi.json",
    "/v1/images/files/",
    "/playground",
)
#: Public by exact path (a prefix "/" would match everything): the playground at the root.
PUBLIC_PATHS = ("/",)

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
        response = error_response(from_http_exception(exc))
    except Exception as exc:  # noqa: BLE001 - the single catch-all that keeps internals private
        response = error_response(to_api_error(exc))
    if request.body_exists and not request.content.at_eof():
        response.force_close()  # do not read (or inflate) the rest of a refused body
    return response


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str:
    """'Example.COM:8000' -> 'example.com'; '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def accepted_hosts(config: ServerConfig) -> frozenset[str] | None:
    """Host names requests may name: the configured ones; loopback names for a loopback bind
    (so a DNS-rebound name cannot reach a local server); None = any."""
    if config.http.allowed_hosts:
        return frozenset(host_name(h) for h in config.http.allowed_hosts)
    return LOOPBACK_NAMES if is_loopback(config.http.host) else None


def compressed(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "identity").strip().lower() != "identity"


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook, so that streamed (SSE) and file responses, prepared inside
    their handlers, carry the CORS headers too."""
    origin = request.get(CORS_ORIGIN)
    if origin is None:
        return
    response.headers["Vary"] = "Origin"  # caches must not serve one origin's answer to another
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, Prefer, Idempotency-Key"
        )
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Expose-Headers"] = (
            "Location, Preference-Applied, Retry-After"
        )


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def make_middlewares(config: ServerConfig, keys: KeyStore, metrics: Metrics) -> list:
    limiter = rate_limiter(config)
    throttle = AuthThrottle(config.auth.auth_failures_per_minute)
    origins = set(config.http.cors_origins)
    no_auth = config.auth.no_auth
    hosts = accepted_hosts(config)
    # an unauthenticated loopback server: any web page could post a form to it
    check_origin = no_auth and is_loopback(config.http.host)

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
        # "null" (sandboxed pages, file: URLs) is never an allowed origin, even with "*"
        allowed = origin not in (None, "null") and ("*" in origins or origin in origins)
        if origin is not None and origins:
            request[CORS_ORIGIN] = origin if allowed else ""
        if allowed and request.method == "OPTIONS":
            return web.Response(status=204)
        return await handler(request)

    @web.middleware
    async def guard(request: web.Request, handler):
        if compressed(request):
            raise APIError(
                415,
                "Compressed request bodies (Content-Encoding) are not accepted; send the body "
                "uncompressed.",
                code="unsupported_content_encoding",
            )
        probe = request.path in PROBE_PATHS  # kubelet and Prometheus send the pod's address
        if hosts is not None and not probe and host_name(request.host) not in hosts:
            raise APIError(
                400,
                f"Unknown Host {request.host[:64]!r}: this server answers to "
                f"{', '.join(sorted(hosts))} (see --allowed-host).",
                code="invalid_host",
            )
        origin = request.headers.get("Origin")
        if check_origin and request.method not in ("GET", "HEAD", "OPTIONS") and origin:
            origin_host = host_name(urlsplit(origin).netloc) if origin != "null" else ""
            same_host = origin_host == host_name(request.host)  # the Host was checked above
            if not (is_loopback(origin_host) or same_host or origin in origins):
                raise APIError(
                    403,
                    "Cross-site requests to an unauthenticated local server are refused; "
                    "run it with an API key, or list the page's origin with --cors-origin.",
                    code="origin_not_allowed",
                )
        return await handler(request)

    @web.middleware
    async def auth(request: web.Request, handler):
        if no_auth or request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        address = request.remote or "unknown"
        throttle.check(address)
        try:
            key_id = authenticate(request.headers.get("Authorization"), keys)
        except APIError:
            throttle.failed(address)
            raise
        await limiter.acheck(key_id)
        return await handler(request)

    # outermost first: count sees the final status of everything, errors included
    return [count, cors, errors, guard, auth]
