"""``Expect: 100-continue`` answered only after authentication, on every route.

aiohttp runs a route's Expect handler before the middlewares, and its default one answers
``100 Continue`` at once: a client with no key (or a wrong one) would be invited to upload its
whole body before getting its 401. ``defer_continue_everywhere`` gives every route that kept
aiohttp's default the handler ``defer_continue``, which only notes that the client waits; the
auth middleware sends the ``100 Continue`` (``send_deferred_continue``) once the request is
authenticated. Routes with their own Expect handler keep it (the edits route sends its
``100 Continue`` after its own size and type checks too: http/body.py).
"""

from __future__ import annotations

from aiohttp import web, web_urldispatcher

#: request key: the client waits for ``100 Continue``, which nothing has sent yet
CONTINUE_DEFERRED = (
    web.RequestKey("continue_deferred", bool) if hasattr(web, "RequestKey") else "continue"
)
#: aiohttp's own Expect handler, which answers before the middlewares run
_AIOHTTP_DEFAULT = getattr(web_urldispatcher, "_default_expect_handler", None)


def waits_for_continue(request: web.Request) -> bool:
    return request.version >= (1, 1) and request.headers.get("Expect", "").lower() == (
        "100-continue"
    )


async def defer_continue(request: web.Request) -> None:
    """A route's Expect handler that sends nothing: it notes that the client waits."""
    if waits_for_continue(request):
        request[CONTINUE_DEFERRED] = True


async def send_deferred_continue(request: web.Request) -> None:
    """Send the ``100 Continue`` that ``defer_continue`` held back (once; nothing otherwise)."""
    if request.pop(CONTINUE_DEFERRED, False):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started


async def defer_continue_everywhere(app: web.Application) -> None:
    """on_startup: every route registered by now (all of them: the router freezes next) that
    kept aiohttp's default Expect handler gets ``defer_continue``."""
    for route in app.router.routes():
        if getattr(route, "_expect_handler", None) is _AIOHTTP_DEFAULT:
            route._expect_handler = defer_continue  # aiohttp offers no public setter
