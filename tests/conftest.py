"""Shared pytest fixtures, visible to every directory under tests/.

- ``make_client``: the one in-process HTTP client: ``await make_client(reg=None, **settings)``
  builds ``create_app(config(**settings), registry=reg or registry())`` (tests/helpers.py) and
  wraps it in aiohttp's test client (loopback, a free port: ``client.port`` for raw sockets,
  ``client.app`` for the app). ``load_models=True`` leaves the registry to the real loader
  (``tmp_models=`` names its folder). Closed at the end of the test.

Session-scoped (set up once per test run, reused by every test file):

- ``tiny_pipeline_dir``: the tiny random-weight SD-inpainting diffusers pipeline
  (``export.tiny.build_tiny_pipeline``, seed 0) saved with ``save_pretrained``; load it with
  ``StableDiffusionInpaintPipeline.from_pretrained(tiny_pipeline_dir)``. Native size 64 px.
- ``tiny_model_fp32`` / ``tiny_model_fp16``: exported ONNX model folders of that pipeline
  (``python -m export --tiny``), each with ``manifest.json`` readable by
  ``server.models.manifest.Manifest.read``. target cpu, verified against PyTorch.
- ``s3_server``: a real S3 server (SeaweedFS on loopback, ~4 s to start; tests/s3.py): endpoint,
  bucket, credentials, ``client()`` and ``env()``.

The three models come from the test-model cache (tests/artifacts.py, ``.cache/test-models/``):
built once per version of export/ and of the libraries (the pipeline ~5 s, each export ~50 s on
2 busy cores; the fp16 export reuses the fp32 traces in-process, ~10 s), then reused by later
runs. Treat the folders as read-only: copy them (``shutil.copytree``) before modifying anything;
the run fails when one was written into.

At the end of every run, ``pytest_terminal_summary`` lists the skipped tests by reason: the
hardware this machine lacks and the system packages missing, with the command that installs them
(reasons made by ``tests.helpers.missing_hardware`` / ``missing_package``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import artifacts
from tests.s3 import s3_server  # noqa: F401 - registers the session fixture everywhere


@pytest.fixture(scope="session")
def tiny_pipeline_dir() -> Path:
    return artifacts.tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_fp32() -> Path:
    return artifacts.export("--tiny", "--precision", "fp32", "--target", "cpu")


@pytest.fixture(scope="session")
def tiny_model_fp16() -> Path:
    return artifacts.export("--tiny", "--precision", "fp16", "--target", "cpu")


@pytest.fixture
def make_client(aiohttp_client):
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from server.http.app import create_app
    from server.http.serve import runner_options
    from tests.helpers import config, registry

    class Server(TestServer):
        """aiohttp's test server with the connection options ``serve`` uses (it ignores the
        ``server_kwargs`` it is given)."""

        def __init__(self, app, options: dict) -> None:
            super().__init__(app)
            self.options = options

        async def _make_runner(self, **kwargs):
            return web.AppRunner(self.app, **{**kwargs, **self.options})

    async def make(reg=None, *, load_models: bool = False, **settings):
        if load_models:
            assert reg is None, "load_models=True reads the models folder: no registry to inject"
        elif reg is None:
            reg = registry()
        cfg = config(**settings)
        return await aiohttp_client(Server(create_app(cfg, registry=reg), runner_options(cfg)))

    return make


_written: dict[Path, list[str]] = {}  # shared test models written into during this run


def pytest_sessionfinish(session):
    # a test that wrote into a shared model fails the run: the tests after it, and later runs,
    # would read what it wrote
    _written.update(artifacts.changed())
    if _written:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    """Every skipped test by reason, missing hardware first, then missing Debian packages with
    the one command that installs them, then the rest; and the shared models written into."""
    from tests.helpers import MISSING_HARDWARE, MISSING_PACKAGE

    tr = terminalreporter
    by_reason: dict[str, list[str]] = {}
    for rep in tr.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(rep.nodeid)
    groups = (MISSING_HARDWARE, MISSING_PACKAGE, "")  # "": the rest
    rank = {r: next(i for i, g in enumerate(groups) if r.startswith(g)) for r in by_reason}
    count = sum(map(len, by_reason.values()))
    tr.section(f"{count} tests skipped", sep="=", bold=True, yellow=count > 0)
    for reason in sorted(by_reason, key=lambda r: (rank[r], r)):
        tr.write_line(f"{len(by_reason[reason])} x {reason}", bold=True)
        for nodeid in by_reason[reason]:
            tr.write_line(f"    {nodeid}")
    packages = sorted(
        {r.removeprefix(MISSING_PACKAGE).split(":")[0].strip() for r in by_reason if rank[r] == 1}
    )
    if packages:
        install = f"apt-get install -y {' '.join(packages)}"
        tr.write_line(f"install the missing packages (as root): {install}", red=True, bold=True)
    for entry, changes in _written.items():
        tr.write_line(
            f"FAILED: a test wrote into the shared model {entry} ({', '.join(changes)}); "
            "copy it first (shutil.copytree)",
            red=True,
            bold=True,
        )
