"""Upload bytes -> pixels: sniff and open, EXIF orientation, :func:`probe`, :func:`decode`.

:func:`decode` returns uint8 HxWx4 RGBA as a viewer shows the image (EXIF applied).

Hostile uploads: the format is identified from the bytes by a short list of Pillow parsers; the
container is walked (lengths, checksums, JPEG scan count; see :mod:`.structure`) and the pixel
count checked from the header, then a PNG's data is inflated in bounded chunks and counted, all
before any pixel buffer exists (see :func:`decode`); truncated data is an error, and any exception
a parser raises on garbage becomes ``ImageError(code="invalid_image_file")``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from .errors import ImageError
from .structure import _check_png_data, _magic_format, _PngLayout, _walk

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


def _open(data: bytes, extra: tuple[str, ...] = ()) -> tuple[Image.Image, str, _PngLayout | None]:
    """Walk the container, then lazy-open ``data`` (header only) -> (Pillow image, lowercased
    format name, the PNG layout for :func:`_check_png_data` or None).

    PNG, JPEG and WebP (known by their magic bytes) are walked before Pillow parses them: its
    header parsers loop in Python per chunk or per byte, so a file of empty chunks or fill bytes
    costs Pillow seconds and the walk milliseconds. BMP and TIFF are walked from Pillow's parsed
    header. Only the parsers in ``_IDENTIFY`` (plus ``extra`` Pillow format names) see the bytes.
    """
    if not data:
        raise ImageError("The image file is empty. Upload a PNG, JPEG or WebP file.")
    magic = _magic_format(data)
    layout = _walk(data, magic, None) if magic else None
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
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt != magic:  # bmp, tiff (others: nothing to walk)
        try:
            layout = _walk(data, fmt, im)
        except ImageError:
            im.close()
            raise
    return im, fmt, layout


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


def _check_pixel_count(im: Image.Image, max_pixels: int) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("The image has no pixels. Upload a valid image file.")
    if w * h > max_pixels:
        raise ImageError(
            f"The image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} "
            "pixels. Downscale it and retry.",
            "image_too_large",
        )


def probe(data: bytes, *, max_pixels: int | None = None) -> ImageInfo:
    """Look at an upload without decoding its pixels. Sizes are as a viewer shows them (EXIF).

    Always runs the container walk (truncated or corrupt structure: invalid_image_file): chunk
    and segment lengths, PNG CRCs and IEND, JPEG markers, scan count and EOI, WebP RIFF sizes,
    BMP rows and TIFF strips within the file. Cost O(file bytes), no decompression. With ``max_pixels`` (the limit :func:`decode` gets) it
    also refuses more pixels than that (image_too_large) and then inflates a PNG's data in bounded
    chunks to check its size: every check :func:`decode` makes before it allocates pixels, so a
    mask can be compared with the image, and refused, before either is decoded.
    For formats other than png/jpeg/webp ``frames`` is 1 (counting GIF frames means decoding them).
    """
    im, fmt, layout = _open(data)
    with im:
        if max_pixels is not None:
            _check_pixel_count(im, max_pixels)
            if layout is not None:
                _check_png_data(data, layout)
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

    Order of checks, each before any pixel buffer exists until the last:
    1. container walk, O(file bytes), no decompression (truncated/corrupt: invalid_image_file),
       for PNG, JPEG and WebP (known by their magic bytes) before any parser reads the header:
       PNG chunk lengths, CRCs, IHDR first, IDAT present, IEND present; JPEG segment lengths, frame
       header, at most ``MAX_JPEG_SCANS`` scans, EOI present; WebP RIFF and chunk sizes;
    2. readable header (invalid_image_file), then for BMP and TIFF: uncompressed rows and strips
       lie within the file (GIF and the rest: Pillow's decoder finds truncation);
    3. the format detected from the bytes is in ``allowed_formats`` (unsupported_file_mimetype);
    4. width*height <= ``max_pixels`` from the header (image_too_large);
    5. PNG: the IDAT stream inflates, in bounded chunks, to exactly the size the header implies
       (short = truncated, long or broken = corrupt: invalid_image_file);
    6. decode (anything the decoder still rejects: invalid_image_file).
    EXIF orientation is applied; animated images give their first frame; every mode becomes RGBA.
    """
    allowed = tuple(_FORMAT_ALIASES.get(f.lower(), f.lower()) for f in allowed_formats)
    im, fmt, layout = _open(data, tuple(f.upper() for f in allowed))
    with im:
        if fmt not in allowed:
            raise ImageError(
                f"Unsupported image format {fmt!r}. Upload one of: {', '.join(allowed)}.",
                "unsupported_file_mimetype",
            )
        _check_pixel_count(im, max_pixels)
        if layout is not None:
            _check_png_data(data, layout)
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
