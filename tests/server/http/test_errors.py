"""HTTP: the contract's error rows for malformed requests (exact status and OpenAI body), and the
malformed inputs found by fuzzing. Size limits are in test_limits.py, faults in test_faults.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import (
    AUTH,
    BOX,
    EDITS,
    IMG,
    MASK,
    H,
    Multipart,
    W,
    alpha_mask,
    edit_form,
    expect_error,
    form,
    gif,
    png,
    post_edit,
)

# ==================================================================== errors: request


async def test_missing_image(client):
    resp = await post_edit(client, form({"prompt": "x"}))
    await expect_error(resp, 400, code="missing_required_parameter", param="image")


async def test_missing_image_with_only_unknown_file_part(client, img_png):
    mp = Multipart().file("picture", img_png).field("prompt", "x")
    await expect_error(
        await post_edit(client, mp), 400, code="missing_required_parameter", param="image"
    )


async def test_missing_prompt(client, img_png):
    resp = await post_edit(client, edit_form(img_png, prompt=None))
    await expect_error(resp, 400, code="missing_required_parameter", param="prompt")


@pytest.mark.parametrize("prompt", ["", "  "])
async def test_empty_prompt(client, img_png, prompt):
    resp = await post_edit(client, edit_form(img_png, prompt=prompt))
    await expect_error(resp, 400, code="empty_string", param="prompt")


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
    err = await expect_error(resp, 400, code="invalid_mask", param="mask")
    # the rule's thresholds (imaging.ALPHA_EDIT_BELOW, LUMA_EDIT_ABOVE), not "alpha 0"
    assert "alpha below 128" in err["message"] and "luminance above 127" in err["message"]
    assert "alpha 0" not in err["message"]


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
        ("size", "8x8", "invalid_value"),  # a multiple of 8 but below the model's minimum side
        ("size", "8192x8192", "invalid_value"),  # above the model's maximum side
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
    await expect_error(await post_edit(client, mp), 400, code="invalid_value", param="prompt")


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
    err = await expect_error(resp, 400, code="invalid_value", param=None)
    assert "multipart/form-data" in err["message"]


async def test_malformed_multipart(client):
    resp = await client.post(
        EDITS, data=b"--nope\r\ngarbage", headers={**AUTH, "Content-Type": "multipart/form-data"}
    )
    assert resp.status == 400
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_unknown_route_and_method_are_json(client):
    resp = await client.get("/v1/nope", headers=AUTH)
    await expect_error(resp, 404, code="not_found", param=None)
    resp = await client.get(EDITS, headers=AUTH)
    await expect_error(resp, 405, code="method_not_allowed", param=None)


# ==================================================================== regressions found by fuzzing


def _mp_raw(*parts: bytes) -> bytes:
    b = Multipart.BOUNDARY.encode()
    return b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + b + b"--\r\n"


_IMG_PART = (
    b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + IMG
)


@pytest.mark.parametrize(
    "body",
    [
        _mp_raw(
            b'Content-Disposition: form-data; name="prompt"\r\nX-Pad: '
            + b"p" * 20000
            + b"\r\n\r\nx",
            _IMG_PART,
        ),  # part header line too long
        _mp_raw(
            b'Content-Disposition: form-data; name="prompt"\r\n'
            + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
            + b"\r\nx",
            _IMG_PART,
        ),  # too many
        _mp_raw(
            b'Content-Disposition: form-data; name="prompt"\r\nbad header line\r\n\r\nx', _IMG_PART
        ),  # invalid part header
    ],
    ids=["header-too-long", "too-many-headers", "invalid-header"],
)
async def test_malformed_part_headers_are_400(make_client, body):
    cl = await make_client()
    resp = await cl.post(
        EDITS, data=body, headers={**AUTH, "Content-Type": Multipart().content_type}
    )
    await expect_error(resp, 400, code="invalid_value", param=None)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads
        b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}",  # int over Python's digit limit
        b'{"prompt": "x", "images": 5}',  # images not a list
        b'{"prompt": "x", "images": {"image_url": 1}}',
    ],
    ids=["deep-nesting", "5000-digits", "images-int", "images-object"],
)
async def test_hostile_json_bodies_are_400(make_client, raw):
    cl = await make_client()
    resp = await cl.post(EDITS, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("size", ["\u00b2x8", "8x\u00b3", "\u2460x8"])
async def test_unicode_digit_like_sizes_are_400(make_client, size):
    """'²'.isdigit() is True but int('²') raises: such sizes were a 500."""
    cl = await make_client()
    resp = await post_edit(cl, edit_form(IMG, MASK, size=size))
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "size"
