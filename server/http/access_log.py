"""What aiohttp's connection handler logs: the access line, and requests it could not parse.

- ``ClientAccessLogger``: one line per answered request, naming the client as
  ``client_address`` found it (behind a trusted proxy: the proxy's client, not the proxy).
- ``ProtocolErrorLogger``: a malformed request (bad request line, header, chunk) is the
  client's fault, answered 400 by aiohttp before any handler runs. aiohttp logs each at ERROR
  with a traceback (kilobytes per line: one client can write gigabytes an hour); here each is
  one INFO line without a traceback, and at most one per ``REPORT_EVERY_S`` (the next one
  says how many were left out). Every other error is logged as aiohttp logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from .client_address import CLIENT_ADDRESS

#: at most one line about malformed requests this often (seconds)
REPORT_EVERY_S = 60.0
#: longest part of aiohttp's parse-error message kept (it may quote the client's bytes)
MAX_REASON_CHARS = 200


class ClientAccessLogger(AbstractAccessLogger):
    """``<client> "<method> <path> HTTP/x.y" <status> <bytes> <seconds>s`` per request."""

    def log(self, request, response, time: float) -> None:  # noqa: A002 - aiohttp's name
        client = request.get(CLIENT_ADDRESS) or request.remote or "-"
        version = f"{request.version.major}.{request.version.minor}"
        self.logger.info(
            '%s "%s %s HTTP/%s" %s %s %.6fs',
            client,
            request.method,
            request.path_qs,
            version,
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class ProtocolErrorLogger(logging.LoggerAdapter):
    """aiohttp's server logger with malformed requests logged briefly and rate-limited
    (given to the connection handler as its ``logger``). ``clock``: ``time.monotonic``
    (tests pass a fake one)."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = REPORT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self.every_s = every_s
        self.clock = clock
        self._next = float("-inf")
        self._left_out = 0

    def log(self, level, msg, *args, **kwargs) -> None:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        now = self.clock()
        if now < self._next:
            self._left_out += 1
            return
        self._next = now + self.every_s
        left_out, self._left_out = self._left_out, 0
        # the first line only: the next ones quote the client's bytes
        reason = str(getattr(exc, "message", "") or type(exc).__name__).strip()
        reason = reason.splitlines()[0][:MAX_REASON_CHARS] if reason else type(exc).__name__
        peer = args[0] if args else "-"
        self.logger.log(
            min(level, logging.INFO),
            "malformed request from %s answered 400: %s%s",
            peer,
            reason,
            f" ({left_out} more since the last such line)" if left_out else "",
        )
