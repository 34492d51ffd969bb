"""``/v1/files`` (OpenAI's Files API, the part batches and JSON edits need): upload, list, get,
download, delete. The files themselves are ``server/files``'s; this is the HTTP side.

- ``POST /v1/files``: multipart ``file`` + ``purpose`` (``batch`` or ``vision``), optional
  ``expires_after[anchor]=created_at`` and ``expires_after[seconds]``; the body is read under
  the edits route's read limits (stall, deadline, rate) with ``--max-file-mb`` as its size
  limit, and counted in the memory budget while it is held;
- ``GET /v1/files`` (``purpose``, ``limit``, ``after``, ``order``), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``.

Per API key: another key gets the same 404 as for a file that never existed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from ..errors import APIError, invalid
from ..files import LIST_DEFAULT, LIST_MAX, FileRecord, FileService, not_found
from .body import no_continue, read_raw, send_continue
from .forms import _params, _part_headers, find, malformed
from .jobs import JOBS, owner
from .state import BUDGET, CONFIG, EXECUTOR, FILES, STORE
from .writing import copy_within, write_within

log = logging.getLogger("server.http")

routes = web.RouteTableDef()

#: what a multipart upload carries beside the file (boundaries, part headers, small fields)
MULTIPART_OVERHEAD = 64 * 1024
#: the content route writes a file in pieces of this size
WRITE_CHUNK = 256 * 1024
#: form fields of an upload, as OpenAI's
FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")


def file_too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"File too large: over {max_bytes} bytes (the server's --max-file-mb). Split it into "
        "smaller files.",
        code="file_too_large",
        param="file",
    )


def parse_upload(body: bytes, boundary: str, max_bytes: int) -> tuple[dict[str, str], str, bytes]:
    """A multipart upload -> (text fields, the file's name, its bytes). Blocking (a worker
    thread): only ``find`` scans the body, one window at a time."""
    delim = b"--" + boundary.encode("latin-1", "replace")
    pos = 0 if body.startswith(delim) else find(body, b"\r\n" + delim) + 2
    if pos < 0 or not body.startswith(delim, pos):
        raise malformed("no boundary delimiter found")
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    pos += len(delim)
    for _ in range(len(FIELDS) + 2):
        if body.startswith(b"--", pos):
            break
        head_end = body.find(b"\r\n\r\n", pos, pos + 8 * 1024)
        if head_end < 0:
            raise malformed("a part's headers do not end (or are too long)")
        headers = _part_headers(body[pos + 2 : head_end]) if head_end > pos + 2 else {}
        start = head_end + 4
        end = find(body, b"\r\n" + delim, start)
        if end < 0:
            raise malformed("the body ends inside a part (no closing boundary)")
        _, params = _params(headers.get("content-disposition", ""))
        name = params.get("name", "")
        if name == "file":
            if end - start > max_bytes:
                raise file_too_large(max_bytes)
            upload = (params.get("filename") or "file", bytes(memoryview(body)[start:end]))
        elif name in FIELDS and end - start <= 1024:
            fields[name] = bytes(memoryview(body)[start:end]).decode("utf-8", "replace").strip()
        pos = end + 2 + len(delim)
    else:
        raise invalid("Too many form parts: send 'file', 'purpose' and 'expires_after'.", None)
    if upload is None:
        raise invalid(
            "Missing 'file': send the file as a multipart part named 'file'.",
            "file",
            "missing_required_parameter",
        )
    return fields, upload[0], upload[1]


def _lifetime(service: FileService, fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at" or seconds is None or not seconds.isdecimal():
        raise invalid(
            "expires_after needs anchor 'created_at' and a whole number of seconds.",
            "expires_after",
            "invalid_value",
        )
    return service.check_expiry(int(seconds))


def _file_id(request: web.Request) -> str:
    return request.match_info["id"]


@routes.post("/v1/files", expect_handler=no_continue)
async def upload_file(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    service = request.app[FILES]
    max_bytes = config.files.max_file_bytes
    if request.content_type != "multipart/form-data":
        raise invalid("Send the file as multipart/form-data with parts 'file' and 'purpose'.", None)
    boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get("boundary")
    if not boundary:
        raise malformed("the Content-Type has no boundary")
    if (request.content_length or 0) > max_bytes + MULTIPART_OVERHEAD:
        raise file_too_large(max_bytes)
    limits = dataclasses.replace(
        config.limits, max_body_mb=(max_bytes + MULTIPART_OVERHEAD) / 2**20
    )
    reservation = request.app[BUDGET].reservation()
    try:
        declared = request.content_length or 0
        reservation.add(declared)
        await send_continue(request)
        try:
            raw = await read_raw(request, limits, reservation, declared)
        except APIError as exc:
            raise file_too_large(max_bytes) if exc.status == 413 else exc from None
        loop = asyncio.get_running_loop()
        fields, filename, data = await loop.run_in_executor(
            request.app[EXECUTOR], parse_upload, raw, boundary, max_bytes
        )
        del raw
        purpose = fields.get("purpose")
        if not purpose:
            raise invalid(
                "Missing 'purpose': use 'batch' or 'vision'.",
                "purpose",
                "missing_required_parameter",
            )
        record = await service.create(
            owner(request), filename, purpose, data, _lifetime(service, fields)
        )
    finally:
        reservation.release()
    return web.json_response(record.public())


def _int_query(request: web.Request, name: str, default: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdecimal() or not 1 <= int(text) <= high:
        raise invalid(f"'{name}' must be a whole number from 1 to {high}.", name, "invalid_value")
    return int(text)


def list_body(items: list[dict], has_more: bool) -> dict:
    """OpenAI's cursor page: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


@routes.get("/v1/files")
async def list_files(request: web.Request) -> web.Response:
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("'order' must be 'asc' or 'desc'.", "order", "invalid_value")
    page, more = await request.app[FILES].list(
        owner(request),
        request.query.get("purpose") or None,
        _int_query(request, "limit", LIST_DEFAULT, LIST_MAX),
        request.query.get("after") or None,
        order,
    )
    return web.json_response(list_body([f.public() for f in page], more))


async def _record(request: web.Request) -> FileRecord:
    record = await request.app[FILES].get(owner(request), _file_id(request))
    if record is None:
        raise not_found(_file_id(request))
    return record


@routes.get("/v1/files/{id}")
async def get_file(request: web.Request) -> web.Response:
    return web.json_response((await _record(request)).public())


@routes.get("/v1/files/{id}/content")
async def file_content(request: web.Request) -> web.StreamResponse:
    """The bytes, streamed from the store in ``WRITE_CHUNK`` pieces read in a thread (a file
    of any size holds one piece in memory), each write within ``--write-timeout``."""
    service = request.app[FILES]
    opened = await service.open(owner(request), _file_id(request))
    if opened is None:
        raise not_found(_file_id(request))
    record, stream, size = opened
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{record.id}"',
            }
        )
        response.content_length = size
        timeout = request.app[CONFIG].http.write_timeout
        await copy_within(
            request,
            response,
            lambda n: service.read(stream, n),
            size,
            WRITE_CHUNK,
            timeout,
            f"file {record.id}",
        )
        await write_within(request, response, b"", timeout, eof=True)
        return response
    finally:
        await service.close(stream)


@routes.delete("/v1/files/{id}")
async def delete_file(request: web.Request) -> web.Response:
    if not await request.app[FILES].delete(owner(request), _file_id(request)):
        raise not_found(_file_id(request))
    return web.json_response({"id": _file_id(request), "object": "file", "deleted": True})


def setup_files(app: web.Application) -> None:
    """Add the routes; start the files service once the jobs' database is up (this context
    must come after the jobs' one) and sweep expired files while the app runs."""
    app.add_routes(routes)

    async def files_context(app: web.Application):
        config = app[CONFIG]
        service = FileService(
            app[JOBS].store.engine,
            app[STORE],
            app[JOBS].executor,
            config.storage.file_ttl,
            max_stored_bytes=config.files.max_stored_files_bytes,
        )
        app[FILES] = service
        sweeper = asyncio.ensure_future(service.sweep_forever())
        yield
        sweeper.cancel()
        try:
            await sweeper
        except asyncio.CancelledError:
            pass

    app.cleanup_ctx.append(files_context)
