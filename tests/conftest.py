"""Shared pytest fixtures, visible to every directory under tests/.

- ``make_client``: the one in-process HTTP client: ``await make_client(reg=None, **settings)``
  builds ``create_app(config(**settings), registry=reg or registry())`` (tests/helpers.py) and
  wraps it in aiohttp's test client (loopback, a free port: ``client.port`` for raw sockets,
  ``client.app`` for the app). ``load_models=True`` leaves the registry to the real loader
  (``tmp_models=`` names its folder). Closed at the end of the test.

Session-scoped (built once per test run, reused by every test file):

- ``tiny_pipeline_dir``: the tiny random-weight SD-inpainting diffusers pipeline
  (``export.tiny.build_tiny_pipeline``, seed 0) saved with ``save_pretrained``; load it with
  ``StableDiffusionInpaintPipeline.from_pretrained(tiny_pipeline_dir)``. Native size 64 px.
- ``tiny_model_fp32`` / ``tiny_model_fp16``: exported ONNX model folders of that pipeline
  (``python -m export --tiny``), each with ``manifest.json`` readable by
  ``server.models.manifest.Manifest.read``. target cpu, verified against PyTorch.
- ``s3_server``: a real S3 server (SeaweedFS on loopback, ~4 s to start; tests/s3.py): endpoint,
  bucket, credentials, ``client()`` and ``env()``.

The first fixture takes ~5 s, each export ~50 s on 2 busy cores (the fp16 export reuses the
fp32 traces in-process, ~10 s). Everything lives under one session tmp dir. Treat the folders as
read-only: copy them (``shutil.copytree``) before modifying anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.s3 import s3_server  # noqa: F401 - registers the session fixture everywhere


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    from export.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-pipeline"), seed=0)


def _export_tiny(tmp_path_factory, precision: str) -> Path:
    from export.__main__ import main

    out = tmp_path_factory.mktemp(f"tiny-{precision}") / "tiny-sd-inpaint"
    rc = main(["--tiny", "--precision", precision, "--target", "cpu", "--out", str(out)])
    assert rc == 0, f"tiny {precision} export failed (exit {rc}); see the captured output"
    return out


@pytest.fixture(scope="session")
def tiny_model_fp32(tmp_path_factory) -> Path:
    return _export_tiny(tmp_path_factory, "fp32")


@pytest.fixture(scope="session")
def tiny_model_fp16(tmp_path_factory) -> Path:
    return _export_tiny(tmp_path_factory, "fp16")


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
