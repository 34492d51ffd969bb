"""FileStore: unguessable ids, expiry, cleanup, no path tricks."""

from __future__ import annotations

import os
import re
import time

import pytest

from server.storage import FileStore


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(tmp_path / "files", ttl_s=3600)


def test_put_get_roundtrip(store):
    for ext, ctype in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
        name = store.put(b"data-" + ext.encode(), ext)
        assert re.fullmatch(r"[0-9a-f]{32}\." + ext, name)
        path, content_type = store.get(name)
        assert content_type == ctype
        assert path.read_bytes() == b"data-" + ext.encode()
        assert path.parent == store.directory


def test_ids_are_unique_and_random(store):
    names = {store.put(b"x", "png") for _ in range(200)}
    assert len(names) == 200
    ids = [n[:32] for n in names]
    # 128 random bits: every hex digit shows up across 200 ids
    assert set("".join(ids)) == set("0123456789abcdef")


def test_no_partial_files_left(store):
    store.put(b"abc", "png")
    assert [p.name for p in store.directory.iterdir() if p.name.startswith(".")] == []


def test_rejects_unknown_extension(store):
    with pytest.raises(ValueError):
        store.put(b"x", "gif")
    with pytest.raises(ValueError):
        store.put(b"x", "../png")


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".",
        "",
        "0" * 31 + ".png",
        "0" * 33 + ".png",
        "G" * 32 + ".png",
        "A" * 32 + ".png",
        "0" * 32 + ".gif",
        "0" * 32 + ".PNG",
        "0" * 32,
        "0" * 32 + ".png/..",
        "0" * 32 + ".png\n",
        "0" * 32 + ".png\x00",
        "../" + "0" * 32 + ".png",
        "0" * 32 + ".png.png",
        "." + "0" * 32 + ".png.part",
    ],
)
def test_bad_names_are_none(store, name):
    assert store.get(name) is None


def test_traversal_never_touches_outside(tmp_path, store):
    secret = tmp_path / ("a" * 32 + ".png")
    secret.write_bytes(b"secret")
    assert store.get("../" + secret.name) is None
    assert store.get(str(secret)) is None
    assert secret.exists()


def test_uppercase_hex_is_none(store, tmp_path):
    name = store.put(b"x", "png")
    assert store.get(name.upper()) is None  # ".PNG"
    upper = "ABCDEF" + "0" * 26 + ".png"
    (store.directory / upper).write_bytes(b"x")  # even if such a file exists, it is not served
    assert store.get(upper) is None


def test_expiry_by_ttl(tmp_path):
    store = FileStore(tmp_path, ttl_s=1)
    name = store.put(b"x", "png")
    assert store.get(name) is not None
    old = time.time() - 5
    os.utime(tmp_path / name, (old, old))  # as if written 5 s ago
    assert store.get(name) is None
    assert not (tmp_path / name).exists()  # an expired file is removed on access


def test_expiry_real_time(tmp_path):
    store = FileStore(tmp_path, ttl_s=0)
    name = store.put(b"x", "png")
    time.sleep(0.05)
    assert store.get(name) is None


def test_cleanup_removes_only_expired(tmp_path):
    store = FileStore(tmp_path, ttl_s=60)
    fresh = store.put(b"fresh", "png")
    stale = [store.put(b"stale", "webp") for _ in range(3)]
    partial = tmp_path / ".abc.png.part"
    partial.write_bytes(b"half")
    old = time.time() - 3600
    for n in stale:
        os.utime(tmp_path / n, (old, old))
    os.utime(partial, (old, old))
    assert store.count() == 5
    assert store.cleanup() == 4
    assert store.count() == 1
    assert store.get(fresh) is not None
    assert all(store.get(n) is None for n in stale)
    assert store.cleanup() == 0


def test_default_directory_is_temporary():
    store = FileStore(None, ttl_s=60)
    directory = store.directory
    name = store.put(b"x", "png")
    assert (directory / name).exists()
    store.close()
    assert not directory.exists()


def test_persistent_directory_survives_restart(tmp_path):
    a = FileStore(tmp_path, ttl_s=3600)
    name = a.put(b"keep", "png")
    a.close()
    b = FileStore(tmp_path, ttl_s=3600)
    path, _ = b.get(name)
    assert path.read_bytes() == b"keep"
