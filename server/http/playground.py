"""The playground: a page served by the server itself that uses only the public API.

``GET /`` and ``GET /playground`` answer the page (``static/index.html``); ``GET
/playground/static/{name}`` its stylesheet and JavaScript modules. Plain files, no build step:
what is in ``static/`` ships inside the package (pyproject's package-data).

The page needs no key (the API calls it makes carry the one the user enters), so its paths are
public in ``middlewares.PUBLIC_PATHS`` / ``PUBLIC_PREFIXES``. Its security headers are set here,
on these responses only: the API's JSON answers have no use for a Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"

#: What the page's own files may be served as; anything else in static/ is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: Scripts only from this origin (no inline script, no eval); the page talks only to this
#: server; images may also be the blob:/data: URLs the page makes from uploads and results.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    # revalidate every time: a server upgrade must never run an old page against a new API
    "Cache-Control": "no-cache",
}

routes = web.RouteTableDef()


def _assets() -> dict[str, Path]:
    """The servable files by name: a fixed table, so no request path ever reaches the disk."""
    return {
        p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in CONTENT_TYPES
    }


ASSETS = _assets()


def _file(path: Path) -> web.FileResponse:
    return web.FileResponse(
        path, headers={**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]}
    )


@routes.get("/")
@routes.get("/playground")
async def page(request: web.Request) -> web.StreamResponse:
    return _file(ASSETS["index.html"])


@routes.get("/playground/static/{name}")
async def asset(request: web.Request) -> web.StreamResponse:
    path = ASSETS.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(reason=request.path[:80])
    return _file(path)
