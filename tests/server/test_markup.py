"""Markup (the SDK's ``markup`` field): strokes on a transparent PNG -> edit region + guidance image.
Tests of server/imaging/'s pure functions, on pixels; every array is generated here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.imaging import (
    ALPHA_EDIT_BELOW,
    MARKUP_MARGIN_PX,
    ImageError,
    composite,
    decode,
    edit_mask_from_markup,
    overlay_markup,
)


def _markup(h: int = 40, w: int = 60) -> np.ndarray:
    """uint8 HxWx4: fully transparent (alpha 0), strokes to be drawn by the test."""
    return np.zeros((h, w, 4), np.uint8)


def _disc_region(strokes: np.ndarray, r: float) -> np.ndarray:
    """Reference: bool HxW, pixels within Euclidean distance r of a True pixel (brute force)."""
    h, w = strokes.shape
    ys, xs = np.nonzero(strokes)
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return (d2 <= r * r).any(axis=-1)


@pytest.mark.parametrize("margin", [0, 1, 3, MARKUP_MARGIN_PX])
def test_region_is_strokes_grown_by_an_exact_disc(margin):
    m = _markup()
    m[20, 30] = (255, 0, 0, 255)  # a dot
    m[5, 2:9] = (0, 255, 0, 200)  # a short line touching the left border region
    m[39, 59] = (0, 0, 255, 255)  # the bottom-right corner: no wrap-around
    got = edit_mask_from_markup(m, margin)
    assert got.dtype == np.float32 and got.shape == (40, 60)
    assert set(np.unique(got)) == {0.0, 1.0}
    np.testing.assert_array_equal(got == 1, _disc_region(m[..., 3] >= ALPHA_EDIT_BELOW, margin))


def test_default_margin_and_alpha_threshold():
    m = _markup()
    m[10:12, 10:30, 3] = 255
    m[30, 40, 3] = ALPHA_EDIT_BELOW  # just opaque enough: a stroke
    m[30, 10, 3] = ALPHA_EDIT_BELOW - 1  # antialiased fringe: not a stroke on its own
    got = edit_mask_from_markup(m)
    assert got[30, 40] == 1 and got[30, 40 + MARKUP_MARGIN_PX] == 1
    assert got[30, 40 + MARKUP_MARGIN_PX + 1] == 0
    assert got[30, 10] == 0  # the fringe pixel is 18 px from the line: outside the grown region
    assert got[10 - MARKUP_MARGIN_PX - 1, 20] == 0 and got[10 - MARKUP_MARGIN_PX, 20] == 1


def test_markup_without_transparent_pixels_or_without_strokes_is_refused():
    opaque = np.full((8, 8, 4), 255, np.uint8)
    faint = np.full((8, 8, 4), ALPHA_EDIT_BELOW, np.uint8)  # semi-transparent, but no background
    for m in (opaque, faint):
        with pytest.raises(ImageError) as ei:
            edit_mask_from_markup(m)
        assert ei.value.code == "invalid_value" and "transparent pixels" in str(ei.value)
    empty = _markup(8, 8)
    empty[..., 3] = ALPHA_EDIT_BELOW - 1  # faint everywhere: no stroke
    with pytest.raises(ImageError) as ei:
        edit_mask_from_markup(empty)
    assert ei.value.code == "invalid_value" and "no strokes" in str(ei.value)
    with pytest.raises(ValueError):
        edit_mask_from_markup(_markup(), -1)
    with pytest.raises(ValueError):
        edit_mask_from_markup(np.zeros((8, 8, 3), np.uint8))


def test_overlay_is_alpha_compositing_exact_at_the_ends():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    m = _markup()
    m[10:20, 10:20] = (255, 0, 0, 255)
    m[25, 5:50] = (100, 200, 50, 51)  # 20 % opaque
    out = overlay_markup(img, m)
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    untouched = m[..., 3] == 0
    np.testing.assert_array_equal(out[untouched], img[untouched])
    assert (out[10:20, 10:20] == (255, 0, 0)).all()
    expect = np.rint(img[25, 5:50] * (204 / 255) + np.array([100, 200, 50]) * (51 / 255))
    assert np.abs(out[25, 5:50].astype(int) - expect).max() <= 1
    gray = np.full((2, 2, 3), 100, np.uint8)
    half = np.zeros((2, 2, 4), np.uint8)
    half[...] = (200, 200, 200, 51)
    assert (overlay_markup(gray, half) == 120).all()  # 100 x 0.8 + 200 x 0.2, exactly
    with pytest.raises(ValueError):
        overlay_markup(img, _markup(10, 10))


def test_uploaded_markup_strokes_are_fully_replaced_after_compositing():
    """The margin's purpose, end to end: decode a PNG markup, build the region, paste a generated
    image with the default feather: no pixel of a stroke survives, pixels far away are kept."""
    m = _markup(64, 64)
    m[30:34, 8:56] = (255, 0, 0, 255)
    m[29, 8:56] = (255, 0, 0, 90)  # antialiased edge
    buf = io.BytesIO()
    Image.fromarray(m, "RGBA").save(buf, "PNG")
    rgba, transparent = decode(buf.getvalue(), max_pixels=10_000)
    assert transparent
    region = edit_mask_from_markup(rgba)
    image = np.full((64, 64, 3), 40, np.uint8)
    guided = overlay_markup(image, rgba)
    generated = np.full((64, 64, 3), 220, np.uint8)
    out = composite(guided, generated, region)
    drawn = rgba[..., 3] > 0
    assert (out[drawn] == 220).all()
    far = np.ones((64, 64), bool)
    far[
        29 - MARKUP_MARGIN_PX : 34 + MARKUP_MARGIN_PX, 8 - MARKUP_MARGIN_PX : 56 + MARKUP_MARGIN_PX
    ] = False
    np.testing.assert_array_equal(out[far], image[far])
