"""Output: paste the generated pixels into the original, choose the alpha, encode the bytes."""

from __future__ import annotations

import cv2
import numpy as np

from .decoding import _FORMAT_ALIASES


def composite(
    original: np.ndarray, generated: np.ndarray, mask: np.ndarray, feather_px: int = 3
) -> np.ndarray:
    """Paste ``generated`` into ``original`` inside the edit region, feathering only the seam.

    original, generated: uint8 HxWxC (same shape); mask: float32 HxW, edit where > 0.5.
    Weight of ``generated`` = min(d / (feather_px + 1), 1), d = Euclidean distance (px) from an edit
    pixel to the nearest kept pixel (image borders do not count as kept). Kept pixels (d = 0) are
    bit-exact copies of ``original``; the first ``feather_px`` pixels inside the region blend; deeper
    pixels are exactly ``generated``. Returns uint8 HxWxC.
    """
    if original.shape != generated.shape or original.shape[:2] != mask.shape[:2]:
        raise ValueError(
            f"composite: shapes differ: original {original.shape}, "
            f"generated {generated.shape}, mask {mask.shape}"
        )
    edit = (mask > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(edit, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    w = np.minimum(dist / float(max(feather_px, 0) + 1), 1.0).astype(np.float32)[..., None]
    out = original.astype(np.float32) * (1.0 - w) + generated.astype(np.float32) * w
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    keep = edit == 0
    out[keep] = original[keep]  # exactness by construction, not by float arithmetic
    return out


def encode(img: np.ndarray, fmt: str, *, compression: int = 100) -> bytes:
    """uint8 HxWx3 RGB or HxWx4 RGBA -> encoded bytes (no metadata: EXIF is already applied).

    fmt png | jpeg | webp. ``compression`` 0..100 is the jpeg/webp quality (100 = best, as OpenAI
    uses it; webp clamps to >= 1; webp 100 is still lossy). png is lossless with fast zlib level 1.
    jpeg drops alpha.
    """
    fmt = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    q = int(min(max(compression, 0), 100))
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    if fmt == "jpeg" and img.shape[2] == 4:
        img = img[..., :3]
    code = cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR
    bgr = cv2.cvtColor(np.ascontiguousarray(img), code)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
    elif fmt == "webp":
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, max(q, 1)])
    else:
        raise ValueError(f"output_format must be png, jpeg or webp, not {fmt!r}")
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def apply_background(
    rgb: np.ndarray,
    input_alpha: np.ndarray | None,
    edit_mask: np.ndarray,
    background: str,
    output_format: str,
) -> np.ndarray:
    """Final pixels for the requested background: uint8 HxWx4 RGBA or HxWx3 RGB.

    rgb: uint8 HxWx3 (composited result); input_alpha: uint8 HxW alpha of the input image, or None
    if it had none; edit_mask: float32 HxW, edit where > 0.5.
    "transparent": RGBA, alpha = input alpha outside the edit region, 255 inside (transparent
    input pixels that were not edited stay transparent; no input alpha -> all 255).
    "opaque": RGB. "auto": "transparent" if the input had any alpha < 255 and output_format is png or
    webp, else "opaque".
    """
    fmt = _FORMAT_ALIASES.get(output_format.lower(), output_format.lower())
    if background == "auto":
        has_alpha = input_alpha is not None and bool((input_alpha < 255).any())
        background = "transparent" if has_alpha and fmt in ("png", "webp") else "opaque"
    if background == "opaque":
        return np.ascontiguousarray(rgb[..., :3])
    if background != "transparent":
        raise ValueError(f"background must be transparent, opaque or auto, not {background!r}")
    if fmt not in ("png", "webp"):
        raise ValueError("background=transparent needs output_format png or webp.")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    if input_alpha is not None:
        alpha = np.where(edit_mask > 0.5, alpha, input_alpha).astype(np.uint8)
    return np.dstack([rgb[..., :3], alpha])
