"""Fixtures of the end-to-end tests (tests/e2e/): the real server (``python -m server``) in a
subprocess, started by ``benchmarks.server_process.ServerProcess`` (the one launcher) on a free
loopback port, called as a user would."""

from __future__ import annotations

import openai
import pytest

from benchmarks.server_process import ServerProcess


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Factory: ``start_server(args, key=None, ready_s=90, stop_s=30, timeout=60)`` runs
    ``python -m server --host 127.0.0.1 --port <free> *args``, waits until /ready answers and
    returns ``(server, client)``: the ``ServerProcess`` (``.base`` URL, ``.port``, ``.proc``,
    ``.log``) and an ``openai.OpenAI`` on ``<base>/v1`` with ``key`` (any string when the server
    runs ``--no-auth``), no retries, ``timeout`` s per call.

    At the end of the module each client is closed and each server stopped (SIGTERM, SIGKILL
    after ``stop_s``); a test or fixture may stop its server earlier (``server.stop()``) to check
    the exit code."""
    started: list[tuple[ServerProcess, openai.OpenAI | None, float]] = []

    def start(args, *, key=None, ready_s=90.0, stop_s=30.0, timeout=60.0):
        srv = ServerProcess(list(args), tmp_path_factory.mktemp("server") / "server.log")
        started.append((srv, None, stop_s))
        srv.wait_ready(ready_s)
        client = openai.OpenAI(
            base_url=srv.base + "/v1", api_key=key or "no-key", max_retries=0, timeout=timeout
        )
        started[-1] = (srv, client, stop_s)
        return srv, client

    yield start
    for srv, client, stop_s in reversed(started):
        if client is not None:
            client.close()
        srv.stop(stop_s)


@pytest.fixture(scope="module")
def server(served) -> str:
    """Base URL of the module's server (each module defines ``served`` = start_server(...))."""
    return served[0].base


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    """The module's OpenAI client."""
    return served[1]
