"""OpenAI-shaped errors: one exception type, one mapping function, one middleware.

Every failure a client can see is an ``APIError`` with status, type, code, param and a message
that says how to fix the request. Anything else becomes a 500 ``server_error`` whose body holds
no stack trace, path or exception text (those go to the log only).
"""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web

log = logging.getLogger("server.errors")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None, code: str | None = None) -> APIError:
    """400 invalid_request_error."""
    return APIError(400, message, code=code, param=param)


def server_error(
    message: str = "The server had an error while processing your request.",
) -> APIError:
    return APIError(500, message, type="server_error", code="server_error")


def overloaded(retry_after_s: int, message: str) -> APIError:
    return APIError(
        429,
        message,
        type="rate_limit_exceeded",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def shutting_down() -> APIError:
    return APIError(
        503,
        "The server is shutting down; retry on another instance.",
        type="server_error",
        code="shutting_down",
    )


def timeout_error(message: str, status: int = 504) -> APIError:
    return APIError(status, message, type="timeout", code="timeout")


def error_response(err: APIError) -> web.Response:
    return web.Response(
        status=err.status,
        text=json.dumps(err.body()),
        content_type="application/json",
        headers=err.headers,
    )


def to_api_error(exc: BaseException) -> APIError:
    """The one mapping from any exception to what the client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, web.HTTPException):
        # aiohttp's own (404 route, 405 method, 413 body too large...): keep the status, OpenAI body.
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
    incident = uuid.uuid4().hex[:12]
    log.error("internal error (incident %s)", incident, exc_info=exc)
    return server_error(
        f"The server had an error while processing your request (incident {incident}). "
        "Retry; if it persists, report the incident id to the server's operator."
    )


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects etc. pass through
            raise
        return error_response(to_api_error(exc))
    except APIError as exc:
        return error_response(exc)
    except Exception as exc:  # noqa: BLE001 - the single catch-all that keeps internals private
        return error_response(to_api_error(exc))
