"""Pixels at the request boundary: decode uploads, derive edit masks, plan the crop, composite, encode.

Data conventions (docs/CONVENTIONS.md): images are uint8 HxWx3 RGB or HxWx4 RGBA in [0, 255];
masks are float32 HxW in {0, 1}, 1 = edit. Everything here is numpy/OpenCV/Pillow (no torch).

Hostile uploads: the format is identified from the bytes by a short list of Pillow parsers, the pixel
count is checked from the header before any pixel is decoded, truncated data is an error, and any
exception a parser raises on garbage becomes ``ImageError(code="invalid_image_file")``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFile

# Our own header check (``max_pixels`` in :func:`decode`) replaces Pillow's decompression-bomb
# guard, so the client hears our limit rather than Pillow's. Truncated data must fail, not be padded.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.init()  # register every plugin now, so Image.open(formats=...) finds them by name

# Parsers allowed to look at uploads: the served formats plus common ones we recognise only to say
# "unsupported" precisely. Exotic plugins (EPS, FITS, ...) never see client bytes.
# (MPO files come out of the JPEG parser.)
_IDENTIFY = tuple(
    f for f in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "AVIF") if f in Image.OPEN
)
_FORMAT_ALIASES = {"mpo": "jpeg", "jpg": "jpeg"}  # MPO = multi-picture JPEG (many phone cameras)
# Magic bytes of formats Pillow cannot open here, so the client is told "unsupported", not "corrupt".
_FTYP_BRANDS = {b"heic": "heic", b"heix": "heic", b"mif1": "heif", b"avif": "avif", b"avis": "avif"}
# EXIF orientation -> Pillow transpose that shows the image as a viewer does (as ImageOps.exif_transpose).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ALPHA_EDIT_BELOW = 128  # alpha < 128 counts as "transparent" (the midpoint of an antialiased edge)
LUMA_EDIT_ABOVE = 127  # luminance > 127 counts as "white" in a black/white mask


class ImageError(ValueError):
    """The client's image is unusable; ``code`` is the OpenAI error code, the message says the fix."""

    def __init__(self, message: str, code: str = "invalid_image_file"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png" | "jpeg" | "webp" | other Pillow format name, lowercased
    width: int  # after EXIF orientation
    height: int
    mode: str  # Pillow mode as stored ("RGB", "P", "I;16", ...)
    frames: int  # frame count the header declares (1 for still images)


def _sniff(data: bytes) -> str | None:
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "heif/avif")
    head = data[:64].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "pdf"
    if head.startswith((b"<svg", b"<?xml")):
        return "svg"
    return None


def _open(data: bytes, extra: tuple[str, ...] = ()) -> tuple[Image.Image, str]:
    """Lazy-open ``data`` (header only) -> (Pillow image, lowercased format name).

    Only the parsers in ``_IDENTIFY`` (plus ``extra`` Pillow format names) look at the bytes.
    """
    if not data:
        raise ImageError("The image file is empty. Upload a PNG, JPEG or WebP file.")
    try:
        formats = _IDENTIFY + tuple(f for f in extra if f in Image.OPEN and f not in _IDENTIFY)
        im = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as e:  # only if someone re-enabled Pillow's guard
        raise ImageError(f"The image has too many pixels ({e}).", "image_too_large") from e
    except Exception as e:  # noqa: BLE001 - any parser failure on client bytes is the client's
        kind = _sniff(data)
        if kind:
            raise ImageError(
                f"{kind.upper()} images are not supported. Convert the image to PNG, JPEG or WebP.",
                "unsupported_file_mimetype",
            ) from e
        raise ImageError(
            "The image could not be read: it is not a valid PNG, JPEG or WebP file "
            "(or it is corrupt). Upload a valid image file."
        ) from e
    fmt = (im.format or "unknown").lower()
    return im, _FORMAT_ALIASES.get(fmt, fmt)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 from the header only (never triggers a pixel load), 1 if absent/bad."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(0x0112, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF: show the image as stored
        return 1
    return value if value in _ORIENT else 1


def _info(im: Image.Image, fmt: str) -> ImageInfo:
    w, h = im.size
    if _orientation(im) in (5, 6, 7, 8):
        w, h = h, w
    frames = int(getattr(im, "n_frames", 1)) if fmt in ("png", "jpeg", "webp") else 1
    return ImageInfo(format=fmt, width=w, height=h, mode=im.mode, frames=frames)


def probe(data: bytes) -> ImageInfo:
    """Header-only look at an upload (no pixel decode). Sizes are as a viewer shows them (EXIF).

    For formats other than png/jpeg/webp ``frames`` is 1 (counting GIF frames means decoding them).
    Raises ImageError(invalid_image_file) for empty/garbage bytes.
    """
    im, fmt = _open(data)
    with im:
        return _info(im, fmt)


def _to_rgba(im: Image.Image) -> np.ndarray:
    """Loaded Pillow image of any mode -> uint8 HxWx4 RGBA (16-bit scaled, not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        scale = 1.0 if im.mode == "F" else 257.0  # 16-bit PNG range 0..65535 -> 0..255
        gray = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
        alpha = np.full_like(gray, 255)
        t = im.info.get("transparency")
        if isinstance(t, int):  # tRNS on a 16-bit grayscale PNG
            alpha[a == t] = 0
        return np.ascontiguousarray(np.dstack([gray, gray, gray, alpha]))
    if im.mode not in ("RGBA", "RGB", "L", "LA", "P", "PA", "1", "RGBa", "La", "RGBX"):
        im = im.convert("RGB")  # CMYK (Adobe-inverted handled by Pillow), YCbCr, LAB, HSV
    return np.array(im.convert("RGBA"), dtype=np.uint8)


def decode(
    data: bytes, *, max_pixels: int, allowed_formats: tuple[str, ...] = ("png", "jpeg", "webp")
) -> tuple[np.ndarray, bool]:
    """Upload bytes -> (uint8 HxWx4 RGBA as a viewer shows it, has_transparency = any alpha < 255).

    Order of checks: readable header (invalid_image_file) -> format detected from the bytes is in
    ``allowed_formats`` (unsupported_file_mimetype) -> width*height <= ``max_pixels`` from the header,
    before decoding (image_too_large) -> decode (truncated/corrupt: invalid_image_file). EXIF
    orientation is applied; animated images give their first frame; every mode becomes RGBA.
    """
    allowed = tuple(_FORMAT_ALIASES.get(f.lower(), f.lower()) for f in allowed_formats)
    im, fmt = _open(data, tuple(f.upper() for f in allowed))
    with im:
        if fmt not in allowed:
            raise ImageError(
                f"Unsupported image format {fmt!r}. Upload one of: {', '.join(allowed)}.",
                "unsupported_file_mimetype",
            )
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageError("The image has no pixels. Upload a valid image file.")
        if w * h > max_pixels:
            raise ImageError(
                f"The image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} "
                "pixels. Downscale it and retry.",
                "image_too_large",
            )
        orientation = _orientation(im)  # read before load() so probe() and decode() agree
        try:
            im.seek(0)
            im.load()
            rgba = _to_rgba(im)
        except Exception as e:  # noqa: BLE001 - truncated/corrupt pixel data
            raise ImageError(
                f"The {fmt} image is truncated or corrupt and could not be decoded. "
                "Re-export it and upload again."
            ) from e
    if orientation != 1:
        rgba = np.array(Image.fromarray(rgba, "RGBA").transpose(_ORIENT[orientation]))
    return rgba, bool((rgba[..., 3] < 255).any())


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
