"""Tensors in and out of a one-shot graph, as its manifest's ``OneShotIO`` describes them.

Pure numpy (no runtime): the server's conventions on one side, the graph's on the other.

- Server side: images uint8 HxWx3 RGB; masks float32 HxW in [0, 1], 1 = edit (> 0.5 counts).
- Graph side: NCHW or NHWC, float32/float16/uint8, the image coded as ``image_range`` (pixel 0
  -> lo, 255 -> hi), every mask pixel ``mask_hole`` or ``mask_keep`` (LaMa: 1 = hole; MI-GAN's
  pipeline: 0 = hole, 255 = keep), the mask a separate input or concatenated to the image.

Padding: rows are padded at the bottom and right to the graph's fixed size or to a multiple of
``pad_multiple`` by *reflection* (image and mask alike, so mirrored copies of the hole are holes
too and the network cannot copy the object to remove back in from the mirror), and the output
is cropped back to the row's size.
"""

from __future__ import annotations

import numpy as np

from .manifest import OneShotIO


def padded_size(height: int, width: int, io: OneShotIO) -> tuple[int, int]:
    """(H, W) the graph is called with for a ``height`` x ``width`` row."""
    if io.fixed_size is not None:
        fh, fw = io.fixed_size
        if height > fh or width > fw:
            raise ValueError(f"a {width}x{height} row does not fit the graph's {fw}x{fh} input")
        return fh, fw
    m = io.pad_multiple
    return -(-height // m) * m, -(-width // m) * m


def pad_reflect(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """``a`` (HxW or HxWxC) reflected at the bottom/right to ``height`` x ``width``.

    numpy's "reflect" mirrors about the edge pixel and repeats for pads longer than the side,
    so any target size works (a 64 px crop in a 512 px input is mirrored several times)."""
    h, w = a.shape[:2]
    if (h, w) == (height, width):
        return a
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (a.ndim - 2)
    mode = "reflect" if min(h, w) > 1 else "edge"  # reflect needs two pixels per side
    return np.pad(a, pad, mode=mode)


def to_feeds(
    images: list[np.ndarray], masks: list[np.ndarray], io: OneShotIO, size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Rows (uint8 HxWx3 RGB, float32 HxW 1 = edit) -> the graph's inputs, batch = len(images).

    Every row is padded to ``size`` (H, W) first (``padded_size`` of each row must be ``size``).
    """
    height, width = size
    img = np.stack([pad_reflect(i, height, width) for i in images])  # (B, H, W, 3) uint8
    hole = np.stack([pad_reflect(m > 0.5, height, width) for m in masks])[..., None]
    if io.channels == "BGR":
        img = img[..., ::-1]
    lo, hi = io.image_range
    if io.input_dtype == "uint8":
        if (lo, hi) != (0.0, 255.0):
            raise ValueError("uint8 inputs carry pixels as they are: image_range must be 0..255")
        coded = img.copy()
    else:
        coded = (np.float32(lo) + img.astype(np.float32) * np.float32((hi - lo) / 255.0)).astype(
            np.float32
        )
    if io.zero_holes:
        coded = np.where(hole, np.zeros((), coded.dtype), coded)
    mask = np.where(hole, io.mask_hole, io.mask_keep).astype(np.float32)
    dtype = np.dtype(io.input_dtype)
    coded, mask = coded.astype(dtype), mask.astype(dtype)
    if io.mask is None:
        parts = (coded, mask) if io.concat == "image_first" else (mask, coded)
        tensors = {io.image: np.concatenate(parts, axis=-1)}
    else:
        tensors = {io.image: coded, io.mask: mask}
    if io.layout == "NCHW":
        tensors = {k: v.transpose(0, 3, 1, 2) for k, v in tensors.items()}
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def from_output(
    output: np.ndarray, io: OneShotIO, sizes: list[tuple[int, int]]
) -> list[np.ndarray | Exception]:
    """The graph's output (batch = len(sizes)) -> one uint8 HxWx3 RGB image per row, cropped to
    the row's (height, width); a row with non-finite values gets a ``FloatingPointError``."""
    out = np.asarray(output)
    if out.ndim != 4 or out.shape[0] != len(sizes):
        raise ValueError(
            f"output {io.output!r} has shape {out.shape}; expected ({len(sizes)}, ...) 4-D"
        )
    if io.layout == "NCHW":
        out = out.transpose(0, 2, 3, 1)
    if out.shape[-1] != 3:
        raise ValueError(f"output {io.output!r} has {out.shape[-1]} channels; expected 3")
    if io.channels == "BGR":
        out = out[..., ::-1]
    lo, hi = io.output_range
    results: list[np.ndarray | Exception] = []
    for row, (h, w) in zip(out, sizes, strict=True):
        row = row[:h, :w]
        if row.dtype == np.uint8 and (lo, hi) == (0.0, 255.0):
            results.append(np.ascontiguousarray(row))
            continue
        x = row.astype(np.float32)
        if not np.isfinite(x).all():
            results.append(FloatingPointError("the model produced non-finite values"))
            continue
        x = (x - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        results.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return results
