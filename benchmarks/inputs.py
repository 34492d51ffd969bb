"""The benchmark's inputs, identical for every implementation: one deterministic scene + mask.

image: uint8 HxWx3 RGB (a gradient, a red square, fine texture so PNG coding is not trivial).
mask: float32 HxW in {0, 1}, 1 = edit (the middle half of the image, covering the square).
"""

from __future__ import annotations

import io

import numpy as np


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 40 + 120 * x / max(1, width - 1)
    img[..., 1] = 80 + 100 * y / max(1, height - 1)
    img[..., 2] = 200 - 60 * x / max(1, width - 1)
    img += rng.normal(0, 6, img.shape)
    x0, y0, x1, y1 = width // 3, height // 3, 2 * width // 3, 2 * height // 3
    img[y0:y1, x0:x1] = (230, 30, 30)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def edit_mask(width: int, height: int) -> np.ndarray:
    m = np.zeros((height, width), np.float32)
    m[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
    return m


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 HxW (L) or HxWx3 (RGB) -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """Black/white mask PNG (no alpha): white = edit, the server's rule for opaque masks."""
    return png_bytes((mask > 0.5).astype(np.uint8) * 255)
