"""``markup`` through the route: its strokes, grown by a margin, are the edit region; the model
sees the strokes drawn over the image; OpenAI's errors for markup + mask, a markup without
transparency or without strokes, and a size mismatch (all with ``param: "markup"``)."""

from __future__ import annotations

import numpy as np

from server.imaging import MARKUP_MARGIN_PX
from tests.helpers import (
    IMG,
    MASK,
    FakeModel,
    H,
    W,
    b64_image,
    edit_form,
    edit_ok,
    expect_error,
    png,
    post_edit,
    registry,
    scene,
)

STROKE = (28, 22, 36, 26)  # x0, y0, x1, y1 of a green scribble inside the red square


def markup(w: int = W, h: int = H, stroke=STROKE) -> np.ndarray:
    m = np.zeros((h, w, 4), np.uint8)
    if stroke is not None:
        x0, y0, x1, y1 = stroke
        m[y0:y1, x0:x1] = (0, 255, 0, 255)
    return m


def with_markup(mp, data: bytes):
    mp.file("markup", data, filename="markup.png", content_type="image/png")
    return mp


class Recorder(FakeModel):
    def run(self, rows):
        self.seen = [r.image.copy() for r in rows]
        return super().run(rows)


async def test_strokes_grown_by_the_margin_are_the_edit_region(client):
    body = await edit_ok(client, with_markup(edit_form(IMG), png(markup())))
    out, original = b64_image(body["data"][0]), scene(W, H)
    x0, y0, x1, y1 = STROKE
    grow = MARKUP_MARGIN_PX + 3  # the margin, then the composite's 3-px feather
    keep = np.ones((H, W), bool)
    keep[max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow] = False
    assert np.array_equal(out[keep], original[keep])  # outside: bit-exact
    assert not np.array_equal(out[y0:y1, x0:x1], original[y0:y1, x0:x1])  # the strokes: edited


async def test_the_model_sees_the_strokes(make_client):
    model = Recorder("rec", fill=(0, 0, 255))
    cl = await make_client(reg=registry(model, default="rec"))
    await edit_ok(cl, with_markup(edit_form(IMG), png(markup())))
    seen = model.seen[0]
    assert seen.shape == (H, W, 3)
    x0, y0, x1, y1 = STROKE
    assert (seen[y0:y1, x0:x1] == (0, 255, 0)).all()  # the guidance, drawn over the image


async def test_markup_and_mask_together_are_refused(client):
    resp = await post_edit(client, with_markup(edit_form(IMG, MASK), png(markup())))
    body = await expect_error(resp, 400, code="invalid_value", param="markup")
    assert "mask" in body["message"]


async def test_markup_without_transparency_is_refused(client):
    opaque = markup()
    opaque[..., 3] = 255
    resp = await post_edit(client, with_markup(edit_form(IMG), png(opaque)))
    body = await expect_error(resp, 400, code="invalid_value", param="markup")
    assert "transparent" in body["message"]


async def test_markup_without_strokes_is_refused(client):
    resp = await post_edit(client, with_markup(edit_form(IMG), png(markup(stroke=None))))
    await expect_error(resp, 400, code="invalid_value", param="markup")


async def test_markup_of_another_size_is_refused(client):
    resp = await post_edit(client, with_markup(edit_form(IMG), png(markup(W * 2, H))))
    body = await expect_error(resp, 400, code="invalid_value", param="markup")
    assert f"{W}x{H}" in body["message"]


async def test_a_mask_still_works_alone(client):
    body = await edit_ok(client, edit_form(IMG, MASK))
    assert len(body["data"]) == 1
