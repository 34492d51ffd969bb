"""Running the app: the listener, and a shutdown that keeps its promise.

On SIGTERM (or SIGINT) the server drains: new edits get 503 at once while the listener stays
up (a load balancer sees /ready fail and moves traffic); edits in flight get up to
``--shutdown-grace`` seconds to finish (async jobs running here too); past it, each request
still waiting gets a 503 (an SSE ``error`` event on a stream), each job goes back to the queue
(another replica runs it), and the process exits within the grace plus ``ABORT_S`` +
``CLOSE_S`` (+ the job runner's ``STOP_WAIT_S``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from ..config import ServerConfig
from .access_log import ClientAccessLogger, ProtocolErrorLogger
from .jobs import JOBS
from .state import SERVICE, STATE

log = logging.getLogger("server.serve")

#: after the grace: how long aborted requests get to send their 503s
ABORT_S = 0.8
#: then: how long the runner waits for connections to close
CLOSE_S = 0.4
#: see ``runner_options``
LINGER_S = 1.0


def runner_options(config: ServerConfig) -> dict:
    """How connections are handled (also given to the in-process test server)."""
    return {
        "handler_cancellation": True,
        # the client as --trusted-proxy reports it; malformed requests in brief, rate-limited
        "access_log_class": ClientAccessLogger,
        "logger": ProtocolErrorLogger(logging.getLogger("aiohttp.server")),
        # no request may take longer than this to send its headers (or sit idle between two)
        "keepalive_timeout": config.http.header_timeout,
        # compressed bodies are refused (415), never inflated
        "auto_decompress": False,
        # a refused body (401/413/415...) is not drained: after the answer the connection reads
        # (and drops, uninflated) what arrives for at most this long, so that a client still
        # sending sees the answer instead of a reset, then closes
        "lingering_time": LINGER_S,
    }


async def serve(app: web.Application, config: ServerConfig) -> None:
    """Listen on the configured address until SIGTERM/SIGINT, then drain and stop."""
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=CLOSE_S, **runner_options(config)
    )
    await runner.setup()
    site = web.TCPSite(runner, config.http.host, config.http.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await drain(app, config.http.shutdown_grace)
    finally:
        await runner.cleanup()


async def drain(app: web.Application, grace_s: float) -> None:
    """Refuse new edits, let the ones in flight finish for up to ``grace_s``, abort the rest."""
    state = app[STATE]
    state.draining = True  # the job runner claims nothing more either
    jobs = app.get(JOBS)

    def running_jobs() -> int:
        return len(jobs.runner.active) if jobs is not None else 0

    log.info(
        "draining: %d requests and %d async jobs in flight, up to %g s",
        state.in_flight,
        running_jobs(),
        grace_s,
    )
    end = time.monotonic() + grace_s
    while (state.in_flight or running_jobs()) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    if running_jobs():
        log.warning("%d async jobs outlast the grace: back to the queue", running_jobs())
    if state.in_flight:
        log.warning("%d requests outlast the %g s grace: they get 503", state.in_flight, grace_s)
        service = app.get(SERVICE)
        if service is not None:
            service.abort_all()
        end = time.monotonic() + ABORT_S
        while state.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.02)
    log.info("drained; stopping")
