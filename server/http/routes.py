"""Thin HTTP handlers: read the body (body.py), parse (protocol), call the service, write the
JSON response or the SSE stream."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from ..errors import APIError, shutting_down, to_api_error
from ..openapi import openapi_document
from ..protocol import ModelCard, ModelList, parse_edit_fields
from ..ratelimit import user_key
from ..service import Uploads
from .body import no_continue, read_edit_body
from .jobs import owner, submit_job, wants_async
from .state import (
    BUDGET,
    CONFIG,
    EXECUTOR,
    METRICS,
    REGISTRY,
    SERVICE,
    STATE,
    STORE,
    USER_LIMITER,
)

routes = web.RouteTableDef()

#: an SSE comment this often while no event is ready, so proxies keep an idle stream open
SSE_KEEPALIVE_S = 15.0


def _base_url(request: web.Request) -> str:
    """Where `url` links point: --public-url, else the request's Host (the guard middleware
    has checked it against the accepted names)."""
    configured = request.app[CONFIG].http.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


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
        await request.app[USER_LIMITER].acheck(user_key(owner(request), edit.end_user))
    if wants_async(request, edit):  # Prefer: respond-async -> 202 + a job (http/jobs.py)
        return await submit_job(request, body, edit, reservation, _base_url(request))
    uploads = Uploads(body.images, body.mask, body.markup)
    service = request.app[SERVICE]

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    if not edit.stream:
        result = await service.edit(edit, uploads, _base_url(request), gone, reservation)
        return web.json_response(result.model_dump(exclude_none=True))
    prepared = await service.start(edit, uploads, reservation)  # 4xx before the stream starts
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    events = service.events(prepared, gone).__aiter__()
    step = None
    try:
        while True:
            step = asyncio.ensure_future(events.__anext__())
            while not step.done():
                await asyncio.wait({step}, timeout=SSE_KEEPALIVE_S)
                if not step.done():
                    await response.write(b": keep-alive\n\n")
            try:
                event = step.result()
            except StopAsyncIteration:
                break
            await response.write(_sse(event.type, event.model_dump(exclude_none=True)))
    except Exception as exc:  # noqa: BLE001 - after the 200, errors travel as an SSE event
        await response.write(_sse("error", to_api_error(exc).body()))
    finally:
        if step is not None and not step.done():  # the handler was cancelled (hang-up)
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await step
        await events.aclose()  # cancels the model work it started
    await response.write_eof()
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
        return web.json_response({"status": "not ready"}, status=503)
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
