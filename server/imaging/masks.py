"""Edit-region rules: which pixels a request edits, as float32 HxW in {0, 1}, 1 = edit.

From a mask upload (alpha, else luminance), from the image's own alpha (no mask), or from a markup
(opaque strokes on a transparent layer, grown by ``MARKUP_MARGIN_PX``); plus the markup overlaid on
the image (what a model that reads the image sees).
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ImageError

ALPHA_EDIT_BELOW = 128  # alpha < 128 counts as "transparent" (the midpoint of an antialiased edge)
LUMA_EDIT_ABOVE = 127  # luminance > 127 counts as "white" in a black/white mask


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 HxW luminance in [0, 255] (ITU-R BT.601, as Pillow's "L")."""
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def edit_mask_from_mask_image(rgba: np.ndarray, has_transparency: bool) -> np.ndarray:
    """Mask upload (uint8 HxWx4 RGBA) -> float32 HxW in {0, 1}, 1 = edit.

    Alpha rule (OpenAI): if the mask has transparency, pixels with alpha < 128 are edited. A
    hard-edged mask (alpha 0 or 255) gives exactly OpenAI's "fully transparent = edit"; on an
    antialiased edge 128 is the midpoint, i.e. the line the user drew.
    Luminance rule: if the mask has no transparency (no alpha, or opaque everywhere) -- or its only
    transparency is faint (no pixel has alpha < 128, so the alpha rule would select nothing) --
    pixels with BT.601 luminance > 127 are edited (white = edit, black = keep).
    """
    if has_transparency:
        edit = rgba[..., 3] < ALPHA_EDIT_BELOW
        if edit.any():
            return edit.astype(np.float32)
    return (_luminance(rgba) > LUMA_EDIT_ABOVE).astype(np.float32)


def edit_mask_from_image_alpha(rgba: np.ndarray) -> np.ndarray | None:
    """No-mask rule (dall-e-2): the image's own transparent pixels (alpha < 128) are the edit region.

    uint8 HxWx4 -> float32 HxW in {0, 1}, or None when no pixel is that transparent (fully opaque,
    or only faint alpha): the caller then edits the whole image.
    """
    if rgba.ndim != 3 or rgba.shape[2] < 4:
        return None
    edit = rgba[..., 3] < ALPHA_EDIT_BELOW
    return edit.astype(np.float32) if edit.any() else None


#: How far (px, Euclidean) a markup's strokes are grown to make the edit region. Two reasons for 8:
#: it exceeds :func:`composite`'s 3-px feather + 1, so every stroke pixel lies at least 5 px inside
#: the region and is fully replaced (no half-blended stroke survives at the seam); and it is one
#: latent cell of the SD VAE (factor 8), so on the model's grid the region covers the cell beyond
#: each stroke. A fixed size, not a fraction of the image: a stroke is drawn at screen scale.
MARKUP_MARGIN_PX = 8


def edit_mask_from_markup(markup_rgba: np.ndarray, margin_px: int = MARKUP_MARGIN_PX) -> np.ndarray:
    """Markup upload (uint8 HxWx4 RGBA, as :func:`decode` returns it) -> edit region, float32 HxW
    in {0, 1}, 1 = edit.

    Strokes are the pixels with alpha >= ``ALPHA_EDIT_BELOW`` (the mask rules' threshold, seen from
    the other side: a mask's transparent pixels are edited, a markup's opaque strokes are). The
    region is every pixel within Euclidean distance ``margin_px`` of a stroke (a disc dilation,
    exact: OpenCV's distance transform). Raises ImageError(code "invalid_value") when the markup
    has no transparent pixel, or no stroke (an empty edit region).
    """
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, not {margin_px}")
    if markup_rgba.ndim != 3 or markup_rgba.shape[2] != 4 or markup_rgba.dtype != np.uint8:
        raise ValueError(
            f"markup must be uint8 HxWx4 RGBA, not {markup_rgba.dtype} {markup_rgba.shape}"
        )
    strokes = markup_rgba[..., 3] >= ALPHA_EDIT_BELOW
    if strokes.all():
        raise ImageError(
            "The markup must contain transparent pixels: draw the strokes on a transparent "
            f"background (alpha below {ALPHA_EDIT_BELOW}) the size of the image.",
            "invalid_value",
        )
    if not strokes.any():
        raise ImageError(
            "The markup has no strokes (every pixel is transparent), so nothing would be edited: "
            f"draw over the area to edit with opaque strokes (alpha {ALPHA_EDIT_BELOW} or more).",
            "invalid_value",
        )
    dist = cv2.distanceTransform((~strokes).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (dist <= margin_px).astype(np.float32)


def overlay_markup(image_rgb: np.ndarray, markup_rgba: np.ndarray) -> np.ndarray:
    """The markup alpha-composited over the image: what a model that reads the image sees.

    image_rgb: uint8 HxWx3 in [0, 255]; markup_rgba: uint8 HxWx4, same HxW. Returns uint8 HxWx3:
    round((image x (255 - alpha) + markup x alpha) / 255) per channel, so alpha 0 leaves the image
    bit-exact and alpha 255 gives the stroke colour exactly.
    """
    if image_rgb.shape[:2] != markup_rgba.shape[:2] or markup_rgba.shape[2:] != (4,):
        raise ValueError(
            f"overlay_markup: image {image_rgb.shape} and markup {markup_rgba.shape} differ"
        )
    a = markup_rgba[..., 3:4].astype(np.uint32)
    mixed = image_rgb[..., :3].astype(np.uint32) * (255 - a) + markup_rgba[..., :3] * a
    return ((mixed + 127) // 255).astype(np.uint8)
