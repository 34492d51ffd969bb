"""``/v1/batches`` (OpenAI's Batch API, for ``/v1/images/edits``): create, get, cancel, list.
The batches themselves are ``server/batches``'s; this is the HTTP side, and the one piece of
it that needs the HTTP layer: reading a line's JSON edit body as the edits route reads one
(``forms.parse_json``, then its file and URL references resolved: ``references.py``).

Per API key: another key gets the same 404 as for a batch that never existed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

from aiohttp import web

from ..batches import Batches, start_batches
from ..errors import invalid
from ..service import Uploads
from ..service.admission import Reservation
from .body import read_raw
from .files import _int_query, list_body
from .forms import parse_json
from .jobs import JOBS, owner
from .references import resolve_references
from .routes import _base_url
from .state import BUDGET, CONFIG, EXECUTOR, FETCHER, FILES, SERVICE, STORE

BATCHES = web.AppKey("batches", Batches)
#: a create request is a small JSON object: its body is read under this size
MAX_CREATE_BYTES = 64 * 1024
#: OpenAI's default and largest page of ``GET /v1/batches``
LIST_DEFAULT, LIST_MAX = 20, 100

routes = web.RouteTableDef()


def line_reader(app: web.Application):
    """The batch runner's ``prepare_line``: a line's edit body -> (fields, uploads), with the
    edits route's parser and limits, file ids resolved for the batch's owner."""

    async def prepare_line(owner_id: str, body: bytes, reservation: Reservation):
        limits = app[CONFIG].limits
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(
            app[EXECUTOR], lambda: parse_json(body, limits, reservation)
        )
        await resolve_references(
            parsed,
            owner=owner_id,
            files=app[FILES],
            fetcher=app.get(FETCHER),
            limits=limits,
            reservation=reservation,
        )
        return parsed.fields, Uploads(parsed.images, parsed.mask, parsed.markup)

    return prepare_line


@routes.post("/v1/batches")
async def create_batch(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise invalid("Send the batch as a JSON object (Content-Type: application/json).", None)
    limits = request.app[CONFIG].limits
    raw = await read_raw(request, _small(limits))
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid("The body is not valid JSON.", None, "invalid_value") from None
    body = await request.app[BATCHES].service.create(owner(request), doc, _base_url(request))
    return web.json_response(body)


def _small(limits):
    return dataclasses.replace(limits, max_body_mb=MAX_CREATE_BYTES / 2**20)


@routes.get("/v1/batches")
async def list_batches(request: web.Request) -> web.Response:
    page, more = await request.app[BATCHES].service.list(
        owner(request),
        _int_query(request, "limit", LIST_DEFAULT, LIST_MAX),
        request.query.get("after") or None,
    )
    return web.json_response(list_body(page, more))


@routes.get("/v1/batches/{id}")
async def get_batch(request: web.Request) -> web.Response:
    body = await request.app[BATCHES].service.get(owner(request), request.match_info["id"])
    return web.json_response(body)


@routes.post("/v1/batches/{id}/cancel")
async def cancel_batch(request: web.Request) -> web.Response:
    body = await request.app[BATCHES].service.cancel(owner(request), request.match_info["id"])
    return web.json_response(body)


def setup_batches(app: web.Application) -> None:
    """Add the routes; start the batch runner after the jobs and files (their contexts must
    come before this one), stop it before them."""
    app.add_routes(routes)

    async def batches_context(app: web.Application):
        app[BATCHES] = await start_batches(
            app[CONFIG],
            jobs=app[JOBS],
            files=app[FILES],
            edits=app[SERVICE],
            objects=app[STORE],
            budget=app[BUDGET],
            prepare_line=line_reader(app),
        )
        yield
        await app[BATCHES].close()

    app.cleanup_ctx.append(batches_context)
