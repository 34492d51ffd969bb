"""Tests for server/imaging/. Every fixture is generated in code; nothing is read from disk."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from server.imaging import (
    ImageError,
    apply_background,
    composite,
    decode,
    edit_mask_from_image_alpha,
    edit_mask_from_mask_image,
    encode,
    plan_work_region,
    probe,
    resize_image,
    resize_mask,
)

from ..helpers import png_chunk

BIG = 10_000_000


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _smooth_rgb(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 HxWx3: blurred noise stretched to the full range (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    blur = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), 3)
    return cv2.normalize(blur, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _err(data: bytes, code: str, **kw) -> ImageError:
    with pytest.raises(ImageError) as ei:
        decode(data, max_pixels=kw.pop("max_pixels", BIG), **kw)
    assert ei.value.code == code, str(ei.value)
    assert isinstance(ei.value, ValueError)
    return ei.value


# --- decode: formats and round trips -------------------------------------------------------------


def test_png_round_trip_exact_rgb_and_rgba():
    rgb = _smooth_rgb()
    out, transp = decode(_bytes(Image.fromarray(rgb), "PNG"), max_pixels=BIG)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 4) and not transp
    np.testing.assert_array_equal(out[..., :3], rgb)
    assert (out[..., 3] == 255).all()
    rgba = np.dstack([rgb, np.full((48, 64), 255, np.uint8)])
    rgba[5:9, 5:9, 3] = 0
    out, transp = decode(_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=BIG)
    assert transp
    np.testing.assert_array_equal(out, rgba)


def test_jpeg_and_webp_round_trip_close():
    rgb = _smooth_rgb()
    for fmt, kw in (("JPEG", {"quality": 95}), ("WEBP", {"quality": 95})):
        data = _bytes(Image.fromarray(rgb), fmt, **kw)
        assert probe(data).format == fmt.lower()
        out, transp = decode(data, max_pixels=BIG)
        assert out.shape == (48, 64, 4) and not transp
        assert np.abs(out[..., :3].astype(int) - rgb).mean() < 4, fmt
    data = _bytes(
        Image.fromarray(np.dstack([rgb, np.full((48, 64), 7, np.uint8)]), "RGBA"),
        "WEBP",
        lossless=True,
    )
    out, transp = decode(data, max_pixels=BIG)
    assert transp and (out[..., 3] == 7).all()


def test_format_from_bytes_not_content_type_and_allowed_list():
    data = _bytes(Image.fromarray(_smooth_rgb()), "PNG")
    e = _err(data, "unsupported_file_mimetype", allowed_formats=("jpeg", "webp"))
    assert "jpeg" in str(e) and "webp" in str(e)
    # MPO (multi-picture JPEG from phone cameras) counts as jpeg
    im = Image.fromarray(_smooth_rgb())
    mpo = _bytes(im, "MPO", save_all=True, append_images=[im])
    assert probe(mpo).format == "jpeg"
    assert decode(mpo, max_pixels=BIG, allowed_formats=("jpeg",))[0].shape == (48, 64, 4)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_unsupported(fmt):
    data = _bytes(Image.fromarray(_smooth_rgb()), fmt)
    e = _err(data, "unsupported_file_mimetype")
    assert fmt.lower() in str(e) and "png" in str(e)
    assert probe(data).format == fmt.lower()


def test_extra_formats_when_allowed():
    rgb = _smooth_rgb(8, 8)
    for fmt in ("BMP", "TGA"):
        out, _ = decode(
            _bytes(Image.fromarray(rgb), fmt), max_pixels=BIG, allowed_formats=("png", fmt.lower())
        )
        np.testing.assert_array_equal(out[..., :3], rgb)


def test_heic_and_pdf_by_magic_are_unsupported():
    _err(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "unsupported_file_mimetype")
    _err(b"%PDF-1.7\n" + b"x" * 64, "unsupported_file_mimetype")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", np.random.default_rng(1).bytes(4096), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
)
def test_garbage_is_invalid(data):
    _err(data, "invalid_image_file")
    with pytest.raises(ImageError) as ei:
        probe(data)
    assert ei.value.code == "invalid_image_file"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_is_invalid(fmt):
    rng = np.random.default_rng(2)
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: data spans the file
    data = _bytes(Image.fromarray(noisy), fmt)
    # cuts that lose pixel data (a PNG missing only its zlib checksum/IEND trailer still has every
    # pixel and decodes, as in browsers)
    for cut in (12, len(data) // 2, len(data) - 64):
        _err(data[:cut], "invalid_image_file")


def test_png_header_bomb_rejected_fast_without_decoding():
    ihdr = struct.pack(">IIBBBBB", 65535, 65535, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )
    info = probe(data)
    assert (info.width, info.height, info.format) == (65535, 65535, "png")
    t = time.perf_counter()
    e = _err(data, "image_too_large", max_pixels=16_777_216)
    assert time.perf_counter() - t < 0.5
    assert "16777216" in str(e)


def test_jpeg_header_bomb_rejected_fast():
    data = bytearray(_bytes(Image.fromarray(_smooth_rgb(8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    t = time.perf_counter()
    _err(bytes(data), "image_too_large", max_pixels=16_777_216)
    assert time.perf_counter() - t < 0.5


def test_pixel_limit_boundary():
    data = _bytes(Image.fromarray(_smooth_rgb(10, 10)), "PNG")
    assert decode(data, max_pixels=100)[0].shape == (10, 10, 4)
    _err(data, "image_too_large", max_pixels=99)


def test_pillow_bomb_guard_reenabled_still_maps_to_image_too_large(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow errors above 2x this
    _err(_bytes(Image.fromarray(_smooth_rgb(20, 20)), "PNG"), "image_too_large")


# --- EXIF orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation, corner", [(6, (0, -1)), (8, (-1, 0)), (3, (-1, -1))])
def test_exif_orientation_applied(orientation, corner):
    stored = np.zeros((40, 80, 3), np.uint8)  # stored 80 wide x 40 high
    stored[:10, :10] = (255, 0, 0)  # red marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out, _ = decode(data, max_pixels=BIG)
    info = probe(data)
    swapped = orientation in (6, 8)
    assert out.shape[:2] == ((80, 40) if swapped else (40, 80))
    assert (info.height, info.width) == out.shape[:2]
    # where a viewer shows the marker: 6 -> top-right, 8 -> bottom-left, 3 -> bottom-right
    r, c = corner
    assert out[r, c, 0] > 200 and out[r, c, 1] < 60, out[r, c]
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(out[..., :3], viewer)


def test_broken_exif_is_ignored():
    data = _bytes(Image.fromarray(_smooth_rgb()), "JPEG", exif=b"Exif\x00\x00garbage!")
    assert decode(data, max_pixels=BIG)[0].shape == (48, 64, 4)


# --- modes ----------------------------------------------------------------------------------------


def test_16bit_png_gray_and_rgb():
    gray16 = (np.arange(64 * 64, dtype=np.uint32) * 16).astype(np.uint16).reshape(64, 64)
    ok, buf = cv2.imencode(".png", gray16)
    out, transp = decode(buf.tobytes(), max_pixels=BIG)
    assert not transp
    expect = np.rint(gray16 / 257.0)
    assert np.abs(out[..., 0].astype(int) - expect).max() <= 0 and out.max() > 250
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    rgb16 = (np.random.default_rng(3).integers(0, 65536, (16, 16, 3))).astype(np.uint16)
    ok, buf = cv2.imencode(".png", rgb16)  # BGR order on disk
    out, _ = decode(buf.tobytes(), max_pixels=BIG)
    assert np.abs(out[..., :3].astype(int) - rgb16[..., ::-1] / 257.0).max() <= 1


def test_palette_png_with_trns():
    idx = np.zeros((16, 16), np.uint8)
    idx[:, 8:] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    out, transp = decode(_bytes(im, "PNG", transparency=0), max_pixels=BIG)
    assert transp
    assert (out[:, :8, 3] == 0).all() and (out[:, 8:, 3] == 255).all()
    assert (out[:, 8:, :3] == (10, 200, 30)).all()


def test_gray_la_1bit_and_gray_trns():
    g = _smooth_rgb()[..., 0]
    out, transp = decode(_bytes(Image.fromarray(g, "L"), "PNG"), max_pixels=BIG)
    assert not transp and (out[..., 0] == g).all() and (out[..., 1] == g).all()
    la = Image.merge("LA", [Image.fromarray(g), Image.fromarray(np.full_like(g, 99))])
    out, transp = decode(_bytes(la, "PNG"), max_pixels=BIG)
    assert transp and (out[..., 2] == g).all() and (out[..., 3] == 99).all()
    bits = Image.fromarray(g > 128).convert("1")
    out, _ = decode(_bytes(bits, "PNG"), max_pixels=BIG)
    assert set(np.unique(out[..., 0])) <= {0, 255} and (out[..., 0] == 255).sum() == (g > 128).sum()
    flat = np.full((8, 8), 50, np.uint8)
    flat[0, 0] = 7
    out, transp = decode(_bytes(Image.fromarray(flat, "L"), "PNG", transparency=7), max_pixels=BIG)
    assert transp and out[0, 0, 3] == 0 and (out[1:, :, 3] == 255).all()


def test_cmyk_jpeg():
    rgb = _smooth_rgb()
    cmyk = Image.fromarray(rgb).convert("CMYK")
    data = _bytes(cmyk, "JPEG", quality=95)
    assert probe(data).mode == "CMYK"
    out, _ = decode(data, max_pixels=BIG)
    assert np.abs(out[..., :3].astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_gives_first_frame(fmt):
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = _bytes(red, fmt, save_all=True, append_images=[blue], duration=100, **kw)
    assert probe(data).frames == 2
    out, _ = decode(data, max_pixels=BIG)
    assert (out[..., 0] > 250).all() and (out[..., 2] < 5).all()


# --- masks ----------------------------------------------------------------------------------------


def test_mask_alpha_rule_and_threshold():
    m = np.full((8, 8, 4), 255, np.uint8)
    m[:4, :, 3] = 0  # fully transparent: edit
    m[4, :, 3] = 127  # antialiased, more transparent than not: edit
    m[5, :, 3] = 128  # more opaque: keep
    got = edit_mask_from_mask_image(m, True)
    assert got.dtype == np.float32 and got.shape == (8, 8)
    assert (got[:5] == 1).all() and (got[5:] == 0).all()


def test_mask_black_white_rgb_and_opaque_rgba_use_luminance():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :3] = 255
    rgb[:, 3] = 128  # luminance 128 > 127: edit
    rgb[:, 4] = 127  # not edit
    img = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    data = _bytes(Image.fromarray(rgb), "PNG")
    rgba, transp = decode(data, max_pixels=BIG)
    for got in (edit_mask_from_mask_image(rgba, transp), edit_mask_from_mask_image(img, False)):
        assert (got[:, :4] == 1).all() and (got[:, 4:] == 0).all()
    faint = img.copy()
    faint[..., 3] = 250  # transparency, but none below 128: alpha carries no region -> luminance
    assert (edit_mask_from_mask_image(faint, True) == got).all()


def test_no_mask_rule_from_image_alpha():
    img = np.full((8, 8, 4), 200, np.uint8)
    img[..., 3] = 255
    assert edit_mask_from_image_alpha(img) is None
    assert edit_mask_from_image_alpha(img[..., :3]) is None
    img[2:4, 2:4, 3] = 0
    got = edit_mask_from_image_alpha(img)
    assert got is not None and got.dtype == np.float32 and got.sum() == 4 and got[2, 2] == 1


# --- resize ---------------------------------------------------------------------------------------


def test_resize_image_and_mask():
    img = _smooth_rgb(64, 64)
    assert resize_image(img, 32, 16).shape == (16, 32, 3)
    assert resize_image(img, 100, 80).dtype == np.uint8
    rgba = np.dstack([img, img[..., 0]])
    assert resize_image(rgba, 30, 30).shape == (30, 30, 4)
    mask = np.zeros((64, 64), np.float32)
    mask[10, 10] = 1  # a single pixel survives shrinking 8x
    small = resize_mask(mask, 8, 8)
    assert small.dtype == np.float32 and set(np.unique(small)) == {0.0, 1.0} and small[1, 1] == 1
    mask[:, 32:] = 1
    big = resize_mask(mask, 128, 128)
    assert set(np.unique(big)) == {0.0, 1.0} and big.shape == (128, 128)
    assert abs(big[:, 64:].mean() - 1) < 1e-6 and big[:, :60].sum() <= 8


# --- plan_work_region -----------------------------------------------------------------------------


def _check_region(r, w, h, max_side, multiple=8):
    x0, y0, x1, y1 = r.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert r.work_width % multiple == 0 and r.work_height % multiple == 0
    assert max(r.work_width, r.work_height) <= max_side and min(r.work_width, r.work_height) >= 8


def test_plan_small_image_is_whole():
    r = plan_work_region(np.ones((500, 701), np.float32), native_side=512, max_work_side=1024)
    assert r.box == (0, 0, 701, 500) and (r.work_width, r.work_height) == (704, 504)
    r = plan_work_region(np.ones((3, 1024), np.float32), native_side=512, max_work_side=1024)
    assert (r.work_width, r.work_height) == (1024, 8)


def test_plan_large_image_small_mask():
    mask = np.zeros((4096, 4096), np.float32)
    mask[2000:2100, 1500:1600] = 1
    r = plan_work_region(mask, native_side=512, max_work_side=1024)
    _check_region(r, 4096, 4096, 1024)
    x0, y0, x1, y1 = r.box
    assert x0 <= 1500 - 32 and y0 <= 2000 - 32 and x1 >= 1600 + 32 and y1 >= 2100 + 32
    assert (x1 - x0, y1 - y0) == (512, 512) and (r.work_width, r.work_height) == (512, 512)


def test_plan_corner_mask_stays_inside():
    mask = np.zeros((3000, 4000), np.float32)
    mask[-5:, -7:] = 1
    r = plan_work_region(mask, native_side=512, max_work_side=1024)
    _check_region(r, 4000, 3000, 1024)
    assert r.box[2] == 4000 and r.box[3] == 3000 and r.box[2] - r.box[0] == 512


def test_plan_big_mask_scales_down_and_wide_images():
    mask = np.zeros((2000, 6000), np.float32)
    mask[100:1900, 200:5800] = 1
    r = plan_work_region(mask, native_side=512, max_work_side=1024)
    _check_region(r, 6000, 2000, 1024)
    bw, bh = r.box[2] - r.box[0], r.box[3] - r.box[1]
    assert r.work_width == 1024 and abs(r.work_width / r.work_height - bw / bh) < 0.05
    thin = np.zeros((600, 8000), np.float32)
    thin[300, 10:20] = 1
    r = plan_work_region(thin, native_side=512, max_work_side=1024)
    _check_region(r, 8000, 600, 1024)
    assert r.box[3] - r.box[1] == 512 and r.box[1] <= 300 - 32 and r.box[3] >= 300 + 33
    for h, w in ((1037, 3001), (3001, 1037), (999, 1500)):
        m = np.zeros((h, w), np.float32)
        m[h // 3 : h // 2, w // 4 : w // 2] = 1
        _check_region(plan_work_region(m, native_side=512, max_work_side=1000), w, h, 1000)
    # empty mask: whole image, scaled
    r = plan_work_region(np.zeros((2048, 1024), np.float32), native_side=512, max_work_side=1024)
    assert r.box == (0, 0, 1024, 2048) and (r.work_width, r.work_height) == (512, 1024)


# --- composite ------------------------------------------------------------------------------------


def test_composite_exact_outside_generated_inside_blend_at_seam():
    rng = np.random.default_rng(4)
    orig = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    gen = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    out = composite(orig, gen, mask, feather_px=3)
    keep = mask == 0
    np.testing.assert_array_equal(out[keep], orig[keep])
    np.testing.assert_array_equal(out[20:44, 20:44], gen[20:44, 20:44])
    a, b = np.full((64, 64, 3), 0, np.uint8), np.full((64, 64, 3), 200, np.uint8)
    seam = composite(a, b, mask, feather_px=3)[32, 14:22, 0]
    assert list(seam[:2]) == [0, 0] and all(0 < v < 200 for v in seam[2:5]) and seam[5] == 200
    assert np.all(np.diff(seam.astype(int)) >= 0)
    full = composite(orig, gen, np.ones((64, 64), np.float32))  # image borders are not seams
    np.testing.assert_array_equal(full, gen)
    hard = composite(orig, gen, mask, feather_px=0)
    np.testing.assert_array_equal(hard[16:48, 16:48], gen[16:48, 16:48])


# --- encode ---------------------------------------------------------------------------------------


def test_encode_png_lossless_and_rgba():
    rgb = _smooth_rgb()
    np.testing.assert_array_equal(decode(encode(rgb, "png"), max_pixels=BIG)[0][..., :3], rgb)
    rgba = np.dstack([rgb, np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)])
    out, transp = decode(encode(rgba, "png"), max_pixels=BIG)
    assert transp
    np.testing.assert_array_equal(out, rgba)
    out, transp = decode(encode(rgba, "webp", compression=90), max_pixels=BIG)
    assert transp and np.abs(out[..., 3].astype(int) - rgba[..., 3]).mean() < 3
    out, transp = decode(encode(rgba, "jpeg"), max_pixels=BIG)
    assert not transp and probe(encode(rgba, "jpeg")).format == "jpeg"


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_encode_quality_ordering_and_colors(fmt):
    rgb = _smooth_rgb(64, 64)
    sizes = [len(encode(rgb, fmt, compression=q)) for q in (0, 30, 70, 100)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    out = decode(encode(rgb, fmt, compression=100), max_pixels=BIG)[0][..., :3]
    assert np.abs(out.astype(int) - rgb).mean() < 3  # RGB order kept (no BGR swap)
    with pytest.raises(ValueError):
        encode(rgb, "gif")


# --- background -----------------------------------------------------------------------------------


def test_apply_background_modes():
    rgb = _smooth_rgb(8, 8)
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:, :4] = 0
    edit = np.zeros((8, 8), np.float32)
    edit[:2] = 1
    out = apply_background(rgb, alpha, edit, "transparent", "png")
    assert out.shape == (8, 8, 4) and (out[..., :3] == rgb).all()
    assert (
        (out[:2, :, 3] == 255).all()
        and (out[2:, :4, 3] == 0).all()
        and (out[2:, 4:, 3] == 255).all()
    )
    assert apply_background(rgb, None, edit, "transparent", "webp")[..., 3].min() == 255
    assert apply_background(rgb, alpha, edit, "opaque", "png").shape == (8, 8, 3)
    assert apply_background(rgb, alpha, edit, "auto", "webp").shape == (8, 8, 4)
    assert apply_background(rgb, alpha, edit, "auto", "jpeg").shape == (8, 8, 3)
    assert apply_background(rgb, None, edit, "auto", "png").shape == (8, 8, 3)
    assert apply_background(rgb, np.full((8, 8), 255, np.uint8), edit, "auto", "png").shape == (
        8,
        8,
        3,
    )
    with pytest.raises(ValueError):
        apply_background(rgb, alpha, edit, "transparent", "jpeg")
    with pytest.raises(ValueError):
        apply_background(rgb, alpha, edit, "sparkly", "png")
