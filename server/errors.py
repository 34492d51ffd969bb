"""OpenAI-shaped errors: one exception type and one mapping function (no aiohttp here: the
HTTP layer's middleware, ``http/middlewares.py``, renders what ``to_api_error`` returns).

Every failure a client can see is an ``APIError`` with status, type, code, param and a message
that says how to fix the request. A ``ProtocolError`` (a field is wrong; it carries its param and
code) becomes a 400. Anything else becomes a 500 ``server_error`` whose body holds no stack
trace, path or exception text (those go to the log only).
"""

from __future__ import annotations

import logging
import uuid

from .protocol import ProtocolError

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


def to_api_error(exc: BaseException) -> APIError:
    """The one mapping from any exception to what the client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ProtocolError):
        return invalid(exc.message, exc.param, exc.code)
    incident = uuid.uuid4().hex[:12]
    log.error("internal error (incident %s)", incident, exc_info=exc)
    return server_error(
        f"The server had an error while processing your request (incident {incident}). "
        "Retry; if it persists, report the incident id to the server's operator."
    )
