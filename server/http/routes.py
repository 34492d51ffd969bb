"""Thin HTTP handlers: read the body (body.py), parse (protocol), call the service, write the
JSON response or the SSE stream."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from ..errors import APIError, retry_headers, shutting_down, to_api_error
from ..openapi import openapi_document
from ..protocol import ModelCard, ModelList, parse_edit_fields
from ..ratelimit import user_key, user_scope
from ..service import Uploads
from .body import no_continue, read_edit_body
from .jobs import owner, submit_job, wants_async
from .middlewares import invalid_host, link_host
from .references import has_references, resolve_references
from .responses import encode_json
from .state import (
    BUDGET,
    CONFIG,
    EXECUTOR,
    FETCHER,
    FILES,
    METRICS,
    REGISTRY,
    SERVICE,
    STATE,
    STORE,
    USER_LIMITER,
)
from .writing import ClientGone, send_answer, write_within

routes = web.RouteTableDef()

#: an SSE comment this often while no event is ready, so proxies keep an idle stream open
SSE_KEEPALIVE_S = 15.0


def _base_url(request: web.Request) -> str:
    """Where `url` links point: --public-url, else the request's Host, normalised by
    ``link_host`` (no userinfo, numeric port; the guard middleware has also checked it
    against the accepted names). A Host that is not valid gets a 400, never a link."""
    configured = request.app[CONFIG].http.public_url
    if configured:
        return configured.rstrip("/")
    host = link_host(request.host)
    if host is None:
        raise invalid_host(request.host, None)
    return f"{request.scheme}://{host}"


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@routes.post("/v1/images/edits", expect_handler=no_continue)
async def images_edits(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.draining:
        raise shutting_down()
    state.in_flight += 1
    reservation = request.app[BUDGET].reservation()
    try:
        return await _edit(request, reservation)
    finally:
        reservation.release()
        state.in_flight -= 1


async def _edit(request: web.Request, reservation) -> web.StreamResponse:
    limits = request.app[CONFIG].limits
    body = await read_edit_body(request, limits, request.app[EXECUTOR], reservation)
    edit = parse_edit_fields(body.fields, limits.max_prompt_chars)
    if edit.end_user:  # --rate-limit-per-user: one API key often serves many people
        await request.app[USER_LIMITER].acheck(
            user_key(owner(request), edit.end_user), user_scope(edit.end_user_field)
        )
    if has_references(body):  # file_id / image URL entries of a JSON body, both paths
        await resolve_references(
            body,
            owner=owner(request),
            files=request.app.get(FILES),
            fetcher=request.app.get(FETCHER),
            limits=limits,
            reservation=reservation,
        )
    if wants_async(request, edit):  # Prefer: respond-async -> 202 + a job (http/jobs.py)
        return await submit_job(request, body, edit, reservation, _base_url(request))
    uploads = Uploads(body.images, body.mask, body.markup)
    service = request.app[SERVICE]

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    write_timeout = request.app[CONFIG].http.write_timeout
    if not edit.stream:
        result = await service.edit(edit, uploads, _base_url(request), gone, reservation)
        answer = await encode_json(request, result.model_dump(exclude_none=True))
        reservation.hold(len(answer))  # in the budget until written (released after send)
        return await send_answer(request, answer, write_timeout)
    prepared = await service.start(edit, uploads, reservation)  # 4xx before the stream starts
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )

    async def send(data: bytes, eof: bool = False) -> None:
        await write_within(request, response, data, write_timeout, eof=eof)

    await send(b"")  # the headers
    events = service.events(prepared, gone).__aiter__()
    step = None
    try:
        while True:
            step = asyncio.ensure_future(events.__anext__())
            while not step.done():
                await asyncio.wait({step}, timeout=SSE_KEEPALIVE_S)
                if not step.done():
                    await send(b": keep-alive\n\n")
            try:
                event = step.result()
            except StopAsyncIteration:
                break
            await send(_sse(event.type, event.model_dump(exclude_none=True)))
    except ClientGone:  # not reading (or gone): nothing more can be sent
        raise
    except Exception as exc:  # noqa: BLE001 - after the 200, errors travel as an SSE event
        await send(_sse("error", to_api_error(exc).body()))
    finally:
        if step is not None and not step.done():  # the handler was cancelled (hang-up)
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await step
        # cancels the model work it started; shielded: a hang-up cancels this handler, and
        # the work must stop all the same
        await asyncio.shield(events.aclose())
    await send(b"", eof=True)
    return response


def _card(request: web.Request, name: str) -> ModelCard:
    registry = request.app[REGISTRY]
    model = registry.models[name]
    return ModelCard(
        id=name,
        created=request.app[STATE].started,
        default=(name == registry.default),
        capabilities=model.capabilities.card(),
        instances=registry.instances_of(name).card(),
        **model.describe(),
    )


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    body = ModelList(data=[_card(request, name) for name in registry.models]).model_dump()
    body["unavailable"] = [{"id": f.name, "reason": f.reason} for f in registry.failures]
    return web.json_response(body)


@routes.get("/v1/models/{name}")
async def get_model(request: web.Request) -> web.Response:
    model = request.app[SERVICE].model(request.match_info["name"])
    return web.json_response(_card(request, model.name).model_dump())


@routes.get("/v1/images/files/{name}")
async def get_file(request: web.Request) -> web.StreamResponse:
    # off the loop: a local lookup stats (and may delete) a file
    found = await asyncio.get_running_loop().run_in_executor(
        request.app[EXECUTOR], request.app[STORE].open, request.match_info["name"]
    )
    if found is None:
        raise APIError(
            404,
            "No such image file: it never existed or has expired "
            f"({request.app[CONFIG].storage.file_ttl // 60} minutes).",
            code="file_not_found",
        )
    path, content_type = found
    return web.FileResponse(
        path,
        headers={
            "Content-Type": content_type,
            "Cache-Control": f"private, max-age={request.app[CONFIG].storage.file_ttl}",
        },
    )


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    registry = request.app.get(REGISTRY)
    if state.draining or registry is None or not state.ready:
        # not an error body (probes read the status), but the same retry advice as one
        return web.json_response(
            {"status": "not ready"}, status=503, headers=retry_headers(503, True, None)
        )
    return web.json_response(
        {
            "status": "ready",
            "models": registry.names(),
            "default_model": registry.default,
            "unavailable": [f.name for f in registry.failures],
        }
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app.get(REGISTRY)))
