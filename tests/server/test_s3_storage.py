"""The S3 store against a real S3 server (SeaweedFS, ``s3_server`` in tests/s3.py): presigned
links that a client without credentials downloads byte-exact, that expire and that refuse a
wrong signature; Content-Type; generic objects; expiry and the sweep; the startup probe; and
the in-process app answering ``url`` requests with links to the bucket.

Each test works under its own key prefix of the shared bucket. The few sleeps are the TTLs of
a few seconds that the expiry checks need (S3 times have 1 s resolution)."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest

from server.config import StorageConfig
from server.storage import make_store
from server.storage.s3 import S3Store
from tests.helpers import AUTH, IMG, MASK, edit_form, edit_ok, expect_error

PNG = cv2.imencode(".png", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))[1].tobytes()


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    """The server's credentials in boto3's standard variables, nothing else AWS-ish."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def make(s3_server, aws_env, prefix):
    """``make(ttl_s=3600, **settings)``: an S3 store on the test's prefix, built by
    ``make_store`` as the server builds it; closed at the end."""
    stores = []

    def build(ttl_s: int = 3600, **settings) -> S3Store:
        settings.setdefault("s3_prefix", prefix)
        store = make_store(
            StorageConfig(
                file_ttl=ttl_s,
                s3_bucket=s3_server.bucket,
                s3_endpoint_url=s3_server.endpoint,
                s3_addressing_style="path",
                **settings,
            )
        )
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


def fetch(url: str) -> tuple[int, dict, bytes]:
    """GET with no credentials at all (as a browser or the SDK user would)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def keys(s3_server, prefix: str) -> set[str]:
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    return {o["Key"][len(prefix) :] for o in listed.get("Contents", ())}


# ==================================================================== links


@pytest.mark.parametrize(
    "fmt, ctype", [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]
)
def test_presigned_link_downloads_byte_exact_with_content_type(make, s3_server, prefix, fmt, ctype):
    store = make(ttl_s=900)
    data = os.urandom(3000) + fmt.encode()
    name = store.put(data, fmt)
    assert name.endswith("." + fmt) and len(name) == 33 + len(fmt)
    assert keys(s3_server, prefix) == {name}
    url = store.link(name, "http://ignored")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3_server.endpoint
    assert parts.path == f"/{s3_server.bucket}/{prefix}{name}"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["900"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    status, headers, body = fetch(url)
    assert status == 200 and body == data
    assert headers["Content-Type"] == ctype
    assert headers["Cache-Control"] == "private, max-age=900"
    assert store.open(name) is None  # nothing is served from our own files route


def test_expired_link_is_refused(make):
    store = make(ttl_s=1)
    url = store.link(store.put(PNG, "png"), "")
    assert fetch(url)[0] == 200
    time.sleep(2.5)
    status, _, body = fetch(url)
    assert status == 403 and b"expired" in body.lower()


def test_wrong_or_missing_signature_is_refused(make, s3_server, prefix):
    store = make()
    name = store.put(PNG, "png")
    url = store.link(name, "")
    sig = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert fetch(url.replace(sig, flipped))[0] == 403
    other = store.put(b"other", "png")  # a valid signature does not open another object
    assert fetch(url.replace(name, other))[0] == 403
    longer = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")  # nor a longer life
    assert longer != url and fetch(longer)[0] == 403
    assert fetch(f"{s3_server.endpoint}/{s3_server.bucket}/{prefix}{name}")[0] == 403
    assert fetch(url)[0] == 200


def test_link_endpoint_is_the_host_clients_use(make, s3_server):
    public = s3_server.endpoint.replace("127.0.0.1", "localhost")
    store = make(s3_link_endpoint_url=public)
    url = store.link(store.put(PNG, "png"), "")
    assert url.startswith(public + "/")
    assert fetch(url)[:3:2] == (200, PNG)  # signed for that host, and it works there
    with pytest.raises(ValueError, match="not an image name"):
        store.link("../../etc/passwd", "")


# ==================================================================== generic objects


def test_objects_roundtrip_with_content_type(make, s3_server, prefix):
    store = make()
    store.put_object("jobs/j1/state.json", b'{"status": "queued"}', "application/json")
    assert store.get_object("jobs/j1/state.json") == b'{"status": "queued"}'
    head = s3_server.client().head_object(
        Bucket=s3_server.bucket, Key=f"{prefix}objects/jobs/j1/state.json"
    )
    assert head["ContentType"] == "application/json"
    store.put_object("jobs/j1/state.json", b"v2", "application/json")
    assert store.get_object("jobs/j1/state.json") == b"v2"
    store.delete_object("jobs/j1/state.json")
    assert store.get_object("jobs/j1/state.json") is None
    store.delete_object("jobs/j1/state.json")  # missing: no error
    assert keys(s3_server, prefix) == set()


def test_objects_are_shared_by_replicas(make):
    a, b = make(), make()  # two servers configured alike
    a.put_object("jobs/x", b"from a", "text/plain")
    assert b.get_object("jobs/x") == b"from a"


def test_bad_keys_never_reach_the_bucket(make, s3_server, prefix):
    store = make()
    for key in ("../other-prefix/x", "", "a//b", "Upper", ".hidden"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_object(key, b"x", "text/plain")
        with pytest.raises(ValueError, match="invalid object key"):
            store.get_object(key)
    with pytest.raises(ValueError, match="invalid content type"):
        store.put_object("k", b"x", "text/plain\r\nX-Amz-Acl: public-read")
    assert keys(s3_server, prefix) == set()


# ==================================================================== expiry


def test_expired_object_is_not_returned_and_is_deleted(make, s3_server, prefix):
    store = make(ttl_s=1)
    store.put_object("jobs/old", b"x", "text/plain")
    time.sleep(2.5)
    assert store.get_object("jobs/old") is None
    assert keys(s3_server, prefix) == set()


def test_sweep_deletes_only_expired_objects_of_ours(make, s3_server, prefix):
    client = s3_server.client()
    writer = make()
    old_image = writer.put(PNG, "png")
    writer.put_object("jobs/old", b"x", "text/plain")
    foreign = f"{prefix}someone-elses.txt"  # under our prefix, but not a name of ours
    client.put_object(Bucket=s3_server.bucket, Key=foreign, Body=b"keep")
    outside = f"x{prefix}objects/jobs/old"  # another prefix
    client.put_object(Bucket=s3_server.bucket, Key=outside, Body=b"keep")
    # S3's LastModified has whole seconds: a new object can look up to 1 s older than it is,
    # so the TTL leaves the new ones 3 s of slack on a busy machine and the old ones 2 s
    time.sleep(6)
    new_image = writer.put(PNG, "png")
    writer.put_object("jobs/new", b"x", "text/plain")

    assert make(ttl_s=4, s3_no_sweep=True).cleanup() == 0  # lifecycle rules' job then
    assert make(ttl_s=4).cleanup() == 2
    assert keys(s3_server, prefix) == {new_image, "objects/jobs/new", "someone-elses.txt"}
    assert old_image not in keys(s3_server, prefix)
    assert client.get_object(Bucket=s3_server.bucket, Key=outside)["Body"].read() == b"keep"
    client.delete_objects(
        Bucket=s3_server.bucket, Delete={"Objects": [{"Key": foreign}, {"Key": outside}]}
    )


def test_sweep_failure_is_logged_not_raised(make, caplog):
    store = make()
    store.put(PNG, "png")
    store.bucket = "no-such-bucket-here"  # as if the bucket went away while serving
    assert store.cleanup() == 0
    assert "sweep of s3://no-such-bucket-here" in caplog.text


# ==================================================================== startup probe


def test_startup_probe_names_the_problem(s3_server, aws_env, monkeypatch):
    base = dict(s3_endpoint_url=s3_server.endpoint, s3_addressing_style="path")
    with pytest.raises(RuntimeError, match="'no-such-bucket-here'.*--s3-bucket"):
        make_store(StorageConfig(s3_bucket="no-such-bucket-here", **base))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(RuntimeError, match="AWS_SECRET_ACCESS_KEY"):
        make_store(StorageConfig(s3_bucket=s3_server.bucket, **base))


# ==================================================================== the app


async def test_app_answers_url_requests_with_bucket_links(make_client, s3_server, aws_env, prefix):
    cl = await make_client(
        s3_bucket=s3_server.bucket,
        s3_prefix=prefix,
        s3_endpoint_url=s3_server.endpoint,
        s3_addressing_style="path",
    )
    body = await edit_ok(cl, edit_form(IMG, MASK, response_format="url", n=2))
    urls = [d["url"] for d in body["data"]]
    names = set()
    for url in urls:
        assert url.startswith(f"{s3_server.endpoint}/{s3_server.bucket}/{prefix}")
        status, headers, data = fetch(url)
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        names.add(urlsplit(url).path.rsplit("/", 1)[1])
    assert keys(s3_server, prefix) == names and len(names) == 2
    # the files route has nothing to serve in S3 mode
    resp = await cl.get(f"/v1/images/files/{names.pop()}", headers=AUTH)
    await expect_error(resp, 404, code="file_not_found", param=None)
