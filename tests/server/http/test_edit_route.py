"""HTTP: the success paths of POST /v1/images/edits: response shape, pixels kept outside the mask
and edited inside, input formats and mask conventions, sizes, output formats, transparency, the
JSON body and streaming."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from tests.helpers import (
    AUTH,
    BOX,
    EDITS,
    H,
    Multipart,
    W,
    alpha_mask,
    b64_image,
    bw_mask,
    check_kept_and_edited,
    decode_image,
    default_box,
    edit_form,
    edit_ok,
    exif_rotated_jpeg,
    expect_error,
    form,
    inner,
    jpeg,
    not_red,
    outside,
    png,
    post_edit,
    scene,
    webp,
)

# ==================================================================== inputs


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
    assert set(usage) == {
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "input_tokens_details",
        "output_tokens_details",
    }
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    assert usage["output_tokens_details"] == {
        "image_tokens": usage["output_tokens"],
        "text_tokens": 0,
    }
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    d = usage["input_tokens_details"]
    assert d["text_tokens"] + d["image_tokens"] == usage["input_tokens"]
    assert d["image_tokens"] == (W // 8) * (H // 8)  # one token per 8x8 cell
    assert d["text_tokens"] == 0  # the built-in model does not read the prompt


async def test_format_from_bytes_not_content_type(client, img, mask_png):
    # a JPEG sent with a lying part Content-Type and file name still works
    mp = Multipart().file("image", jpeg(img), filename="x.gif", content_type="image/gif")
    mp.file("mask", mask_png).field("prompt", "x")
    assert (await post_edit(client, mp)).status == 200


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
    mp.file("sketch", b"whatever")  # unknown file part: ignored too
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


# ==================================================================== outputs


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


# ==================================================================== JSON body, streaming


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
    await expect_error(resp, 400, code="missing_required_parameter", param="image")
    resp = await client.post(EDITS, json={"images": [{"image_url": url(img_png)}]}, headers=AUTH)
    await expect_error(resp, 400, code="missing_required_parameter", param="prompt")
    resp = await client.post(
        EDITS,
        json={"images": [{"image_url": "data:image/png;base64,@@"}], "prompt": "x"},
        headers=AUTH,
    )
    await expect_error(resp, 400, code="invalid_image_file", param="images")
    resp = await client.post(
        EDITS, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    await expect_error(resp, 400, code="invalid_value", param=None)


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
