"""OpenAI-shaped errors: one exception type and one mapping function (no aiohttp here: the
HTTP layer's middleware, ``http/middlewares.py``, renders what ``to_api_error`` returns).

Every failure a client can see is an ``APIError`` with status, type, code, param and a message
that says how to fix the request. A ``ProtocolError`` (a field is wrong; it carries its param and
code) becomes a 400. Anything else becomes a 500 ``server_error`` whose body holds no stack
trace, path or exception text (those go to the log only).

Retry advice is decided here, once, for every error (``APIError.retry``, defaults by status in
``RETRYABLE_STATUSES``) and travels as headers the official SDKs read (openai-python's and
openai-node's ``_should_retry``): ``x-should-retry: false`` on a failure that a retry of the
same request cannot fix (validation, not found, the per-request deadline, a request too large
for the server), ``x-should-retry: true`` only where a retry can succeed and the SDKs would not
retry that status on their own, and ``Retry-After`` on every retryable 429/503.
"""

from __future__ import annotations

import logging
import uuid

from .protocol import ProtocolError

log = logging.getLogger("server.errors")


#: statuses the official SDKs retry by themselves when no ``x-should-retry`` header says
#: otherwise (openai-python ``_should_retry``, the same in openai-node): 408, 409, 429, >= 500
SDK_RETRIED = frozenset({408, 409, 429})
#: statuses whose failure a retry of the same request can fix, unless the error says otherwise:
#: a slow upload (408), rate limits and full queues (429), internal faults (500), shutting down
#: or not ready (503). Everything else (4xx validation, 404, 409 state conflicts, 413, 504 = the
#: request's own deadline) fails again the same way.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503})
#: Retry-After (seconds) of a retryable 429/503 that names none
DEFAULT_RETRY_AFTER_S = 1
#: the code of a 400 whose raiser named none: every 400 carries one
DEFAULT_400_CODE = "invalid_value"


def sdk_retries(status: int) -> bool:
    """Whether the SDKs retry ``status`` when the answer carries no ``x-should-retry``."""
    return status in SDK_RETRIED or status >= 500


class APIError(Exception):
    """An error answer. ``retry``: whether sending the same request again can succeed (None =
    the default of its status, ``RETRYABLE_STATUSES``); ``retry_after_s``: when (429/503).
    ``headers`` holds the retry headers (``retry_headers``) plus any given ones."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retry: bool | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code or (DEFAULT_400_CODE if status == 400 else None)
        self.param = param
        self.retry = status in RETRYABLE_STATUSES if retry is None else retry
        given = dict(headers or {})
        if retry_after_s is None:  # a caller's own Retry-After header counts as one
            value = next((v for k, v in given.items() if k.lower() == "retry-after"), None)
            retry_after_s = int(value) if value is not None and value.isdecimal() else None
        self.headers = {**retry_headers(status, self.retry, retry_after_s), **given}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def retry_headers(status: int, retry: bool, retry_after_s: int | None) -> dict[str, str]:
    """The headers that tell the SDKs whether (and when) to retry: see the module docstring."""
    if not retry:
        return {"x-should-retry": "false"}
    headers = {} if sdk_retries(status) else {"x-should-retry": "true"}
    if retry_after_s is None and status in (429, 503):
        retry_after_s = DEFAULT_RETRY_AFTER_S
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(0, int(retry_after_s)))
    return headers


def invalid(message: str, param: str | None, code: str | None = DEFAULT_400_CODE) -> APIError:
    """400 invalid_request_error; ``code`` None also gets ``DEFAULT_400_CODE`` (every 400 has
    a code), and a retry of the same request cannot succeed (``x-should-retry: false``)."""
    return APIError(400, message, code=code, param=param)


def server_error(
    message: str = "The server had an error while processing your request.",
) -> APIError:
    return APIError(500, message, type="server_error", code="server_error")


def overloaded(retry_after_s: int, message: str) -> APIError:
    """429: busy now (a limit, a full queue, the memory budget); ``Retry-After`` says when."""
    return APIError(
        429,
        message,
        type="rate_limit_exceeded",
        code="rate_limit_exceeded",
        retry_after_s=retry_after_s,
    )


def too_large_for_server(message: str) -> APIError:
    """429 that no wait fixes: the request alone exceeds a capacity of this server (its queue,
    its memory budget), so it would be refused on an idle server too. A 429 as OpenAI answers a
    request over a per-minute limit, but with ``x-should-retry: false`` and no ``Retry-After``:
    the message says what to make smaller."""
    return APIError(
        429, message, type="rate_limit_exceeded", code="rate_limit_exceeded", retry=False
    )


def shutting_down() -> APIError:
    """503 with ``Retry-After``: another instance (or this one once restarted) can serve it."""
    return APIError(
        503,
        "The server is shutting down; retry on another instance.",
        type="server_error",
        code="shutting_down",
        retry_after_s=DEFAULT_RETRY_AFTER_S,
    )


def timeout_error(message: str, status: int = 504) -> APIError:
    """The request's own deadline passed: the same request would take as long again, so no
    retry (``x-should-retry: false``); the message says what to make smaller."""
    return APIError(status, message, type="timeout", code="timeout", retry=False)


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
