"""HTTP tests through aiohttp's test client: every error row of the contract (exact status and
body), the success paths, pixels, and the side routes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import numpy as np
import pytest

from server.http.app import create_app
from server.models.builtin import NAME as BUILTIN

from .helpers import (
    AUTH,
    EDITS,
    FakeModel,
    Multipart,
    alpha_mask,
    b64_image,
    bw_mask,
    config,
    decode_image,
    default_box,
    edit_form,
    exif_rotated_jpeg,
    expect_error,
    form,
    gif,
    huge_png_header,
    inner,
    jpeg,
    outside,
    png,
    post_edit,
    registry,
    scene,
    webp,
)

W, H = 64, 48
BOX = default_box(W, H)  # (21, 16, 42, 32)


@pytest.fixture
def make_client(aiohttp_client):
    async def make(reg=None, **kw):
        app = create_app(config(**kw), registry=reg if reg is not None else registry())
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return scene(W, H)


@pytest.fixture(scope="module")
def img_png(img) -> bytes:
    return png(img)


@pytest.fixture(scope="module")
def mask_png() -> bytes:
    return png(alpha_mask(W, H, BOX))


def not_red(pixels: np.ndarray) -> bool:
    """True when no pixel of uint8 ...x3 is anywhere near pure red."""
    dist = np.abs(pixels[..., :3].astype(int) - np.array([255, 0, 0])).sum(-1)
    return bool((dist > 150).all())


async def edit_ok(client, mp: Multipart) -> dict:
    resp = await post_edit(client, mp)
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "application/json"
    return json.loads(text)


def check_kept_and_edited(out: np.ndarray, original: np.ndarray, box) -> None:
    """Outside the box: bit-identical; deep inside: the red is gone."""
    assert out.shape[:2] == original.shape[:2]
    keep = outside(original.shape[:2], box)
    assert np.array_equal(out[..., :3][keep], original[..., :3][keep])
    assert not_red(out[inner(box, 3)])


# ==================================================================== errors: auth


async def test_no_authorization_header(client, img_png):
    resp = await post_edit(client, edit_form(img_png), auth=False)
    await expect_error(resp, 401, code=None, param=None)
    resp = await client.get("/v1/models")
    await expect_error(resp, 401, code=None, param=None)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sk-wrong",
        "Bearer sk-tes",
        "Bearer sk-test2",
        "Basic c2stdGVzdA==",
        "Bearer ",
        "sk-test",
    ],
)
async def test_wrong_key(client, header):
    resp = await client.get("/v1/models", headers={"Authorization": header})
    err = await expect_error(resp, 401, code="invalid_api_key", param=None)
    assert "sk-" not in err["message"].replace("sk-xxxx", "")  # never echoes the key


async def test_several_keys(make_client):
    cl = await make_client(api_keys=("sk-a", "sk-b"))
    for key in ("sk-a", "sk-b"):
        resp = await cl.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200
    resp = await cl.get("/v1/models", headers={"Authorization": "Bearer sk-c"})
    assert resp.status == 401


async def test_no_auth_mode(make_client):
    cl = await make_client(no_auth=True, api_keys=())
    assert (await cl.get("/v1/models")).status == 200


def test_create_app_refuses_no_key():
    with pytest.raises(ValueError):
        create_app(config(api_keys=()), registry=registry())


# ==================================================================== errors: request


async def test_missing_image(client):
    resp = await post_edit(client, form({"prompt": "x"}))
    await expect_error(resp, 400, code=None, param="image")


async def test_missing_image_with_only_unknown_file_part(client, img_png):
    mp = Multipart().file("picture", img_png).field("prompt", "x")
    await expect_error(await post_edit(client, mp), 400, code=None, param="image")


async def test_missing_prompt(client, img_png):
    resp = await post_edit(client, edit_form(img_png, prompt=None))
    await expect_error(resp, 400, code=None, param="prompt")


@pytest.mark.parametrize("prompt", ["", "  "])
async def test_empty_prompt(client, img_png, prompt):
    resp = await post_edit(client, edit_form(img_png, prompt=prompt))
    await expect_error(resp, 400, code=None, param="prompt")


async def test_prompt_too_long(client, img_png):
    resp = await post_edit(client, edit_form(img_png, prompt="x" * 32001))
    err = await expect_error(resp, 400, code="string_above_max_length", param="prompt")
    assert "32000" in err["message"]
    # far over: stopped while reading the part (before decoding), same code and param
    resp = await post_edit(client, edit_form(img_png, prompt="x" * 300_000))
    await expect_error(resp, 400, code="string_above_max_length", param="prompt")


@pytest.mark.parametrize("data", [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
async def test_undecodable_image(client, data):
    resp = await post_edit(client, edit_form(data))
    await expect_error(resp, 400, code="invalid_image_file", param="image")


async def test_truncated_png(client, img_png):
    resp = await post_edit(client, edit_form(img_png[: len(img_png) // 2]))
    await expect_error(resp, 400, code="invalid_image_file", param="image")


async def test_gif_unsupported(client, img):
    resp = await post_edit(client, edit_form(gif(img)))
    await expect_error(resp, 400, code="unsupported_file_mimetype", param="image")


async def test_gif_as_second_image_unsupported(client, img, img_png):
    mp = form({"prompt": "x"}, [("image[]", img_png), ("image[]", gif(img))])
    await expect_error(
        await post_edit(client, mp), 400, code="unsupported_file_mimetype", param="image"
    )


async def test_format_from_bytes_not_content_type(client, img, mask_png):
    # a JPEG sent with a lying part Content-Type and file name still works
    mp = Multipart().file("image", jpeg(img), filename="x.gif", content_type="image/gif")
    mp.file("mask", mask_png).field("prompt", "x")
    assert (await post_edit(client, mp)).status == 200


async def test_image_too_large_pixels(client):
    resp = await post_edit(client, edit_form(huge_png_header(60000, 60000)))
    err = await expect_error(resp, 400, code="image_too_large", param="image")
    assert "pixels" in err["message"]


async def test_image_too_large_bytes(make_client, img_png):
    cl = await make_client(max_image_mb=(len(img_png) - 1) / 2**20)
    resp = await post_edit(cl, edit_form(img_png))
    await expect_error(resp, 400, code="image_too_large", param="image")


async def test_body_over_limit_413(make_client):
    cl = await make_client(max_body_mb=20_000 / 2**20)
    big = png(np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8))  # ~30 kB
    assert len(big) > 20_000
    resp = await post_edit(cl, edit_form(big))
    await expect_error(resp, 413, code="image_too_large", param="image")


async def test_body_over_limit_413_chunked(make_client):
    """No Content-Length (chunked): the limit is enforced while reading."""
    cl = await make_client(max_body_mb=20_000 / 2**20)
    big = png(np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8))
    mp = edit_form(big)

    async def gen():
        body = mp.body
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    resp = await cl.post(EDITS, data=gen(), headers=mp.headers())
    await expect_error(resp, 413, code="image_too_large", param="image")


async def test_mask_size_mismatch(client, img_png):
    resp = await post_edit(client, edit_form(img_png, png(alpha_mask(W + 8, H, BOX))))
    err = await expect_error(resp, 400, code="invalid_mask", param="mask")
    assert f"{W}x{H}" in err["message"]


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((H, W), np.uint8),  # all black, no alpha
        np.dstack([np.zeros((H, W, 3), np.uint8), np.full((H, W), 255, np.uint8)]),  # opaque black
    ],
)
async def test_empty_edit_region(client, img_png, mask):
    resp = await post_edit(client, edit_form(img_png, png(mask)))
    await expect_error(resp, 400, code="invalid_mask", param="mask")


async def test_undecodable_mask(client, img_png):
    resp = await post_edit(client, edit_form(img_png, b"garbage mask"))
    await expect_error(resp, 400, code="invalid_image_file", param="mask")


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("n", 11, "integer_above_max_value"),
        ("n", 0, "integer_below_min_value"),
        ("n", "two", "invalid_value"),
        ("size", "1000x1001", "invalid_value"),
        ("size", "huge", "invalid_value"),
        ("size", "8x8", None),  # a multiple of 8 but below the model's minimum side
        ("size", "8192x8192", None),  # above the model's maximum side
        ("output_format", "gif", "invalid_value"),
        ("response_format", "jpeg", "invalid_value"),
        ("output_compression", 101, "integer_above_max_value"),
        ("output_compression", -1, "integer_below_min_value"),
        ("background", "green", "invalid_value"),
        ("quality", "ultra", "invalid_value"),
        ("partial_images", 4, "integer_above_max_value"),
        ("stream", "maybe", "invalid_value"),
    ],
)
async def test_field_out_of_range(client, img_png, mask_png, field, value, code):
    resp = await post_edit(client, edit_form(img_png, mask_png, **{field: value}))
    err = await expect_error(resp, 400, code=code, param=field)
    assert str(value) in err["message"] or field in err["message"]


async def test_transparent_background_with_jpeg(client, img_png, mask_png):
    resp = await post_edit(
        client, edit_form(img_png, mask_png, background="transparent", output_format="jpeg")
    )
    await expect_error(resp, 400, code="invalid_value", param="background")


async def test_unknown_model(client, img_png):
    resp = await post_edit(client, edit_form(img_png, model="dall-e-9"))
    err = await expect_error(resp, 404, code="model_not_found", param="model")
    assert "dall-e-9" in err["message"]
    resp = await client.get("/v1/models/dall-e-9", headers=AUTH)
    await expect_error(resp, 404, code="model_not_found", param="model")


async def test_non_utf8_text_field(client, img_png):
    mp = Multipart().file("image", img_png).field("prompt", b"\xff\xfe bad \xc3")
    await expect_error(await post_edit(client, mp), 400, code=None, param="prompt")


@pytest.mark.parametrize(
    "ctype, body",
    [
        ("text/plain", b"prompt=hello"),
        ("application/x-www-form-urlencoded", b"prompt=hello&n=1"),
        ("application/octet-stream", b"\x89PNG"),
    ],
)
async def test_non_multipart_content_type(client, ctype, body):
    resp = await client.post(EDITS, data=body, headers={**AUTH, "Content-Type": ctype})
    err = await expect_error(resp, 400, code=None, param=None)
    assert "multipart/form-data" in err["message"]


async def test_malformed_multipart(client):
    resp = await client.post(
        EDITS, data=b"--nope\r\ngarbage", headers={**AUTH, "Content-Type": "multipart/form-data"}
    )
    assert resp.status == 400
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_too_many_images(client, img_png):
    mp = form({"prompt": "x"}, [("image[]", img_png)] * 17)
    await expect_error(await post_edit(client, mp), 400, code="invalid_value", param="image")


# ==================================================================== errors: load, faults


async def test_queue_full_max_queue_zero(make_client, img_png):
    cl = await make_client(max_queue=0)
    resp = await post_edit(cl, edit_form(img_png))
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert int(resp.headers["Retry-After"]) >= 1


async def test_queue_full_behind_slow_model(make_client, img_png):
    slow = FakeModel("slow", delay=1.0)
    cl = await make_client(reg=registry(slow), max_queue=2, max_batch_size=1)
    first = asyncio.ensure_future(post_edit(cl, edit_form(img_png, model="slow")))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 5)
    # the running row left the queue: 2 rows fit, a third does not
    resp = await post_edit(cl, edit_form(img_png, model="slow", n=3))
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await first).status == 200


async def test_deadline_while_running(make_client, img_png):
    slow = FakeModel("slow", delay=1.5)
    cl = await make_client(reg=registry(slow), request_timeout=0.3)
    t0 = time.perf_counter()
    resp = await post_edit(cl, edit_form(img_png, model="slow"))
    await expect_error(resp, 504, type="timeout", code="timeout", param=None)
    assert time.perf_counter() - t0 < 1.2  # answered at the deadline, not when the model finished


async def test_deadline_while_queued(make_client, img_png):
    slow = FakeModel("slow", delay=1.5)
    cl = await make_client(reg=registry(slow), request_timeout=0.5, max_batch_size=1)
    first = asyncio.ensure_future(post_edit(cl, edit_form(img_png, model="slow")))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 5)
    t0 = time.perf_counter()
    resp = await post_edit(cl, edit_form(img_png, model="slow"))  # waits behind the first
    await expect_error(resp, 504, type="timeout", code="timeout", param=None)
    assert time.perf_counter() - t0 < 1.2  # at its deadline, not when the first one finishes
    assert (await first).status == 504  # the running one is past its deadline as well


async def test_internal_fault_is_opaque_and_server_survives(make_client, img_png, caplog):
    bad = FakeModel("bad", error=RuntimeError("/secret/path boom"))
    cl = await make_client(reg=registry(bad))
    resp = await post_edit(cl, edit_form(img_png, model="bad"))
    err = await expect_error(resp, 500, type="server_error", code="server_error", param=None)
    for leak in ("/secret", "boom", "RuntimeError", "Traceback", "File ", ".py"):
        assert leak not in err["message"]
    assert re.search(r"incident [0-9a-f]{12}", err["message"])
    assert "/secret/path boom" in caplog.text  # the operator still sees it in the log
    # the server keeps answering, the same faulty model included
    assert (await cl.get("/health")).status == 200
    assert (await post_edit(cl, edit_form(img_png))).status == 200
    assert (await post_edit(cl, edit_form(img_png, model="bad"))).status == 500
    assert (await post_edit(cl, edit_form(img_png, model=BUILTIN))).status == 200


async def test_per_key_rate_limit(make_client):
    cl = await make_client(rate_limit=2, api_keys=("sk-test", "sk-other"))
    assert (await cl.get("/v1/models", headers=AUTH)).status == 200
    assert (await cl.get("/v1/models", headers=AUTH)).status == 200
    resp = await cl.get("/v1/models", headers=AUTH)
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert int(resp.headers["Retry-After"]) in range(1, 62)
    # per key: another key is not limited; probes are never limited
    assert (await cl.get("/v1/models", headers={"Authorization": "Bearer sk-other"})).status == 200
    assert (await cl.get("/health")).status == 200


async def test_unknown_route_and_method_are_json(client):
    resp = await client.get("/v1/nope", headers=AUTH)
    await expect_error(resp, 404, code="not_found", param=None)
    resp = await client.get(EDITS, headers=AUTH)
    await expect_error(resp, 405, code="method_not_allowed", param=None)


# ==================================================================== success paths


async def test_basic_edit_pixels_and_response_shape(client, img, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png))
    assert set(body) >= {
        "created",
        "data",
        "background",
        "output_format",
        "quality",
        "size",
        "usage",
    }
    assert abs(body["created"] - time.time()) < 60
    assert body["size"] == f"{W}x{H}" and body["output_format"] == "png"
    assert body["background"] == "opaque"
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"b64_json"}
    raw = base64.b64decode(body["data"][0]["b64_json"])
    out, fmt = decode_image(raw)
    assert fmt == "PNG" and out.shape == (H, W, 3)
    check_kept_and_edited(out, img, BOX)
    usage = body["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "total_tokens", "input_tokens_details"}
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    d = usage["input_tokens_details"]
    assert d["text_tokens"] + d["image_tokens"] == usage["input_tokens"]
    assert d["image_tokens"] == (W // 8) * (H // 8)  # one token per 8x8 cell
    assert d["text_tokens"] == 0  # the built-in model does not read the prompt


@pytest.mark.parametrize("name", ["image", "image[]"])
async def test_image_field_names(client, img, img_png, mask_png, name):
    body = await edit_ok(client, form({"prompt": "x"}, [(name, img_png)], mask_png))
    check_kept_and_edited(b64_image(body["data"][0]), img, BOX)


@pytest.mark.parametrize("name", ["image", "image[]"])
async def test_several_images_first_is_edited(client, img, img_png, mask_png, name):
    other = scene(W, H)[::-1].copy()  # different pixels, same size
    body = await edit_ok(
        client, form({"prompt": "x"}, [(name, img_png), (name, png(other))], mask_png)
    )
    check_kept_and_edited(b64_image(body["data"][0]), img, BOX)


async def test_part_order_is_free(client, img, img_png, mask_png):
    body = await edit_ok(
        client, form({"prompt": "x", "n": 2}, [("image", img_png)], mask_png, mask_first=True)
    )
    assert len(body["data"]) == 2
    check_kept_and_edited(b64_image(body["data"][1]), img, BOX)


async def test_unknown_fields_ignored(client, img, img_png, mask_png):
    mp = edit_form(
        img_png,
        mask_png,
        frobnicate="1",
        safety_identifier="abc",
        user="u-42",
        input_fidelity="high",
        quality="low",
    )
    mp.file("markup", b"whatever")  # unknown file part: ignored too
    body = await edit_ok(client, mp)
    check_kept_and_edited(b64_image(body["data"][0]), img, BOX)
    assert body["quality"] == "low"


async def test_black_white_mask(client, img, img_png):
    body = await edit_ok(client, edit_form(img_png, png(bw_mask(W, H, BOX))))
    check_kept_and_edited(b64_image(body["data"][0]), img, BOX)


async def test_black_white_mask_rgb(client, img, img_png):
    m = np.dstack([bw_mask(W, H, BOX)] * 3)
    body = await edit_ok(client, edit_form(img_png, png(m)))
    check_kept_and_edited(b64_image(body["data"][0]), img, BOX)


async def test_no_mask_transparent_image_edits_transparent_pixels(client, img):
    rgba = np.dstack([img, np.full((H, W), 255, np.uint8)])
    x0, y0, x1, y1 = BOX
    rgba[y0:y1, x0:x1, 3] = 0
    body = await edit_ok(client, edit_form(png(rgba)))
    out = b64_image(body["data"][0])
    assert body["background"] == "transparent" and out.shape == (H, W, 4)
    check_kept_and_edited(out, img, BOX)
    assert (out[y0:y1, x0:x1, 3] == 255).all()  # edited pixels become opaque
    assert (out[..., 3][outside((H, W), BOX)] == 255).all()


async def test_no_mask_opaque_image_edits_everything(client, img, img_png):
    body = await edit_ok(client, edit_form(img_png))
    out = b64_image(body["data"][0])
    assert out.shape == (H, W, 3)
    assert not np.array_equal(out, img)
    assert not_red(out[inner(BOX, 0)])
    # whole-image edits with the built-in model: a flat fill of the mean colour
    mean = img.reshape(-1, 3).mean(0)
    assert np.abs(out[inner(BOX, 2)].astype(float) - mean).max() <= 2


async def test_n_images(client, img, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png, n=3))
    assert len(body["data"]) == 3
    for item in body["data"]:
        check_kept_and_edited(b64_image(item), img, BOX)
    assert body["usage"]["output_tokens"] == 3 * (W // 8) * (H // 8)


async def test_size_auto_keeps_odd_input_size(client):
    w, h = 250, 170
    box = default_box(w, h)
    im = scene(w, h)
    for size in (None, "auto"):
        fields = {"size": size} if size else {}
        body = await edit_ok(client, edit_form(png(im), png(alpha_mask(w, h, box)), **fields))
        assert body["size"] == f"{w}x{h}"
        out = b64_image(body["data"][0])
        assert out.shape == (h, w, 3)
        check_kept_and_edited(out, im, box)


@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024", "1536x1024", "1024x1536"])
async def test_openai_sizes(client, img_png, mask_png, size):
    body = await edit_ok(client, edit_form(img_png, mask_png, size=size))
    w, h = map(int, size.split("x"))
    out = b64_image(body["data"][0])
    assert body["size"] == size and out.shape == (h, w, 3)
    # the red square scaled with the image; its middle is edited, the far corners are kept
    assert not_red(out[h * 5 // 12 : h * 7 // 12, w * 5 // 12 : w * 7 // 12])
    assert out[2, 2, 2] > 150 and out[-3, -3, 2] > 150  # still the blue background


async def test_url_response_and_file_route(client, img, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png, response_format="url", n=2))
    urls = [d["url"] for d in body["data"]]
    assert len(set(urls)) == 2
    for url in urls:
        m = re.fullmatch(r"http://[^/]+/v1/images/files/([0-9a-f]{32})\.png", url)
        assert m, url
        resp = await client.get(url.split("://", 1)[1].split("/", 1)[1].join(["/", ""]))
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        out, fmt = decode_image(await resp.read())
        assert fmt == "PNG"
        check_kept_and_edited(out, img, BOX)
    # no key needed for the link (it is unguessable), like a signed URL
    path = "/" + urls[0].split("/", 3)[3]
    assert (await client.get(path)).status == 200
    # webp and jpeg files are served with their types
    for fmt, ctype in (("jpeg", "image/jpeg"), ("webp", "image/webp")):
        body = await edit_ok(
            client, edit_form(img_png, mask_png, response_format="url", output_format=fmt)
        )
        url = body["data"][0]["url"]
        assert url.endswith("." + fmt)
        resp = await client.get("/" + url.split("/", 3)[3])
        assert resp.headers["Content-Type"] == ctype
        assert decode_image(await resp.read())[0].shape == (H, W, 3)


async def test_file_route_rejects_bad_names(client, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png, response_format="url"))
    name = body["data"][0]["url"].rsplit("/", 1)[1]
    ident = name.split(".")[0]
    bad = [
        f"{ident.upper()}.png",
        f"{ident}.jpeg",
        f"{ident}.PNG",
        f"{ident}.gif",
        f"{ident[:-1]}.png",
        f"{ident}0.png",
        f"{ident}.png.png",
        f"{ident}",
        "0" * 32 + ".png",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "....%2F%2Fetc%2Fpasswd",
        ".%2e",
        "%00.png",
        f"%2e{ident}.png",
    ]
    for b in bad:
        # with a key: names the client normalises (".%2e" -> "..") land on other routes, also 404
        resp = await client.get("/v1/images/files/" + b, headers=AUTH)
        assert resp.status == 404, b
        body = await resp.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
    # a literal traversal is normalised away by the router: never a file, always JSON
    for raw in ("/v1/images/files/../../etc/passwd", "/v1/images/files/../../../etc/passwd"):
        resp = await client.get(raw, headers=AUTH)
        assert resp.status == 404
        assert "root:" not in await resp.text()
        await expect_error(resp, 404, code="not_found", param=None)
    assert (await client.get("/v1/images/files/" + name)).status == 200
    # the same, byte-exact on the wire (no client-side normalisation or re-encoding)
    for target in (
        "/v1/images/files/../../etc/passwd",
        "/v1/images/files/%2e%2e%2fetc%2fpasswd",
        "/v1/images/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        f"/v1/images/files/..%2f{name}",
        f"/v1/images/files/%2e%2e%2f{name}",
    ):
        status, raw = await raw_get(client, target)
        assert status in (401, 404), (target, status)
        assert b"root:" not in raw and b"\x89PNG" not in raw
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    # percent-encoding an unreserved character names the same file (RFC 3986): that is fine
    status, raw = await raw_get(client, f"/v1/images/files/{ident}%2epng")
    assert status == 200


async def raw_get(client, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (one HTTP/1.1 request on a fresh socket)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return int(raw.split(b" ", 2)[1]), raw


async def test_output_formats_and_compression(client, img_png, mask_png):
    rng = np.random.default_rng(1)
    noisy = np.clip(scene(128, 96).astype(int) + rng.integers(-40, 40, (96, 128, 3)), 0, 255)
    noisy = noisy.astype(np.uint8)
    m = png(alpha_mask(128, 96, default_box(128, 96)))
    for fmt, pil in (("jpeg", "JPEG"), ("webp", "WEBP")):
        sizes = []
        for q in (10, 95):
            body = await edit_ok(
                client, edit_form(png(noisy), m, output_format=fmt, output_compression=q)
            )
            assert body["output_format"] == fmt
            raw = base64.b64decode(body["data"][0]["b64_json"])
            out, got = decode_image(raw)
            assert got == pil and out.shape == (96, 128, 3)
            sizes.append(len(raw))
        assert sizes[0] < sizes[1], (fmt, sizes)
    # png ignores compression: lossless either way
    body = await edit_ok(client, edit_form(img_png, mask_png, output_compression=0))
    assert decode_image(base64.b64decode(body["data"][0]["b64_json"]))[1] == "PNG"


def _rgba_with_transparent_corner(img: np.ndarray) -> np.ndarray:
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # transparent corner, outside the masked box
    return rgba


@pytest.mark.parametrize("fmt", ["png", "webp"])
async def test_background_transparent_keeps_transparency(client, img, mask_png, fmt):
    rgba = _rgba_with_transparent_corner(img)
    body = await edit_ok(
        client, edit_form(png(rgba), mask_png, background="transparent", output_format=fmt)
    )
    assert body["background"] == "transparent"
    out = b64_image(body["data"][0])
    assert out.shape == (H, W, 4)
    assert (out[:8, :8, 3] == 0).all()  # untouched transparent pixels stay transparent
    x0, y0, x1, y1 = BOX
    assert (out[y0:y1, x0:x1, 3] == 255).all()  # edited pixels are opaque
    keep = outside((H, W), BOX)
    keep[:8, :8] = False
    assert (out[..., 3][keep] == 255).all()
    if fmt == "png":
        check_kept_and_edited(out, rgba, BOX)


async def test_background_transparent_on_opaque_input(client, img, img_png, mask_png):
    body = await edit_ok(client, edit_form(img_png, mask_png, background="transparent"))
    out = b64_image(body["data"][0])
    assert out.shape == (H, W, 4) and (out[..., 3] == 255).all()


async def test_background_opaque_gives_three_channels(client, img, mask_png):
    rgba = _rgba_with_transparent_corner(img)
    body = await edit_ok(client, edit_form(png(rgba), mask_png, background="opaque"))
    assert body["background"] == "opaque"
    out = b64_image(body["data"][0])
    assert out.shape == (H, W, 3)
    check_kept_and_edited(out, img, BOX)


async def test_exif_rotated_jpeg(client):
    stored = scene(W, H)  # 64 wide x 48 high as stored; orientation 6 displays it 48 x 64
    data = exif_rotated_jpeg(stored, 6)
    shown_w, shown_h = H, W
    box = default_box(shown_w, shown_h)
    # a mask of the stored size does not match what a viewer shows
    resp = await post_edit(client, edit_form(data, png(alpha_mask(W, H, BOX))))
    await expect_error(resp, 400, code="invalid_mask", param="mask")
    body = await edit_ok(client, edit_form(data, png(alpha_mask(shown_w, shown_h, box))))
    assert body["size"] == f"{shown_w}x{shown_h}"
    out = b64_image(body["data"][0])
    assert out.shape == (shown_h, shown_w, 3)
    displayed = np.rot90(decode_image(jpeg(stored))[0], k=-1)  # 90 deg clockwise
    keep = outside((shown_h, shown_w), box, margin=1)
    assert np.abs(out[keep].astype(int) - displayed[keep].astype(int)).max() <= 2


async def test_jpeg_and_webp_inputs(client, img, mask_png):
    for data in (jpeg(img, quality=100), webp(img)):
        body = await edit_ok(client, edit_form(data, mask_png))
        out = b64_image(body["data"][0])
        assert out.shape == (H, W, 3) and not_red(out[inner(BOX, 3)])


async def test_json_body_with_data_urls(client, img, img_png, mask_png):
    def url(b):
        return "data:image/png;base64," + base64.b64encode(b).decode()

    payload = {
        "images": [{"image_url": url(img_png)}],
        "mask": {"image_url": url(mask_png)},
        "prompt": "remove it",
        "n": 2,
        "stream": False,
        "size": "auto",
    }
    resp = await client.post(EDITS, json=payload, headers=AUTH)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert len(body["data"]) == 2
    check_kept_and_edited(b64_image(body["data"][0]), img, BOX)
    # errors in the JSON variant have the same shape
    resp = await client.post(EDITS, json={"images": [], "prompt": "x"}, headers=AUTH)
    await expect_error(resp, 400, code=None, param="image")
    resp = await client.post(EDITS, json={"images": [{"image_url": url(img_png)}]}, headers=AUTH)
    await expect_error(resp, 400, code=None, param="prompt")
    resp = await client.post(
        EDITS,
        json={"images": [{"image_url": "data:image/png;base64,@@"}], "prompt": "x"},
        headers=AUTH,
    )
    await expect_error(resp, 400, code="invalid_image_file", param="images")
    resp = await client.post(
        EDITS, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    await expect_error(resp, 400, code=None, param=None)


async def test_stream_over_http(client, img_png, mask_png):
    resp = await post_edit(client, edit_form(img_png, mask_png, stream="true", n=2))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    text = await resp.text()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["image_edit.completed"] * 2
    for e in events:
        assert e["size"] == f"{W}x{H}" and e["output_format"] == "png"
        assert set(e["usage"]) >= {"input_tokens", "output_tokens", "total_tokens"}
        assert b64_image(e).shape == (H, W, 3)


# ==================================================================== side routes


async def test_models_list(client):
    resp = await client.get("/v1/models", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert BUILTIN in ids
    for m in body["data"]:
        assert m["object"] == "model"
        assert isinstance(m["created"], int) and isinstance(m["owned_by"], str)
    resp = await client.get(f"/v1/models/{BUILTIN}", headers=AUTH)
    assert resp.status == 200
    card = await resp.json()
    assert card["id"] == BUILTIN and card["object"] == "model"


async def test_health_ready(client):
    resp = await client.get("/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/ready")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ready"
    assert BUILTIN in body["models"] and body["default_model"] == BUILTIN


async def test_metrics_after_request(client, img_png, mask_png):
    await edit_ok(client, edit_form(img_png, mask_png))
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert re.search(
        r'^inpaint_requests_total\{route="/v1/images/edits",status="200"\} 1\.0$', text, re.M
    ), text
    assert "# TYPE inpaint_requests_total counter" in text
    assert "inpaint_request_latency_seconds_bucket" in text
    assert f'inpaint_images_total{{model="{BUILTIN}"}} 1.0' in text


async def test_metrics_count_errors(client, img_png):
    await post_edit(client, edit_form(img_png), auth=False)
    text = await (await client.get("/metrics")).text()
    assert 'inpaint_requests_total{route="/v1/images/edits",status="401"} 1.0' in text


async def test_openapi_document(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    op = doc["paths"]["/v1/images/edits"]["post"]
    props = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for seed in ("image", "mask", "prompt", "model", "n", "size", "response_format"):
        assert seed in props, seed
    from server.protocol import EditRequest

    for field in EditRequest.model_fields:
        assert field in props, field
    assert set(op["requestBody"]["content"]["multipart/form-data"]["schema"]["required"]) == {
        "image",
        "prompt",
    }
    schema = doc["components"]["schemas"]["ImageResponse"]
    assert "created" in schema["properties"] and "data" in schema["properties"]
    item = schema["properties"]["data"]["items"]["properties"]
    assert {"url", "b64_json", "revised_prompt"} <= set(item)
    assert doc["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    assert op["security"] == [{"BearerAuth": []}]


async def test_health_answers_while_an_edit_runs(make_client, img_png):
    slow = FakeModel("slow", delay=1.5)
    cl = await make_client(reg=registry(slow))
    task = asyncio.ensure_future(post_edit(cl, edit_form(img_png, model="slow")))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 5)
    t0 = time.perf_counter()
    resp = await cl.get("/health")
    assert resp.status == 200
    assert time.perf_counter() - t0 < 0.5
    assert not task.done()
    assert (await task).status == 200


async def test_health_answers_while_a_big_image_is_processed(client):
    """Decode, prepare, composite and encode of a big upload run off the event loop too: /health
    stays fast for the whole life of the request."""
    mp = edit_form(png(scene(2048, 2048)), png(bw_mask(2048, 2048, (900, 900, 1000, 1000))))
    task = asyncio.ensure_future(post_edit(client, mp))
    worst, probes = 0.0, 0
    while not task.done():
        t0 = time.perf_counter()
        assert (await client.get("/health")).status == 200
        worst = max(worst, time.perf_counter() - t0)
        probes += 1
        await asyncio.sleep(0.02)
    assert (await task).status == 200
    assert probes >= 3
    assert worst < 0.5, worst
