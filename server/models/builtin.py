"""The built-in model: classical (non-learned) inpainting with OpenCV. No weights, works offline.

What it does, honestly: it fills the edit region from the pixels around it. It does NOT read the
prompt, so it cannot add objects or follow instructions; it removes things (scratches, text,
small objects on smooth or repetitive backgrounds) well and large regions poorly.

Algorithm (per image):
1. Structure: Telea's fast-marching inpainting (``cv2.INPAINT_TELEA``) of a downscaled copy, so
   the cost stays bounded for large edit regions, then upscaled into the region.
2. Texture: fast marching gives smooth fills, so the high-frequency detail (image minus its blur)
   is copied in from the mirror image of each edited pixel across the region's border (the
   nearest known pixel ``b``; source ``2b - p``), which continues the surrounding grain.
3. Pixels outside the region are returned untouched (serving composites with a feathered seam).
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import Row
from .capabilities import Capabilities, ModelLimits

NAME = "opencv-telea-inpaint"

#: fast marching runs on at most this many pixels of the region's bounding box
_STRUCTURE_BUDGET = 384 * 384


def _structure(image: np.ndarray, edit: np.ndarray) -> np.ndarray:
    """Telea fill of uint8 HxWx3 ``image`` where ``edit`` (uint8 HxW, 255 = edit) is set."""
    h, w = edit.shape
    ys, xs = np.nonzero(edit)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # Work on the region's bounding box plus a margin: fast marching only needs the border.
    m = max(8, (max(y1 - y0, x1 - x0)) // 4)
    y0, y1, x0, x1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
    crop, crop_mask = image[y0:y1, x0:x1], edit[y0:y1, x0:x1]
    scale = min(1.0, (_STRUCTURE_BUDGET / crop_mask.size) ** 0.5)
    if scale < 1.0:
        size = (max(8, round(crop.shape[1] * scale)), max(8, round(crop.shape[0] * scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(crop_mask, size, interpolation=cv2.INTER_NEAREST)
        small_mask = cv2.dilate(small_mask, np.ones((3, 3), np.uint8))
        filled = cv2.inpaint(small, small_mask, 3, cv2.INPAINT_TELEA)
        filled = cv2.resize(filled, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_CUBIC)
    else:
        filled = cv2.inpaint(crop, crop_mask, 3, cv2.INPAINT_TELEA)
    out = image.copy()
    region = crop_mask > 0
    out[y0:y1, x0:x1][region] = filled[region]
    return out


def _texture(image: np.ndarray, edit: np.ndarray) -> np.ndarray:
    """High-frequency detail for edited pixels, mirrored across the region's border.

    Returns float32 HxWx3 (zero outside the region).
    """
    img = image.astype(np.float32)
    detail = img - cv2.GaussianBlur(img, (0, 0), 2.0)
    known = (edit == 0).astype(np.uint8)
    # For every pixel, the nearest known pixel (labels index the known pixels' positions).
    _, labels = cv2.distanceTransformWithLabels(
        1 - known, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    ky, kx = np.nonzero(known)
    lookup_y = np.zeros(labels.max() + 1, np.int64)
    lookup_x = np.zeros(labels.max() + 1, np.int64)
    lookup_y[labels[ky, kx]] = ky
    lookup_x[labels[ky, kx]] = kx
    py, px = np.nonzero(edit)
    by, bx = lookup_y[labels[py, px]], lookup_x[labels[py, px]]
    h, w = edit.shape
    sy = np.clip(2 * by - py, 0, h - 1)
    sx = np.clip(2 * bx - px, 0, w - 1)
    # A mirrored source that is itself edited has no detail to give: fall back to the border.
    bad = edit[sy, sx] > 0
    sy[bad], sx[bad] = by[bad], bx[bad]
    out = np.zeros_like(img)
    # Fade the copied detail with depth so the middle of a large region stays calm.
    depth = np.hypot(py - by, px - bx)
    fade = np.clip(1.0 - depth / 48.0, 0.3, 1.0)[:, None]
    out[py, px] = detail[sy, sx] * fade
    return out


class BuiltinInpaintModel:
    """OpenCV fast-marching + mirrored-texture inpainting. Single pass, CPU, no weights."""

    def __init__(self, name: str = NAME) -> None:
        self.name = name
        self.capabilities = Capabilities(
            # Works at the request's own resolution: no crop/rescale needed up to the output limit.
            limits=ModelLimits(
                min_side=16, max_side=4096, native_side=1024, max_work_side=4096, multiple=8
            ),
            reads_prompt=False,
            streams_previews=False,
        )

    def describe(self) -> dict:
        return {
            "kind": "classical-inpainting",
            "description": (
                "Built-in classical inpainting (OpenCV Telea fast marching + mirrored texture). "
                "Fills the edit region from its surroundings. It ignores the prompt: it cannot "
                "add objects or follow instructions."
            ),
            "provider": "cpu",
            "precision": "n/a",
            "weights": None,
        }

    def count_tokens(self, prompt: str) -> int:
        return 0  # the prompt is not read, so nothing is computed from it

    def run(self, rows: list[Row]) -> list[np.ndarray]:
        """uint8 HxWx3 per row; pixels outside the row's mask equal the input's."""
        return [self.inpaint(row.image, row.mask) for row in rows]

    @staticmethod
    def inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """image uint8 HxWx3 RGB; mask float32 HxW in [0, 1] (1 = edit) -> uint8 HxWx3."""
        edit = (mask > 0.5).astype(np.uint8) * 255
        if not edit.any():
            return image.copy()
        if edit.all():
            # Nothing to propagate from: a flat fill of the mean colour is the honest answer.
            return np.full_like(image, image.reshape(-1, 3).mean(0).round().astype(np.uint8))
        structure = _structure(image, edit)
        texture = _texture(image, edit)
        region = edit > 0
        out = image.copy()
        out[region] = np.clip(
            structure[region].astype(np.float32) + texture[region], 0, 255
        ).astype(np.uint8)
        return out

    def close(self) -> None:
        pass
