"""Thin HTTP handlers: read the body (body.py), parse (protocol), call the service, write the
JSON response or the SSE stream."""

from __future__ import annotations

import json

from aiohttp import web

from ..errors import APIError, shutting_down, to_api_error
from ..openapi import openapi_document
from ..protocol import ModelCard, ModelList, parse_edit_fields
from .body import read_edit_body
from .state import CONFIG, METRICS, REGISTRY, SERVICE, STATE, STORE

routes = web.RouteTableDef()


def _base_url(request: web.Request) -> str:
    configured = request.app[CONFIG].http.public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@routes.post("/v1/images/edits")
async def images_edits(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].draining:
        raise shutting_down()
    limits = request.app[CONFIG].limits
    fields, images, mask = await read_edit_body(request, limits)
    edit = parse_edit_fields(fields, limits.max_prompt_chars)
    service = request.app[SERVICE]

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    if not edit.stream:
        result = await service.edit(edit, images, mask, _base_url(request), gone)
        return web.json_response(result.model_dump(exclude_none=True))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        async for event in service.stream(edit, images, mask, gone):
            if not response.prepared:
                await response.prepare(request)
            await response.write(_sse(event.type, event.model_dump()))
    except Exception as exc:  # noqa: BLE001 - after the 200, errors travel as an SSE event
        if not response.prepared:
            raise
        await response.write(_sse("error", to_api_error(exc).body()))
    if not response.prepared:
        await response.prepare(request)
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
    found = request.app[STORE].get(request.match_info["name"])
    if found is None:
        raise APIError(
            404,
            "No such image file: it never existed or has expired (60 minutes).",
            code="file_not_found",
        )
    path, content_type = found
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, max-age=3600"}
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
