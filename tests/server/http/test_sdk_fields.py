"""The newest SDK's fields: ``safety_identifier``, GIF/SVG outputs and their options, ``complexity``
and ``input_fidelity`` values; stream events with the right ``background``, their image index
and usage counted once per request. (``markup``: test_markup.py.)"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.helpers import (
    IMG,
    MASK,
    FakeModel,
    H,
    W,
    alpha_mask,
    decode_b64,
    edit_form,
    edit_ok,
    expect_error,
    png,
    post_edit,
    registry,
)


async def test_safety_identifier_is_echoed_and_logged(client, caplog):
    with caplog.at_level(logging.INFO, logger="server.service"):
        body = await edit_ok(client, edit_form(IMG, MASK, safety_identifier="hash-1", user="u-1"))
    assert body["safety_identifier"] == "hash-1"
    assert "user=hash-1" in caplog.text and "u-1" not in caplog.text


async def test_user_is_the_fallback_end_user(client, caplog):
    with caplog.at_level(logging.INFO, logger="server.service"):
        body = await edit_ok(client, edit_form(IMG, MASK, safety_identifier="", user="u-2"))
    assert body["safety_identifier"] == "u-2" and "user=u-2" in caplog.text
    body = await edit_ok(client, edit_form(IMG, MASK))
    assert "safety_identifier" not in body


async def test_long_identifiers_are_truncated(client):
    body = await edit_ok(client, edit_form(IMG, MASK, safety_identifier="x" * 5000))
    assert body["safety_identifier"] == "x" * 128


@pytest.mark.parametrize("fmt", ["gif", "svg", "GIF"])
async def test_gif_and_svg_outputs_are_refused_naming_the_supported_ones(client, fmt):
    resp = await post_edit(client, edit_form(IMG, MASK, output_format=fmt))
    body = await expect_error(resp, 400, code="invalid_value", param="output_format")
    assert all(f in body["message"] for f in ("png", "jpeg", "webp"))


@pytest.mark.parametrize(
    "field, param",
    [
        ("frame_count", "frame_count"),
        ("frame_duration_ms", "frame_duration_ms"),
        ("svg[model]", "svg"),
    ],
)
async def test_gif_and_svg_options_are_refused(client, field, param):
    resp = await post_edit(client, edit_form(IMG, MASK, **{field: "3"}))
    body = await expect_error(resp, 400, code="invalid_value", param=param)
    assert "GIF/SVG" in body["message"]


@pytest.mark.parametrize(
    "field, good, bad",
    [
        ("complexity", ["low", "medium", "high"], ["extreme"]),
        ("input_fidelity", ["low", "high"], ["medium"]),
    ],
)
async def test_complexity_and_input_fidelity_values(client, field, good, bad):
    for value in good:
        await edit_ok(client, edit_form(IMG, MASK, **{field: value}))
    for value in bad:
        resp = await post_edit(client, edit_form(IMG, MASK, **{field: value}))
        await expect_error(resp, 400, code="invalid_value", param=field)


class PreviewFake(FakeModel):
    """A single-pass fake that sends one preview per row before its result."""

    def run(self, rows):
        out = super().run(rows)
        for row, img in zip(rows, out, strict=True):
            if row.on_preview is not None and row.partial_images:
                row.on_preview(0, img)
        return out


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith(":")]
        if not lines:
            continue
        name = next(ln[7:] for ln in lines if ln.startswith("event: "))
        data = json.loads(next(ln[6:] for ln in lines if ln.startswith("data: ")))
        events.append((name, data))
    return events


async def test_stream_events_name_their_image_and_split_usage(make_client):
    cl = await make_client(reg=registry(PreviewFake("p"), default="p"))
    rgba = np.dstack([np.zeros((H, W, 3), np.uint8), np.full((H, W), 255, np.uint8)])
    rgba[:4, :4, 3] = 0  # transparent pixels outside the edit region stay transparent
    mp = edit_form(png(rgba), MASK, stream="true", partial_images=1, n=3, background="transparent")
    resp = await post_edit(cl, mp)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = sse_events(await resp.text())
    partial = [d for n, d in events if n == "image_edit.partial_image"]
    done = [d for n, d in events if n == "image_edit.completed"]
    assert sorted(d["image_index"] for d in partial) == [0, 1, 2]
    assert [d["image_index"] for d in done] == [0, 1, 2]
    assert all(d["background"] == "transparent" for d in partial + done)
    json_usage = (await edit_ok(cl, edit_form(png(rgba), MASK, n=3)))["usage"]
    assert sum(d["usage"]["input_tokens"] for d in done) == json_usage["input_tokens"]
    assert sum(d["usage"]["output_tokens"] for d in done) == json_usage["output_tokens"]
    assert sum(d["usage"]["total_tokens"] for d in done) == json_usage["total_tokens"]
    assert done[1]["usage"]["input_tokens"] == 0 and done[0]["usage"]["input_tokens"] > 0


async def test_stream_progress_is_opt_in_and_brackets_a_single_pass_model(make_client):
    cl = await make_client(reg=registry(PreviewFake("p"), default="p"))
    plain = sse_events(await (await post_edit(cl, edit_form(IMG, MASK, stream="true"))).text())
    assert [n for n, _ in plain] == ["image_edit.completed"]  # OpenAI's events only
    mp = edit_form(IMG, MASK, stream="true", stream_progress="true", partial_images=1, n=2)
    events = sse_events(await (await post_edit(cl, mp)).text())
    names = [n for n, _ in events]
    assert names[0] == "image_edit.progress" and names[-2:] == ["image_edit.completed"] * 2
    steps = [(d["steps_done"], d["steps_total"]) for n, d in events if n == "image_edit.progress"]
    # no steps: each image counts as one, done when its model call returns (both in one call
    # here; the events coalesce what has been counted when each is sent)
    assert steps[0] == (0, 2) and steps[-1] == (2, 2) and steps == sorted(set(steps))
    assert all(
        set(d) == {"type", "steps_done", "steps_total", "created_at"}
        for n, d in events
        if n == "image_edit.progress"
    )
    bad = await post_edit(cl, edit_form(IMG, MASK, stream="true", stream_progress="maybe"))
    await expect_error(bad, 400, param="stream_progress", code="invalid_value")


async def test_opaque_partial_images_say_opaque(make_client):
    cl = await make_client(reg=registry(PreviewFake("p"), default="p"))
    events = sse_events(
        await (await post_edit(cl, edit_form(IMG, MASK, stream="true", partial_images=1))).text()
    )
    assert [d["background"] for _, d in events] == ["opaque", "opaque"]


async def test_stream_validation_errors_keep_their_status(client):
    resp = await post_edit(
        client, edit_form(IMG, png(alpha_mask(8, 8, (0, 0, 4, 4))), stream="true")
    )
    await expect_error(resp, 400, code="invalid_mask", param="mask")


@pytest.mark.parametrize("value", ["auto", "low", "LOW"])
async def test_moderation_values_are_accepted(client, value):
    await edit_ok(client, edit_form(IMG, MASK, moderation=value))


@pytest.mark.parametrize("value", ["bogus", "high", "none"])
async def test_moderation_is_validated(client, value):
    resp = await post_edit(client, edit_form(IMG, MASK, moderation=value))
    body = await expect_error(resp, 400, code="invalid_value", param="moderation")
    assert "'auto'" in body["message"] and "'low'" in body["message"]


def _disc_picture(w: int, h: int, radius: int) -> np.ndarray:
    """uint8 HxWx3: a red disc of ``radius`` at the centre of a blue picture."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 200
    yy, xx = np.mgrid[:h, :w]
    img[(xx - w / 2 + 0.5) ** 2 + (yy - h / 2 + 0.5) ** 2 <= radius**2] = (255, 0, 0)
    return img


def _red_extent(img: np.ndarray) -> tuple[int, int]:
    """(width, height) of the red pixels' bounding box."""
    ys, xs = np.nonzero((img[..., 0] > 128) & (img[..., 2] < 128))
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.mark.parametrize(
    "in_size, size",
    [((128, 64), "128x128"), ((64, 128), "128x128"), ((128, 128), "128x64"), ((96, 64), "64x96")],
)
async def test_another_aspect_ratio_covers_and_crops_never_stretches(client, in_size, size):
    """A size of another aspect ratio than the input: scaled to cover it and centre-cropped, so
    a disc stays a disc, centred, at the cover scale (it was stretched into an ellipse)."""
    w, h = in_size
    out_w, out_h = map(int, size.split("x"))
    img = _disc_picture(w, h, radius=min(w, h) // 4)
    # the edit region: a corner of the part that is kept, away from the disc
    x0, y0 = (w - min(w, h * out_w // out_h)) // 2, (h - min(h, w * out_h // out_w)) // 2
    mask = alpha_mask(w, h, (x0 + 2, y0 + 2, x0 + 10, y0 + 10))
    body = await edit_ok(client, edit_form(png(img), png(mask), size=size))
    out = decode_b64(body["data"][0]["b64_json"])
    assert out.shape[:2] == (out_h, out_w) and body["size"] == size
    dw, dh = _red_extent(out)
    assert abs(dw - dh) <= 2, (dw, dh)  # round, not an ellipse
    scale = max(out_w / w, out_h / h)  # cover: the larger of the two scales
    assert abs(dw - 2 * (min(w, h) // 4) * scale) <= 3
    # centred: the disc's centre is the output's centre
    ys, xs = np.nonzero((out[..., 0] > 128) & (out[..., 2] < 128))
    assert abs(xs.mean() - (out_w - 1) / 2) <= 1 and abs(ys.mean() - (out_h - 1) / 2) <= 1


async def test_a_region_cropped_away_by_the_size_rule_is_a_400(client):
    w, h = 128, 64
    mask = alpha_mask(w, h, (0, 0, 16, 16))  # the left edge: cut off by a square output
    resp = await post_edit(client, edit_form(png(_disc_picture(w, h, 8)), png(mask), size="64x64"))
    body = await expect_error(resp, 400, code="invalid_mask", param="mask")
    assert "centre-cropped" in body["message"]
