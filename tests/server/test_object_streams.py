"""``open_object`` of both stores (server/storage): an object read in chunks, byte-exact, with
its size; None when missing or expired (and an expired one is deleted), as ``get_object``.
The S3 store runs against the real S3 server of tests/s3.py."""

from __future__ import annotations

import os
import time

from server.storage import FileStore
from tests.server.test_s3_storage import aws_env, keys, make, prefix  # noqa: F401 - fixtures

DATA = os.urandom(300_000)


def read_all(opened, chunk: int = 65_536) -> bytes:
    stream, size = opened
    parts = []
    try:
        while piece := stream.read(chunk):
            parts.append(piece)
    finally:
        stream.close()
    data = b"".join(parts)
    assert len(data) == size
    return data


def test_local_objects_open_in_chunks_and_expire(tmp_path):
    store = FileStore(tmp_path, ttl_s=60)
    store.put_object("jobs/j/result.json", DATA, "application/json")
    assert read_all(store.open_object("jobs/j/result.json")) == DATA
    assert store.open_object("jobs/j/missing") is None
    old = time.time() - 61
    os.utime(tmp_path / "objects/jobs/j/result.json", (old, old))
    assert store.open_object("jobs/j/result.json") is None
    assert not (tmp_path / "objects/jobs/j/result.json").exists()  # removed on access


def test_s3_objects_open_in_chunks_and_expire(make, s3_server, prefix):  # noqa: F811
    store = make()
    store.put_object("jobs/j/result.json", DATA, "application/json")
    assert read_all(store.open_object("jobs/j/result.json")) == DATA
    assert store.open_object("jobs/j/missing") is None
    short = make(ttl_s=1)
    short.put_object("jobs/old", b"x", "text/plain")
    time.sleep(2.5)
    assert short.open_object("jobs/old") is None
    assert "objects/jobs/old" not in keys(s3_server, prefix)
