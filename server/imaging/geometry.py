"""Sizes: resize images and masks, and plan the crop the model works on (the crop rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 HxW[xC] -> uint8 height x width [xC]: INTER_AREA when shrinking, INTER_CUBIC otherwise."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img.copy()
    interp = cv2.INTER_AREA if width <= w and height <= h else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 HxW {0,1} -> float32 height x width {0,1}.

    Shrinking: a target pixel is edit if ANY part of it is covered by the edit region (area average
    > 0), so thin strokes and small regions never vanish at the model's size. Enlarging: bilinear,
    then >= 0.5 (smooth boundary, no growth).
    """
    h, w = mask.shape[:2]
    m = (mask > 0.5).astype(np.float32)
    if (w, h) == (width, height):
        return m
    if width <= w and height <= h:
        return (cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA) > 1e-4).astype(
            np.float32
        )
    return (cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(
        np.float32
    )


def cover_box(
    width: int, height: int, out_width: int, out_height: int
) -> tuple[int, int, int, int]:
    """The centred part of a width x height picture with the aspect ratio of out_width x
    out_height: (x0, y0, x1, y1), x1/y1 exclusive, the whole picture when the ratios agree.

    The size rule: a requested size of another aspect ratio than the input is filled by scaling
    the input to cover it and cutting the overflow equally from both ends (what image APIs
    usually do), never by stretching, so a circle stays a circle. Cropping this box and
    resizing it to the output size leaves an aspect error under one source pixel.
    """
    if width * out_height > height * out_width:  # wider than the output: cut left and right
        w = min(width, max(1, round(height * out_width / out_height)))
        x0 = (width - w) // 2
        return x0, 0, x0 + w, height
    h = min(height, max(1, round(width * out_height / out_width)))
    y0 = (height - h) // 2
    return 0, y0, width, y0 + h


@dataclass(frozen=True)
class WorkRegion:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the image; x1/y1 exclusive
    work_width: int  # size the model runs at: multiples of `multiple`, longer side <= max_work_side
    work_height: int


def _round_to(v: float, multiple: int, cap: int) -> int:
    """Nearest multiple of `multiple` (halves round up), at least `multiple`, at most `cap` (itself a multiple)."""
    return int(min(max(multiple, math.floor(v / multiple + 0.5) * multiple), cap))


def _grow(lo: int, hi: int, target: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to length min(target, limit), centred, shifted to stay inside [0, limit)."""
    target = min(target, limit)
    if hi - lo >= target:
        return lo, hi
    lo -= (target - (hi - lo)) // 2
    lo = min(max(lo, 0), limit - target)
    return lo, lo + target


def plan_work_region(
    mask: np.ndarray,
    *,
    native_side: int,
    max_work_side: int,
    multiple: int = 8,
    context: float = 0.25,
    min_context_px: int = 32,
) -> WorkRegion:
    """Which part of the image the model sees, and at what size (the crop rule).

    ``mask``: float32 HxW, edit where > 0.5. Let W x H be the image size and
    ``cap = max_work_side`` rounded down to a multiple of ``multiple``.

    1. Small image (max(W, H) <= max_work_side): box = the whole image; work size = W x H, each side
       rounded to the nearest multiple of ``multiple`` (at least ``multiple``, at most ``cap``).
    2. Large image:
       a. box = bounding box of the edit region (the whole image if the region is empty);
       b. grow it by ``pad = max(min_context_px, ceil(context * longer side of the box))`` on every
          side, clipped to the image;
       c. grow each side to at least ``min(native_side, image side)``, centred, shifted to stay inside;
       d. if the box's longer side <= max_work_side: grow each box side to the next multiple of
          ``multiple`` when the image has room (centred, shifted inside), so the crop maps 1:1 to the
          model's input; work size = box size rounded to the nearest multiple (at least
          ``multiple``, at most ``cap``; only a box side equal to a non-multiple image side is
          resampled);
       e. else: work size = box scaled so its longer side == ``cap``; the shorter side is rounded to
          the nearest multiple (at least ``multiple``), so the aspect ratio is kept to within half a
          ``multiple``. The model output is resized back to the box.
    So a 4096x4096 photo with a small mask costs about what a native-size image does.
    """
    H, W = mask.shape[:2]
    cap = max(multiple, (max_work_side // multiple) * multiple)
    if max(W, H) <= max_work_side:
        return WorkRegion((0, 0, W, H), _round_to(W, multiple, cap), _round_to(H, multiple, cap))
    ys, xs = np.nonzero(mask > 0.5)
    if xs.size == 0:
        x0, y0, x1, y1 = 0, 0, W, H
    else:
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    pad = max(min_context_px, math.ceil(context * max(x1 - x0, y1 - y0)))
    x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(W, x1 + pad), min(H, y1 + pad)
    x0, x1 = _grow(x0, x1, native_side, W)
    y0, y1 = _grow(y0, y1, native_side, H)
    if max(x1 - x0, y1 - y0) <= max_work_side:
        x0, x1 = _grow(x0, x1, -(-(x1 - x0) // multiple) * multiple, W)
        y0, y1 = _grow(y0, y1, -(-(y1 - y0) // multiple) * multiple, H)
        bw, bh = x1 - x0, y1 - y0
        return WorkRegion(
            (x0, y0, x1, y1), _round_to(bw, multiple, cap), _round_to(bh, multiple, cap)
        )
    bw, bh = x1 - x0, y1 - y0
    scale = cap / max(bw, bh)
    ww = cap if bw >= bh else _round_to(bw * scale, multiple, cap)
    wh = cap if bh > bw else _round_to(bh * scale, multiple, cap)
    return WorkRegion((x0, y0, x1, y1), ww, wh)
