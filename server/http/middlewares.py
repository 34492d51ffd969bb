"""Middlewares, outermost first: request counts, CORS, OpenAI-shaped errors, the guard
(compressed bodies, Host, cross-site posts to an unauthenticated loopback server), auth + rate
limits.

aiohttp's own HTTP exceptions (unknown route, wrong method, body over the limit) are translated
here into ``APIError``s; every other exception goes through ``errors.to_api_error``. An error
answered before the request body was read closes the connection: nothing is drained (or
inflated) after a 401/413/415.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from urllib.parse import urlsplit

from aiohttp import web

from ..auth import KeyStore, authenticate
from ..config import ServerConfig
from ..errors import APIError, to_api_error
from ..metrics import Metrics
from ..ratelimit import AuthThrottle, rate_limiter
from .client_address import (
    CLIENT_ADDRESS,
    check_forwarded_header,
    request_client,
    trusted_networks,
)
from .expect import send_deferred_continue
from .writing import CLIENT_CLOSED, ClientGone

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
    except ClientGone:  # no answer can reach the client: ``count`` labels it
        raise
    except Exception as exc:  # noqa: BLE001 - the single catch-all that keeps internals private
        response = error_response(to_api_error(exc))
    if request.body_exists and not request.content.at_eof():
        response.force_close()  # do not read (or inflate) the rest of a refused body
    return response


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


#: a host name or IPv4 address: dot-separated labels of letters, digits, '-' and '_' (no
#: userinfo '@', no path, no percent-encoding: nothing that reads differently in a URL)
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def host_and_port(value: str) -> tuple[str, str] | None:
    """A Host header (or --allowed-host) split and normalised: 'Example.COM:8000' ->
    ('example.com', '8000'); '[::1]:80' -> ('::1', '80'); 'name' -> ('name', ''). None when it
    is not a host: userinfo ('127.0.0.1:80@evil.com'), a port that is not a number up to
    65535, characters that no host name has, an IPv6 address that is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif value.count(":") > 1:  # a bare IPv6 address (configured names; no port possible)
        try:
            return str(ipaddress.IPv6Address(value)), ""
        except ValueError:
            return None
    else:
        host, colon, port = value.partition(":")
        if colon and not port:
            return None
        if not _NAME.fullmatch(host):
            return None
    if port and not (_PORT.fullmatch(port) and int(port) <= 65535):
        return None
    return host, port


def host_name(value: str) -> str | None:
    """'Example.COM:8000' -> 'example.com'; '[::1]:80' -> '::1'; None when ``value`` is not
    a valid host (``host_and_port``)."""
    parsed = host_and_port(value)
    return parsed[0] if parsed is not None else None


def link_host(value: str) -> str | None:
    """The ``host[:port]`` to write into links, from a Host header: normalised, IPv6 in
    brackets; None when ``value`` is not a valid host."""
    parsed = host_and_port(value)
    if parsed is None:
        return None
    host, port = parsed
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def invalid_host(value: str, hosts: frozenset[str] | None) -> APIError:
    """The 400 of a Host header that is malformed or not among ``hosts``."""
    accepted = (
        f"this server answers to {', '.join(sorted(hosts))} (see --allowed-host)"
        if hosts is not None
        else "send a host name or address, with an optional numeric port"
    )
    return APIError(400, f"Unknown Host {value[:64]!r}: {accepted}.", code="invalid_host")


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
        names = {h: host_name(h) for h in config.http.allowed_hosts}
        bad = [h for h, name in names.items() if name is None]
        if bad:
            raise ValueError(f"--allowed-host {bad[0]!r}: give a host name or an IP address")
        return frozenset(n for n in names.values() if n is not None)
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
            "Location, Preference-Applied, Retry-After, x-should-retry"
        )


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def make_middlewares(config: ServerConfig, keys: KeyStore, metrics: Metrics) -> list:
    limiter = rate_limiter(config)
    throttle = AuthThrottle(config.auth.auth_failures_per_minute)
    proxies = trusted_networks(config.http.trusted_proxies)
    forwarded_header = check_forwarded_header(config.http.forwarded_header)
    origins = set(config.http.cors_origins)
    no_auth = config.auth.no_auth
    hosts = accepted_hosts(config)
    # an unauthenticated loopback server: any web page could post a form to it
    check_origin = no_auth and is_loopback(config.http.host)

    @web.middleware
    async def count(request: web.Request, handler):
        # the one place that names the client (the throttle and the access log read it)
        request[CLIENT_ADDRESS] = request_client(request, proxies, forwarded_header)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except ClientGone as gone:  # stopped reading: the connection is closed already
            status = CLIENT_CLOSED
            return gone.response
        except asyncio.CancelledError:  # hung up (aiohttp cancels the handler)
            status = CLIENT_CLOSED
            raise
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
        name = host_name(request.host)
        if not probe and (name is None or (hosts is not None and name not in hosts)):
            raise invalid_host(request.host, hosts)
        origin = request.headers.get("Origin")
        if check_origin and request.method not in ("GET", "HEAD", "OPTIONS") and origin:
            origin_host = (host_name(urlsplit(origin).netloc) or "") if origin != "null" else ""
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
            await send_deferred_continue(request)
            return await handler(request)
        # the key first: a valid key passes whatever its address did (no lockout through a
        # shared proxy or NAT); a failure counts, and past the limit it is a 429
        try:
            key_id = authenticate(request.headers.get("Authorization"), keys)
        except APIError:
            throttle.failed(request[CLIENT_ADDRESS])
            raise
        await limiter.acheck(key_id)
        await send_deferred_continue(request)  # authenticated: the client may send its body
        return await handler(request)

    # outermost first: count sees the final status of everything, errors included
    return [count, cors, errors, guard, auth]
