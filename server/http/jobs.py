"""The HTTP side of async jobs (``server/jobs``): the ``Prefer: respond-async`` branch of the
edits route, ``GET`` / ``DELETE /v1/images/jobs/{id}``, and the jobs' part of the app's life.

- ``POST /v1/images/edits`` + ``Prefer: respond-async`` (RFC 7240) -> ``202`` with the job,
  ``Location: /v1/images/jobs/{id}`` and ``Preference-Applied: respond-async``; the body is the
  synchronous route's, validated the same way before the 202. A streamed request
  (``stream=true``) ignores the preference (RFC 7240 lets a server do that) and streams.
- ``GET /v1/images/jobs/{id}``: the job (``result`` = the synchronous route's body, once done,
  streamed from the object store as stored).
- ``DELETE /v1/images/jobs/{id}``: cancel; ``200`` with the settled job, ``202`` when a running
  job on another replica has not stopped yet, ``409`` for a job that already succeeded or failed.

Jobs are per API key: another key gets the same 404 as for a job that never existed.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..auth import bearer_token
from ..errors import APIError
from ..jobs import Jobs, check_config, start_jobs
from ..jobs.model import FAILED, JOB_ID, RUNNING, SUCCEEDED, public
from ..jobs.service import check_idempotency_key
from ..protocol import EditRequest
from ..service import Uploads
from ..service.admission import Reservation
from .forms import EditBody
from .state import BATCHER, BUDGET, CONFIG, KEYS, METRICS, SERVICE, STATE, STORE
from .writing import copy_within, write_within

JOBS = web.AppKey("jobs", Jobs)
PREFERENCE = "respond-async"
#: bytes of a stored result copied per write of a job's GET
RESULT_CHUNK = 1 << 20

routes = web.RouteTableDef()


def wants_async(request: web.Request, edit: EditRequest) -> bool:
    """Whether the request prefers an async answer (``Prefer: respond-async``, in any of its
    Prefer headers, case-insensitive) and can have one (streams cannot)."""
    if edit.stream:
        return False
    for header in request.headers.getall("Prefer", []):
        for preference in header.split(","):
            name = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if name == PREFERENCE:
                return True
    return False


def owner(request: web.Request) -> str:
    """The caller's key id (the auth middleware has checked the key); "" without auth."""
    if request.app[CONFIG].auth.no_auth:
        return ""
    return request.app[KEYS].key_id(bearer_token(request.headers.get("Authorization")) or "")


def not_found(job_id: str) -> APIError:
    return APIError(
        404,
        f"No job '{job_id[:40]}' for this API key: it never existed, belongs to another key, "
        "or has expired (jobs are kept as long as url images).",
        code="job_not_found",
    )


def _job_response(body: dict, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def submit_job(
    request: web.Request,
    body: EditBody,
    edit: EditRequest,
    reservation: Reservation,
    base_url: str,
) -> web.Response:
    """The edits route's async branch: validate, queue, answer 202 with the job."""
    job, _ = await request.app[JOBS].service.submit(
        owner=owner(request),
        fields=body.fields,
        edit=edit,
        uploads=Uploads(body.images, body.mask, body.markup),
        base_url=base_url,
        idempotency_key=check_idempotency_key(request.headers.get("Idempotency-Key")),
        reservation=reservation,
    )
    response = _job_response(public(job), 202)
    response.headers["Location"] = f"/v1/images/jobs/{job.id}"
    response.headers["Preference-Applied"] = PREFERENCE
    return response


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["id"]
    if not JOB_ID.match(job_id):
        raise not_found(job_id)
    return job_id


@routes.get("/v1/images/jobs/{id}")
async def get_job(request: web.Request) -> web.StreamResponse:
    job_id = _job_id(request)
    service = request.app[JOBS].service
    view = await service.get(owner(request), job_id)
    if view is None:
        raise not_found(job_id)
    if view.result is None:
        return _job_response(view.body)
    try:
        return await _with_result(request, service, view)
    finally:
        await service.close(view)


async def _with_result(request: web.Request, service, view) -> web.StreamResponse:
    """The job object with ``"result": <the stored result.json>`` as its last member: the
    stored bytes are copied in ``RESULT_CHUNK`` pieces, read in a thread, never decoded, so a
    result of hundreds of MB costs the event loop only the copies."""
    head = json.dumps(view.body).encode()[:-1] + b', "result": '
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.content_length = len(head) + view.result_size + 1
    timeout = request.app[CONFIG].http.write_timeout  # each write: a client must keep reading
    await write_within(request, response, head, timeout)
    await copy_within(
        request,
        response,
        lambda n: service.read(view, n),
        view.result_size,
        RESULT_CHUNK,
        timeout,
        f"result of {view.body['id']}",
    )
    await write_within(request, response, b"}", timeout, eof=True)
    return response


@routes.delete("/v1/images/jobs/{id}")
async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    job = await request.app[JOBS].service.cancel(owner(request), job_id)
    if job is None:
        raise not_found(job_id)
    if job.status in (SUCCEEDED, FAILED):
        raise APIError(
            409,
            f"Job {job.id} has already {job.status}; only queued or running jobs can be cancelled.",
            code="job_already_finished",
        )
    return _job_response(public(job), 202 if job.status == RUNNING else 200)


def setup_jobs(app: web.Application) -> None:
    """Add the job routes, and start/stop the jobs after/before the app's resources (this
    cleanup context must come after the one that creates them). Bad job settings fail here."""
    check_config(app[CONFIG].jobs)
    app.add_routes(routes)

    async def jobs_context(app: web.Application):
        state = app[STATE]
        app[JOBS] = await start_jobs(
            app[CONFIG],
            objects=app[STORE],
            edits=app[SERVICE],
            batcher=app[BATCHER],
            budget=app[BUDGET],
            metrics=app[METRICS],
            draining=lambda: state.draining,
        )
        yield
        await app[JOBS].close()

    app.cleanup_ctx.append(jobs_context)
