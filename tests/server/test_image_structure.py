"""Structure checks of server/imaging/: truncated or corrupt uploads are refused (400
invalid_image_file) from the container alone, before a full-size pixel buffer exists.

Every file is generated in code: PNGs are written by hand here (so that any bit depth, colour type
and Adam7 interlacing can be produced), hostile JPEG/PNG builders come from the fuzz corpus.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from server.imaging import MAX_CONTAINER_ITEMS, MAX_JPEG_SCANS, ImageError, decode, probe

from ..fuzz.corpus import jpeg_with_dims, jpeg_with_scans, png_header, png_without
from ..helpers import png_chunk

BIG = 10_000_000
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
VALID_DEPTHS = [
    (color, depth)
    for color, depths in {
        0: (1, 2, 4, 8, 16),
        2: (8, 16),
        3: (1, 2, 4, 8),
        4: (8, 16),
        6: (8, 16),
    }.items()
    for depth in depths
]


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 HxWx3 noise: incompressible, so the compressed data spans the whole file."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pack(row: np.ndarray, depth: int) -> bytes:
    """1-D samples (each < 2**depth) -> one PNG scanline's bytes (big-endian, MSB-first packing)."""
    if depth == 16:
        return row.astype(">u2").tobytes()
    if depth == 8:
        return row.astype(np.uint8).tobytes()
    per = 8 // depth
    padded = np.concatenate([row, np.zeros(-len(row) % per, row.dtype)]).reshape(-1, per)
    shifts = depth * np.arange(per - 1, -1, -1)
    return (padded.astype(np.uint32) << shifts).sum(axis=1).astype(np.uint8).tobytes()


def _raw_rows(samples: np.ndarray, depth: int, interlace: int) -> bytes:
    """HxWxC samples -> the uncompressed IDAT stream: filter byte 0 + packed row, per Adam7 pass
    when interlaced (an empty pass contributes nothing, not even filter bytes)."""
    out = bytearray()
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = samples[y0::dy, x0::dx]
        if sub.size:
            for row in sub:
                out += b"\0" + _pack(row.reshape(-1), depth)
    return bytes(out)


def _png(samples, color, depth, interlace=0, raw=None, palette=None) -> bytes:
    """A PNG written by hand from HxWxC samples (C = channels of ``color``)."""
    h, w = samples.shape[:2]
    raw = _raw_rows(samples, depth, interlace) if raw is None else raw
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace)
    plte = png_chunk(b"PLTE", palette) if palette is not None else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + plte
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def _samples(h: int, w: int, color: int, depth: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**depth, (h, w, CHANNELS[color]), dtype=np.uint32)


def _refused(data: bytes, *words: str, max_pixels: int = BIG, **kw) -> str:
    """decode() and probe(max_pixels=...) both refuse ``data`` with invalid_image_file; returns
    the message, which must contain every one of ``words``."""
    messages = []
    for call in (
        lambda: decode(data, max_pixels=max_pixels, **kw),
        lambda: probe(data, max_pixels=max_pixels),
    ):
        with pytest.raises(ImageError) as ei:
            call()
        assert ei.value.code == "invalid_image_file", str(ei.value)
        messages.append(str(ei.value))
    for word in words:
        assert word in messages[0], messages[0]
    return messages[0]


# --- PNG ------------------------------------------------------------------------------------------


def test_truncated_png_with_huge_header_refused_before_allocating():
    """Finding 1: a 4096x4096 header with 16 rows of data was decoded (zero-filled) at the cost of
    a full-size buffer. Now: refused, and our streaming inflate never holds more than ~1 MB."""
    w = h = 4096
    data = png_header(w, h, idat=zlib.compress((b"\0" + bytes(w * 3)) * 16))
    full = w * h * 3  # 48 MiB as RGB
    tracemalloc.start()
    try:
        msg = _refused(data, "truncated", "4096x4096", max_pixels=w * h)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full // 40, (peak, msg)  # < 1.2 MiB: no buffer of the image's size was made
    interlaced = png_header(w, h, idat=zlib.compress(bytes(4096)), interlace=1)
    _refused(interlaced, "truncated", max_pixels=w * h)
    assert probe(data).width == 4096  # without max_pixels: container walk only, which is fine


def test_png_inflating_to_more_than_the_header_is_corrupt():
    s = _samples(16, 16, 2, 8)
    _refused(_png(s, 2, 8, raw=_raw_rows(s, 8, 0) + b"\0" * 49), "corrupt", "larger")
    _refused(_png(s, 2, 8, raw=_raw_rows(s, 8, 0)[:-1]), "truncated", "16x16")


def test_png_broken_deflate_stream_is_corrupt():
    good = _png(_samples(8, 8, 2, 8), 2, 8)
    idat = good.index(b"IDAT")
    length = struct.unpack_from(">I", good, idat - 4)[0]
    payload = bytearray(good[idat + 4 : idat + 4 + length])
    payload[2:10] = b"\xff" * 8  # an invalid deflate block type / lengths
    broken = good[: idat - 4] + png_chunk(b"IDAT", bytes(payload)) + good[idat + 8 + length :]
    _refused(broken, "corrupt")


def test_png_wrong_crc_refused_in_any_chunk():
    good = _png(_samples(8, 8, 2, 8), 2, 8)
    for kind in (b"IDAT", b"IEND", b"IHDR"):
        pos = good.index(kind)
        length = struct.unpack_from(">I", good, pos - 4)[0]
        bad = bytearray(good)
        bad[pos + 4 + length] ^= 0x01  # first CRC byte
        _refused(bytes(bad), "checksum", kind.decode())
    text = png_chunk(b"tEXt", b"Comment\0hello")
    bad = good[:33] + text[:-1] + bytes([text[-1] ^ 1]) + good[33:]
    _refused(bad, "checksum", "tEXt")


def test_png_chunk_structure_rules():
    s = _samples(8, 8, 2, 8)
    good = _png(s, 2, 8)
    _refused(png_without(good, b"IEND"), "truncated", "IEND")
    _refused(png_without(good, b"IDAT"), "IDAT")
    _refused(good[:-5], "truncated")  # cut inside IEND
    # the IDAT payload split in two chunks: fine when consecutive, refused with a chunk between
    split = good.index(b"IDAT") - 4
    payload = good[split + 8 : -16]
    half = len(payload) // 2
    first, second = png_chunk(b"IDAT", payload[:half]), png_chunk(b"IDAT", payload[half:])
    assert decode(good[:split] + first + second + good[-12:], max_pixels=BIG)[0].shape == (8, 8, 4)
    text = png_chunk(b"tEXt", b"a\0b")
    _refused(good[:split] + first + text + second + good[-12:], "consecutive")
    palette = _png(_samples(8, 8, 3, 2), 3, 2, palette=bytes(range(12)))
    assert decode(palette, max_pixels=BIG)[0].shape == (8, 8, 4)
    _refused(png_without(palette, b"PLTE"), "PLTE")
    flood = good[:33] + png_chunk(b"prVt", b"") * MAX_CONTAINER_ITEMS + good[33:]
    _refused(flood, "chunks")


def test_png_bad_ihdr_refused():
    s = _samples(4, 4, 2, 8)
    for color, depth in ((2, 4), (3, 16), (5, 8), (6, 1)):  # not a valid colour type / depth pair
        data = _png(s, 2, 8)
        ihdr = bytearray(data[16:29])
        ihdr[8:10] = bytes([depth, color])
        _refused(data[:8] + png_chunk(b"IHDR", bytes(ihdr)) + data[33:], "header")


@pytest.mark.parametrize("color, depth", VALID_DEPTHS)
def test_every_png_depth_and_colour_type_accepted_plain_and_interlaced(color, depth):
    """The inflated-size rule matches every layout: all 15 colour type / bit depth pairs, odd
    sizes (partial bytes per row; empty Adam7 passes), plain and interlaced decode the same."""
    for h, w in ((1, 1), (2, 3), (7, 9), (5, 17)):
        s = _samples(h, w, color, depth, seed=h * w)
        palette = bytes(np.random.default_rng(1).integers(0, 256, 3 * 2**depth, dtype=np.uint8))
        pal = palette if color == 3 else None
        plain, _ = decode(_png(s, color, depth, 0, palette=pal), max_pixels=BIG)
        adam7, _ = decode(_png(s, color, depth, 1, palette=pal), max_pixels=BIG)
        assert plain.shape == (h, w, 4)
        np.testing.assert_array_equal(adam7, plain)
        if (color, depth) == (2, 8):
            np.testing.assert_array_equal(plain[..., :3], s)
        if (color, depth) == (6, 16):  # 16-bit samples scaled to 8 bits (high byte)
            np.testing.assert_array_equal(plain, (s >> 8).astype(np.uint8))
        # one byte short of the interlaced stream is truncated, one byte more is corrupt
        raw = _raw_rows(s, depth, 1)
        _refused(_png(s, color, depth, 1, raw=raw[:-1], palette=pal), "truncated")
        _refused(_png(s, color, depth, 1, raw=raw + b"\0", palette=pal), "corrupt")


def test_png_leniency_matches_decoders():
    """What browsers and libpng accept stays accepted: bytes after IEND, bytes after the end of
    the deflate stream, a stream missing only its Adler-32 trailer (every pixel present)."""
    s = _samples(8, 8, 2, 8)
    raw = _raw_rows(s, 8, 0)
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    end = png_chunk(b"IEND", b"")
    for idat in (zlib.compress(raw) + b"junk", zlib.compress(raw)[:-4]):
        data = b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", idat) + end
        np.testing.assert_array_equal(decode(data, max_pixels=BIG)[0][..., :3], s)
    data = _png(s, 2, 8) + b"trailing garbage"
    np.testing.assert_array_equal(decode(data, max_pixels=BIG)[0][..., :3], s)


def test_checks_run_in_the_documented_order():
    # container walk before the pixel limit: a broken file is invalid even when too large
    huge = png_header(65535, 65535, idat=zlib.compress(b"\0" * 64))
    _refused(png_without(huge, b"IEND"), "IEND", max_pixels=16_777_216)
    # the walk (by magic bytes) before the format check: a broken PNG is invalid, not unsupported
    with pytest.raises(ImageError) as ei:
        decode(png_without(huge, b"IEND"), max_pixels=BIG, allowed_formats=("jpeg",))
    assert ei.value.code == "invalid_image_file"
    # pixel limit before inflating: a well-formed but short file over the limit is too large
    for call in (
        lambda: decode(huge, max_pixels=16_777_216),
        lambda: probe(huge, max_pixels=16_777_216),
    ):
        with pytest.raises(ImageError) as ei:
            call()
        assert ei.value.code == "image_too_large"


# --- JPEG -----------------------------------------------------------------------------------------


def test_truncated_jpeg_refused_by_probe_and_decode():
    data = _bytes(Image.fromarray(_noise()), "JPEG", quality=90)
    sos = data.index(b"\xff\xda")
    for cut in (len(data) - 1, len(data) - 2, (sos + len(data)) // 2, sos + 20):
        _refused(data[:cut], "truncated", "scan")
    _refused(data[:30], "truncated")  # inside a table segment
    big = jpeg_with_dims(data, 4096, 4096)  # the header promises 16.7 M pixels; a cut scan
    _refused(big[: len(big) // 2], "truncated", max_pixels=4096 * 4096)


def test_jpeg_fill_and_stray_bytes_before_a_marker():
    """A few are accepted (libjpeg skips them); megabytes are refused by the walk before Pillow's
    header parser, which reads them one byte at a time in Python (~1 s per 5 MB)."""
    data = _bytes(Image.fromarray(_noise(16, 16)), "JPEG", quality=90)
    dqt = data.index(b"\xff\xdb")
    want = decode(data, max_pixels=BIG)[0]
    for extra in (b"\xff" * 3, b"\x00" * 2, b"\x00" * 100 + b"\xff" * 100):
        np.testing.assert_array_equal(
            decode(data[:dqt] + extra + data[dqt:], max_pixels=BIG)[0], want
        )
    for extra in (b"\xff" * 5_000_000, b"\x00" * 5_000_000, b"\x00" * 5000):
        _refused(data[:dqt] + extra + data[dqt:], "stray bytes")


def test_progressive_jpeg_scan_count_bound():
    """Finding 2: each scan is a full pass over the coefficients, so a file of hundreds of tiny
    scans costs seconds; real encoders write 10 (RGB), 6 (gray), 18 (CMYK)."""
    img = Image.fromarray(_noise(48, 64))
    for mode, scans in (("RGB", 10), ("L", 6), ("CMYK", 18)):
        data = _bytes(img.convert(mode), "JPEG", progressive=True)
        assert data.count(b"\xff\xda") == scans
        assert decode(data, max_pixels=BIG)[0].shape == (48, 64, 4)
    progressive = _bytes(img, "JPEG", progressive=True)
    at_bound = jpeg_with_scans(progressive, MAX_JPEG_SCANS)
    assert probe(at_bound, max_pixels=BIG).width == 64
    assert decode(at_bound, max_pixels=BIG)[0].shape == (48, 64, 4)
    for scans in (MAX_JPEG_SCANS + 1, 500):
        msg = _refused(jpeg_with_scans(progressive, scans), "scans", str(MAX_JPEG_SCANS))
        assert "baseline" in msg


def test_mpo_second_image_after_eoi_is_not_walked():
    im = Image.fromarray(_noise(16, 16))
    mpo = _bytes(im, "MPO", save_all=True, append_images=[im])
    assert probe(mpo, max_pixels=BIG).format == "jpeg"
    assert decode(mpo, max_pixels=BIG)[0].shape == (16, 16, 4)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_probe_gives_the_oriented_size_with_checks(orientation):
    """Finding 3: the mask can be compared with the image from headers: probe's size is the one a
    viewer shows (orientations 5..8 swap width and height), with every pre-decode check."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(Image.fromarray(_noise(40, 80)), "JPEG", exif=exif.tobytes())
    for info in (probe(data), probe(data, max_pixels=3200)):
        assert (info.width, info.height) == ((40, 80) if orientation >= 5 else (80, 40))
    assert decode(data, max_pixels=BIG)[0].shape[:2] == (info.height, info.width)
    with pytest.raises(ImageError) as ei:
        probe(data, max_pixels=3199)
    assert ei.value.code == "image_too_large"


# --- WebP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"quality": 80}, {"lossless": True}])
def test_truncated_webp_refused(kw):
    data = _bytes(Image.fromarray(_noise()), "WEBP", **kw)
    for cut in (len(data) - 1, len(data) // 2, 20):
        _refused(data[:cut], "truncated")
    # trailing bytes after the RIFF data are ignored (as libwebp does)
    assert decode(data + b"\0" * 7, max_pixels=BIG)[0].shape == (64, 64, 4)


def test_webp_chunk_sizes_checked_against_the_riff():
    data = bytearray(_bytes(Image.fromarray(_noise()), "WEBP", quality=80))
    assert data[12:16] == b"VP8 "
    longer = bytearray(data)
    longer[16:20] = struct.pack("<I", struct.unpack_from("<I", data, 16)[0] + 1000)
    _refused(bytes(longer), "truncated", "VP8")
    # a frame header whose first partition is larger than its chunk (sizes made consistent)
    part = bytearray(data)
    size = struct.unpack_from("<I", data, 16)[0]
    tag = int.from_bytes(data[20:23], "little")
    part[20:23] = ((tag & 0x1F) | ((size + 100) << 5)).to_bytes(3, "little")
    _refused(bytes(part), "VP8")


# --- other formats (masks may be BMP, GIF, TIFF) ----------------------------------------------------


def test_bmp_rows_must_fit_the_file():
    data = bytearray(_bytes(Image.fromarray(_noise(16, 16)), "BMP"))
    allowed = ("bmp",)
    assert decode(bytes(data), max_pixels=BIG, allowed_formats=allowed)[0].shape == (16, 16, 4)
    _refused(bytes(data[:-50]), "truncated", allowed_formats=allowed)
    data[18:26] = struct.pack("<ii", 4096, 4096)  # the header now promises 4096x4096
    msg = _refused(
        bytes(data), "truncated", "4096x4096", max_pixels=4096 * 4096, allowed_formats=allowed
    )
    assert "bytes" in msg


def test_tiff_strips_must_lie_in_the_file_and_gif_is_left_to_pillow():
    tiff = _bytes(Image.fromarray(_noise(16, 16)), "TIFF")
    assert decode(tiff, max_pixels=BIG, allowed_formats=("tiff",))[0].shape == (16, 16, 4)
    _refused(tiff[:-100], "truncated", allowed_formats=("tiff",))
    gif = _bytes(Image.fromarray(_noise(16, 16)).convert("P"), "GIF")
    with pytest.raises(ImageError) as ei:
        decode(gif[: len(gif) // 2], max_pixels=BIG, allowed_formats=("gif",))
    assert ei.value.code == "invalid_image_file"


def _cv2(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _encoder_outputs() -> dict[str, bytes]:
    """Files as real encoders write them (OpenCV's libjpeg-turbo/libpng/libwebp and Pillow's),
    with the options that change the structure the walks read."""
    rgb = _noise(37, 53)
    im = Image.fromarray(rgb)
    bgra = np.dstack([rgb, np.arange(37 * 53, dtype=np.uint32).reshape(37, 53).astype(np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6
    thumb_exif = im.copy()
    thumb_exif.thumbnail((8, 8))
    icc = b"\0" * 70_000  # spans two APP2 segments (64 KiB each)
    return {
        "cv2-jpeg-restart-markers": _cv2(".jpg", rgb, cv2.IMWRITE_JPEG_RST_INTERVAL, 1),
        "cv2-jpeg-progressive": _cv2(".jpg", rgb, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "cv2-jpeg-optimize": _cv2(".jpg", rgb, cv2.IMWRITE_JPEG_OPTIMIZE, 1),
        "cv2-png-level-9": _cv2(".png", bgra, cv2.IMWRITE_PNG_COMPRESSION, 9),
        "cv2-png-level-0": _cv2(".png", rgb, cv2.IMWRITE_PNG_COMPRESSION, 0),
        "cv2-png-16bit-gray": _cv2(".png", rgb[..., 0].astype(np.uint16) * 257),
        "cv2-webp-lossy-alpha": _cv2(".webp", bgra, cv2.IMWRITE_WEBP_QUALITY, 80),
        "cv2-webp-lossless": _cv2(".webp", bgra, cv2.IMWRITE_WEBP_QUALITY, 101),
        "pil-jpeg-optimize-progressive": _bytes(im, "JPEG", optimize=True, progressive=True),
        "pil-jpeg-exif-icc": _bytes(im, "JPEG", exif=exif.tobytes(), icc_profile=icc),
        "pil-jpeg-gray-444": _bytes(im.convert("L"), "JPEG", subsampling=0),
        "pil-png-optimize-text-icc": _bytes(im, "PNG", optimize=True, icc_profile=icc),
        "pil-png-palette-bits-2": _bytes(im.convert("P", colors=4), "PNG", bits=2),
        "pil-apng": _bytes(im, "PNG", save_all=True, append_images=[thumb_exif.resize((53, 37))]),
        "pil-webp-lossy-alpha": _bytes(Image.fromarray(bgra, "RGBA"), "WEBP", quality=70),
        "pil-webp-animated": _bytes(im, "WEBP", save_all=True, append_images=[im.rotate(180)]),
    }


@pytest.mark.parametrize("name", list(_encoder_outputs()))
def test_files_from_real_encoders_are_accepted(name):
    data = _encoder_outputs()[name]
    info = probe(data, max_pixels=BIG)
    out, _ = decode(data, max_pixels=BIG)
    assert out.shape[:2] == (info.height, info.width) and out.dtype == np.uint8
