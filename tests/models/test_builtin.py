"""The built-in OpenCV model: outside the mask untouched, inside filled from the surroundings."""

from __future__ import annotations

import numpy as np
import pytest

from server.models.base import Row
from server.models.builtin import NAME, BuiltinInpaintModel
from tests.helpers import default_box, inner, scene


def _mask(h: int, w: int, box) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


@pytest.fixture(scope="module")
def model() -> BuiltinInpaintModel:
    return BuiltinInpaintModel()


@pytest.mark.parametrize("w, h", [(64, 64), (96, 40), (40, 120), (250, 170)])
def test_outside_exact_inside_filled(model, w, h):
    img = scene(w, h)
    box = default_box(w, h)
    mask = _mask(h, w, box)
    out = model.inpaint(img, mask)
    assert out.shape == img.shape and out.dtype == np.uint8
    keep = mask == 0
    assert np.array_equal(out[keep], img[keep])
    deep = out[inner(box, 2)].astype(int)
    # the red square is replaced by something close to the blue surroundings
    assert (deep[..., 0] < 100).all() and (deep[..., 2] > 120).all()


def test_smooth_fill_continues_a_gradient(model):
    x = np.linspace(0, 255, 128, dtype=np.float32)
    img = np.repeat(np.stack([x, x, x], -1)[None], 64, 0).round().astype(np.uint8)
    box = (50, 20, 70, 44)
    damaged = img.copy()
    damaged[20:44, 50:70] = (255, 0, 255)
    out = model.inpaint(damaged, _mask(64, 128, box))
    err = np.abs(out[inner(box, 2)].astype(int) - img[inner(box, 2)].astype(int))
    assert err.mean() < 20


def test_whole_image_mask_is_mean_colour(model):
    img = scene(48, 32)
    out = model.inpaint(img, np.ones((32, 48), np.float32))
    mean = img.reshape(-1, 3).mean(0).round()
    assert (out == mean.astype(np.uint8)).all()


def test_tiny_mask_single_pixel(model):
    img = scene(32, 32)
    mask = np.zeros((32, 32), np.float32)
    mask[5, 7] = 1.0
    out = model.inpaint(img, mask)
    keep = mask == 0
    assert np.array_equal(out[keep], img[keep])
    # the one pixel takes its neighbours' colour (the scene is smooth there)
    assert np.abs(out[5, 7].astype(int) - img[5, 8].astype(int)).max() <= 12


def test_empty_mask_is_identity(model):
    img = scene(32, 24)
    out = model.inpaint(img, np.zeros((24, 32), np.float32))
    assert np.array_equal(out, img) and out is not img


def test_soft_mask_threshold(model):
    img = scene(32, 32)
    mask = np.full((32, 32), 0.5, np.float32)  # not > 0.5: nothing is edited
    mask[10:20, 10:20] = 0.9
    out = model.inpaint(img, mask)
    keep = np.ones((32, 32), bool)
    keep[10:20, 10:20] = False
    assert np.array_equal(out[keep], img[keep])


def test_edge_mask_touching_border(model):
    img = scene(64, 48)
    box = (0, 0, 20, 48)  # the whole left strip
    out = model.inpaint(img, _mask(48, 64, box))
    assert np.array_equal(out[:, 20:], img[:, 20:])
    assert np.isfinite(out).all()


def test_large_region_bounded_cost(model):
    import time

    img = scene(1024, 1024)
    t0 = time.perf_counter()
    out = model.inpaint(img, _mask(1024, 1024, (100, 100, 900, 900)))
    assert time.perf_counter() - t0 < 10
    assert np.array_equal(out[:100], img[:100])


def test_run_rows_and_metadata(model):
    rows = [
        Row(image=scene(32, 24), mask=_mask(24, 32, (8, 8, 16, 16)), prompt="p", seed=i)
        for i in range(3)
    ]
    outs = model.run(rows)
    assert len(outs) == 3 and all(o.shape == (24, 32, 3) for o in outs)
    assert model.name == NAME == "opencv-telea-inpaint"
    assert model.count_tokens("a long prompt here") == 0
    caps = model.capabilities
    assert caps.reads_prompt is False and caps.streams_previews is False
    assert caps.sampling is None  # it reads no sampling extension
    assert caps.settings(tier="high", steps=500) is None
    assert caps.card()["reads_prompt"] is False and "parameters" not in caps.card()
    lim = caps.limits
    assert lim.min_side <= 256 and lim.max_side >= 1536 and lim.multiple == 8
