"""FileStore (the local store): unguessable ids, expiry, cleanup, no path tricks, generic
objects; the storage settings' checks and ``make_store``. The S3 store and the behaviour both
stores share are tested against a real S3 server in test_s3_storage.py."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from server.config import StorageConfig
from server.http.app import create_app
from server.storage import FileStore, check_config, make_store
from tests.helpers import config


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(tmp_path / "files", ttl_s=3600)


def test_put_get_roundtrip(store):
    for ext, ctype in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
        name = store.put(b"data-" + ext.encode(), ext)
        assert re.fullmatch(r"[0-9a-f]{32}\." + ext, name)
        path, content_type = store.open(name)
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
    assert store.open(name) is None


def test_traversal_never_touches_outside(tmp_path, store):
    secret = tmp_path / ("a" * 32 + ".png")
    secret.write_bytes(b"secret")
    assert store.open("../" + secret.name) is None
    assert store.open(str(secret)) is None
    assert secret.exists()


def test_uppercase_hex_is_none(store, tmp_path):
    name = store.put(b"x", "png")
    assert store.open(name.upper()) is None  # ".PNG"
    upper = "ABCDEF" + "0" * 26 + ".png"
    (store.directory / upper).write_bytes(b"x")  # even if such a file exists, it is not served
    assert store.open(upper) is None


def test_expiry_by_ttl(tmp_path):
    store = FileStore(tmp_path, ttl_s=1)
    name = store.put(b"x", "png")
    assert store.open(name) is not None
    old = time.time() - 5
    os.utime(tmp_path / name, (old, old))  # as if written 5 s ago
    assert store.open(name) is None
    assert not (tmp_path / name).exists()  # an expired file is removed on access


def test_expiry_real_time(tmp_path):
    store = FileStore(tmp_path, ttl_s=0)
    name = store.put(b"x", "png")
    time.sleep(0.05)
    assert store.open(name) is None


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
    assert store.open(fresh) is not None
    assert all(store.open(n) is None for n in stale)
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
    path, _ = b.open(name)
    assert path.read_bytes() == b"keep"


# ==================================================================== generic objects


def test_objects_roundtrip_under_objects_folder(store):
    store.put_object("jobs/abc-1/result.json", b'{"ok": true}', "application/json")
    assert (store.directory / "objects/jobs/abc-1/result.json").read_bytes() == b'{"ok": true}'
    assert store.get_object("jobs/abc-1/result.json") == b'{"ok": true}'
    store.put_object("jobs/abc-1/result.json", b"v2", "application/json")  # replaces
    assert store.get_object("jobs/abc-1/result.json") == b"v2"
    store.delete_object("jobs/abc-1/result.json")
    assert store.get_object("jobs/abc-1/result.json") is None
    store.delete_object("jobs/abc-1/result.json")  # deleting a missing key is no error
    assert store.get_object("jobs/other") is None
    assert store.get_object("jobs") is None  # a folder is not an object
    assert [p.name for p in store.directory.rglob(".*")] == []  # no partial writes left


BAD_KEYS = [
    "",
    "/abs",
    "trailing/",
    "a//b",
    "..",
    "../escape",
    "a/../b",
    ".hidden",
    "a/.hidden",
    "Upper",
    "sp ace",
    "nul\x00",
    "new\nline",
    "back\\slash",
    "é",
    "x" * 129,
    "/".join("abcdefghi"),  # 9 segments
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_object_keys_are_refused(tmp_path, key):
    store = FileStore(tmp_path / "files", ttl_s=3600)
    for call in (
        lambda: store.put_object(key, b"x", "text/plain"),
        lambda: store.get_object(key),
        lambda: store.delete_object(key),
    ):
        with pytest.raises(ValueError, match="invalid object key"):
            call()
    assert list(tmp_path.rglob("*")) == [tmp_path / "files"]  # nothing written anywhere


@pytest.mark.parametrize("ctype", ["", "png", "image/png\r\nX-Evil: 1", "image/*"])
def test_bad_content_types_are_refused(store, ctype):
    with pytest.raises(ValueError, match="invalid content type"):
        store.put_object("k", b"x", ctype)


def test_objects_expire_like_images(tmp_path):
    store = FileStore(tmp_path, ttl_s=60)
    store.put_object("jobs/old", b"old", "text/plain")
    store.put_object("jobs/new", b"new", "text/plain")
    old = time.time() - 61
    os.utime(tmp_path / "objects/jobs/old", (old, old))
    assert store.get_object("jobs/old") is None
    assert not (tmp_path / "objects/jobs/old").exists()  # removed on access
    assert store.get_object("jobs/new") == b"new"


def test_cleanup_sweeps_objects_and_keeps_foreign_files(tmp_path):
    store = FileStore(tmp_path, ttl_s=60)
    image = store.put(b"img", "png")
    store.put_object("jobs/a/result", b"a", "text/plain")
    store.put_object("jobs/b/result", b"b", "text/plain")
    foreign = tmp_path / "README.txt"  # not a name of ours: never deleted
    foreign.write_text("operator's notes")
    old = time.time() - 3600
    for path in (tmp_path / image, tmp_path / "objects/jobs/a/result", foreign):
        os.utime(path, (old, old))
    assert store.cleanup() == 2
    assert store.open(image) is None and store.get_object("jobs/a/result") is None
    assert store.get_object("jobs/b/result") == b"b"
    assert foreign.exists()
    # the emptied folder goes only once it has been empty for a whole TTL (a writer may be
    # about to use it)
    assert (tmp_path / "objects/jobs/a").is_dir()
    os.utime(tmp_path / "objects/jobs/a", (old, old))
    assert store.cleanup() == 0
    assert not (tmp_path / "objects/jobs/a").exists()
    assert (tmp_path / "objects/jobs/b/result").exists()


def test_local_links_point_at_the_files_route(store):
    name = store.put(b"x", "webp")
    assert store.link(name, "http://h:1") == f"http://h:1/v1/images/files/{name}"


# ==================================================================== settings


def test_no_storage_settings_make_the_local_store(tmp_path):
    store = make_store(StorageConfig(files_dir=tmp_path, file_ttl=5))
    assert isinstance(store, FileStore)
    assert (store.directory, store.ttl_s) == (tmp_path, 5)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"s3_region": "eu-west-1"}, "--s3-region: S3 settings, but no --s3-bucket"),
        ({"s3_endpoint_url": "http://x", "s3_no_sweep": True}, "url, --s3-no-sweep: S3"),
        ({"s3_bucket": "b", "files_dir": Path("/tmp/x")}, None),  # the folder of other data
        ({"s3_bucket": "b", "s3_prefix": "no-slash"}, "--s3-prefix 'no-slash'"),
        ({"s3_bucket": "b", "s3_prefix": "/abs/"}, "--s3-prefix"),
        ({"s3_bucket": "b", "s3_prefix": "a/../"}, "--s3-prefix"),  # clients collapse ".."
        ({"s3_bucket": "b", "s3_prefix": "team-a/inpaint.v2/"}, None),
        ({"s3_bucket": "b", "s3_addressing_style": "dns"}, "auto, path, virtual"),
        ({"s3_bucket": "b", "s3_endpoint_url": "minio:9000"}, "http:// or https://"),
        ({"s3_bucket": "b", "s3_link_endpoint_url": "ftp://x"}, "--s3-link-endpoint-url"),
        ({"s3_bucket": "b", "file_ttl": 8 * 86400}, "a presigned S3 link lives 1..604800 s"),
        ({"s3_bucket": "b", "file_ttl": 0}, "--file-ttl 0"),
        ({"s3_bucket": "b", "file_ttl": 7 * 86400}, None),
        ({"s3_bucket": "b", "s3_prefix": "", "s3_endpoint_url": "https://x"}, None),
    ],
)
def test_storage_settings_are_checked(settings, message):
    cfg = StorageConfig(**settings)
    if message is None:
        check_config(cfg)
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config(cfg)


def test_bad_storage_settings_stop_create_app():
    with pytest.raises(ValueError, match="no --s3-bucket"):
        create_app(config(s3_region="eu-west-1"))
