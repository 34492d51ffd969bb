"""End to end with S3: the real server (``python -m server --s3-bucket ...``) against a real S3
server (SeaweedFS, tests/s3.py), credentials in the standard ``AWS_*`` variables only; the
official SDK asks for ``url`` images and a plain HTTP client with no credentials downloads them
from the bucket, as a user of any replica would."""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.helpers import BOX, H, W, alpha_mask, decode_image, outside, png, scene


@pytest.fixture(scope="module")
def served(start_server, s3_server):
    with pytest.MonkeyPatch.context() as mp:  # the child copies the environment at its start
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        return start_server(
            [
                "--no-auth",
                "--models-dir",
                "/nonexistent-models-dir",  # the built-in model
                "--s3-bucket",
                s3_server.bucket,
                "--s3-prefix",
                "e2e/",
                "--s3-endpoint-url",
                s3_server.endpoint,
                "--s3-addressing-style",
                "path",
                "--file-ttl",
                "600",
                "--log-level",
                "WARNING",
            ],
            ready_s=60,
            stop_s=10,
        )


def test_url_images_come_from_the_bucket(client, s3_server):
    img = scene(W, H)
    r = client.images.edit(
        image=("photo.png", png(img), "image/png"),
        mask=("mask.png", png(alpha_mask(W, H, BOX)), "image/png"),
        prompt="remove the red square",
        response_format="url",
        output_format="png",  # lossless: the kept pixels stay exact
        n=2,
    )
    assert len(r.data) == 2 and len({d.url for d in r.data}) == 2
    stored = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="e2e/")
    names = {o["Key"] for o in stored["Contents"]}
    for d in r.data:
        assert d.b64_json is None
        parts = urlsplit(d.url)
        assert f"{parts.scheme}://{parts.netloc}" == s3_server.endpoint
        assert parts.path.startswith(f"/{s3_server.bucket}/e2e/") and "X-Amz-Signature=" in d.url
        assert "X-Amz-Expires=600" in d.url
        assert parts.path.split("/", 2)[2] in names
        with urllib.request.urlopen(d.url, timeout=10) as resp:  # no credentials
            assert resp.headers["Content-Type"] == "image/png"
            out, fmt = decode_image(resp.read())
        assert fmt == "PNG"
        keep = outside(img.shape[:2], BOX)
        assert out.shape[:2] == img.shape[:2]
        assert np.array_equal(out[..., :3][keep], img[keep])
