"""End to end: the real server (``python -m server``) in a subprocess, called with the official
``openai`` Python SDK exactly as a user would."""

from __future__ import annotations

import base64
import time
import urllib.request

import numpy as np
import openai
import pytest

from server.models.builtin import NAME as BUILTIN
from tests.helpers import (
    BOX,
    KEY,
    H,
    W,
    alpha_mask,
    b64_image,
    decode_image,
    gif,
    inner,
    outside,
    png,
    scene,
)


@pytest.fixture(scope="module")
def served(start_server, tmp_path_factory):
    """A real server with the test key and an empty models dir (built-in model only), and the
    SDK client; on SIGTERM it shuts down cleanly, with nothing secret in its log."""
    models = tmp_path_factory.mktemp("models")
    srv, client = start_server(
        [
            "--api-key",
            KEY,
            "--models-dir",
            str(models),
            "--shutdown-grace",
            "2",
            "--log-level",
            "WARNING",
        ],
        key=KEY,
        ready_s=60,
        stop_s=10,
        timeout=60,
    )
    yield srv, client
    code = srv.stop(10)
    # a clean shutdown on SIGTERM, and nothing secret in the log
    assert code == 0, srv.log.read_text()
    assert KEY not in srv.log.read_text()


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return scene(W, H)


@pytest.fixture(scope="module")
def files(img):
    """(image file tuple, mask file tuple) as the SDK takes them."""
    return ("photo.png", png(img), "image/png"), (
        "mask.png",
        png(alpha_mask(W, H, BOX)),
        "image/png",
    )


def check_pixels(out: np.ndarray, original: np.ndarray) -> None:
    assert out.shape[:2] == original.shape[:2]
    keep = outside(original.shape[:2], BOX)
    assert np.array_equal(out[..., :3][keep], original[keep])
    region = out[inner(BOX, 3)].astype(int)
    assert (np.abs(region - [255, 0, 0]).sum(-1) > 150).all()  # the red square is gone


def test_edit_one_image_with_mask(client, files, img):
    image, mask = files
    r = client.images.edit(image=image, mask=mask, prompt="remove the red square")
    assert isinstance(r, openai.types.ImagesResponse)
    assert len(r.data) == 1 and r.data[0].url is None
    assert r.size == f"{W}x{H}" and r.output_format == "png" and r.background == "opaque"
    assert abs(r.created - time.time()) < 120
    assert r.usage is not None
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.image_tokens == (W // 8) * (H // 8)
    check_pixels(b64_image({"b64_json": r.data[0].b64_json}), img)


def test_edit_file_object_and_list_of_images(client, files, img, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(files[0][1])
    other = png(scene(W, H)[:, ::-1].copy())
    with open(path, "rb") as f:
        r = client.images.edit(
            image=[f, ("other.png", other, "image/png")], mask=files[1], prompt="remove it"
        )
    check_pixels(b64_image({"b64_json": r.data[0].b64_json}), img)


def test_n_and_size(client, files):
    image, mask = files
    r = client.images.edit(image=image, mask=mask, prompt="x", n=3, size="512x512")
    assert len(r.data) == 3 and r.size == "512x512"
    for d in r.data:
        out = b64_image({"b64_json": d.b64_json})
        assert out.shape == (512, 512, 3)


def test_response_format_url(client, files, img):
    image, mask = files
    r = client.images.edit(image=image, mask=mask, prompt="x", response_format="url", n=2)
    assert len(r.data) == 2
    for d in r.data:
        assert d.b64_json is None and d.url.endswith(".png")
        with urllib.request.urlopen(d.url, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "image/png"
            check_pixels(decode_image(resp.read())[0], img)


def test_response_format_b64_json_explicit(client, files, img):
    image, mask = files
    r = client.images.edit(image=image, mask=mask, prompt="x", response_format="b64_json")
    check_pixels(b64_image({"b64_json": r.data[0].b64_json}), img)


@pytest.mark.parametrize("fmt, pil", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(client, files, fmt, pil):
    image, mask = files
    sizes = []
    for q in (5, 95):
        r = client.images.edit(
            image=image, mask=mask, prompt="x", output_format=fmt, output_compression=q
        )
        assert r.output_format == fmt
        raw = base64.b64decode(r.data[0].b64_json)
        out, got = decode_image(raw)
        assert got == pil and out.shape == (H, W, 3)
        sizes.append(len(raw))
    assert sizes[0] < sizes[1]


def test_background_transparent(client, files, img):
    rgba = np.dstack([img, np.full((H, W), 255, np.uint8)])
    rgba[:6, :6, 3] = 0
    r = client.images.edit(
        image=("t.png", png(rgba), "image/png"), mask=files[1], prompt="x", background="transparent"
    )
    assert r.background == "transparent"
    out = b64_image({"b64_json": r.data[0].b64_json})
    assert out.shape == (H, W, 4) and (out[:6, :6, 3] == 0).all()


def test_stream_yields_n_completed_events(client, files):
    image, mask = files
    stream = client.images.edit(image=image, mask=mask, prompt="x", n=2, stream=True)
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.completed"] * 2
    for e in events:
        assert e.size == f"{W}x{H}" and e.output_format == "png"
        assert e.usage.total_tokens > 0
        assert b64_image({"b64_json": e.b64_json}).shape == (H, W, 3)


def test_models_list(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert BUILTIN in ids
    assert all(m.object == "model" for m in models.data)
    assert client.models.retrieve(BUILTIN).id == BUILTIN


def test_wrong_key_authentication_error(server, files):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.images.edit(image=files[0], prompt="x")
    e = info.value
    assert e.status_code == 401 and e.code == "invalid_api_key" and e.param is None
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    bad.close()


def _bad_request(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    e = info.value
    assert e.status_code == 400
    assert e.body["param"] == e.param and e.body["code"] == e.code
    assert e.type == "invalid_request_error" and e.message
    return e


def test_bad_requests(client, files, img):
    image, mask = files
    e = _bad_request(lambda: client.images.edit(image=image, prompt=""))
    assert (e.param, e.code) == ("prompt", "empty_string")
    e = _bad_request(lambda: client.images.edit(image=image, prompt="x", size="1000x1001"))
    assert (e.param, e.code) == ("size", "invalid_value")
    e = _bad_request(lambda: client.images.edit(image=image, prompt="x", n=11))
    assert (e.param, e.code) == ("n", "integer_above_max_value")
    e = _bad_request(lambda: client.images.edit(image=image, prompt="x", output_compression=-5))
    assert (e.param, e.code) == ("output_compression", "integer_below_min_value")
    e = _bad_request(lambda: client.images.edit(image=image, prompt="x", output_format="gif"))
    assert (e.param, e.code) == ("output_format", "invalid_value")
    wrong = ("m.png", png(alpha_mask(W * 2, H, BOX)), "image/png")
    e = _bad_request(lambda: client.images.edit(image=image, mask=wrong, prompt="x"))
    assert (e.param, e.code) == ("mask", "invalid_mask")
    e = _bad_request(lambda: client.images.edit(image=("x.png", b"nope", "image/png"), prompt="x"))
    assert (e.param, e.code) == ("image", "invalid_image_file")
    e = _bad_request(lambda: client.images.edit(image=("x.gif", gif(img), "image/gif"), prompt="x"))
    assert (e.param, e.code) == ("image", "unsupported_file_mimetype")


def test_unknown_model_not_found(client, files):
    with pytest.raises(openai.NotFoundError) as info:
        client.images.edit(image=files[0], prompt="x", model="gpt-image-1")
    e = info.value
    assert e.status_code == 404 and e.code == "model_not_found" and e.param == "model"
    assert e.body["type"] == "invalid_request_error"


def test_server_survives_and_health(server):
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        with urllib.request.urlopen(server + path, timeout=5) as r:
            assert r.status == 200
    with urllib.request.urlopen(server + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'inpaint_requests_total{route="/v1/images/edits",status="200"}' in text
