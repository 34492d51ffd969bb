"""A deterministic corpus of hostile requests for the server (hundreds of cases, all generated).

Each :class:`Case` is one raw HTTP request (method, path, headers, body bytes) plus what the
server may answer: always a status below 500 (no 5xx, no hang); where the right answer is
unambiguous, ``expect`` names the exact statuses. Authorization is added by the runner unless
``auth`` is False (the auth cases bring their own header).

Categories: truncated / bit-flipped PNG, JPEG and WebP; zero-byte and tiny files; 1x1 images and
65535-wide (or 2^24-wide) headers; decompression-bomb headers; wrong content types; non-UTF-8
text fields; duplicated fields; absurd numbers; animated, 16-bit, palette, grayscale, 1-bit, CMYK
images; EXIF-rotated JPEGs (orientations 1..8); broken multipart structure; JSON bodies; hostile
file names on the files route; auth header variants; odd methods.

Images are small (64x48) so that a valid case costs the built-in model milliseconds.
``python -m tests.fuzz.corpus`` prints the count per category.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from ..helpers import png_chunk

EDITS = "/v1/images/edits"
BOUNDARY = "fuzzBoundary7MA4YWxkTrZu0gW"
MP_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
W, H = 64, 48
BOX = (21, 16, 42, 32)
OK = frozenset({200})
BAD = frozenset({400})


@dataclass
class Case:
    name: str
    category: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = EDITS
    auth: bool = True
    #: statuses that are right for this case; None = anything below 500.
    expect: frozenset[int] | None = None


# ------------------------------------------------------------------ pixels and encoders


def scene(w: int = W, h: int = H) -> np.ndarray:
    """uint8 HxWx3: blue with a green gradient and a red box (the thing to remove)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 200
    img[..., 1] = (np.arange(w)[None, :] * 60 // max(1, w - 1)).astype(np.uint8)
    x0, y0, x1, y1 = (w // 3, h // 3, 2 * w // 3, 2 * h // 3)
    img[y0:y1, x0:x1] = (255, 0, 0)
    return img


def alpha_mask(w: int = W, h: int = H) -> np.ndarray:
    """RGBA, opaque except alpha 0 in the middle third (the edit region)."""
    m = np.full((h, w, 4), 255, np.uint8)
    m[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3, 3] = 0
    return m


def enc(arr_or_im, fmt: str, **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header(
    width: int, height: int, depth: int = 8, color: int = 2, idat: bytes = b"", interlace: int = 0
) -> bytes:
    """A PNG whose IHDR declares width x height (``interlace`` 1 = Adam7); ``idat`` (compressed)
    may be tiny or empty."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    body = png_chunk(b"IHDR", ihdr)
    if idat:
        body += png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


def jpeg_with_dims(data: bytes, width: int, height: int) -> bytes:
    """Patch the SOF0/SOF2 frame header of a JPEG to declare other dimensions."""
    out = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = out.find(marker)
        if i >= 0:
            out[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
    raise ValueError("no SOF marker")


def jpeg_with_scans(data: bytes, scans: int) -> bytes:
    """A progressive JPEG (ending in EOI) with its last scan repeated until it has ``scans`` scans.

    The repeated group is everything after the previous scan's data (the tables it needs + SOS +
    data), so every scan is well-formed; libjpeg decodes such a file (refinements repeat).
    """
    count = data.count(b"\xff\xda")  # FF is always followed by 00 or RSTn inside scan data
    prev = data.find(b"\xff\xda")
    for _ in range(count - 2):
        prev = data.find(b"\xff\xda", prev + 2)
    start = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]").search(data, prev + 2).start()
    if count < 2 or scans < count or not data.endswith(b"\xff\xd9"):
        raise ValueError("need a progressive JPEG ending in EOI and scans >= its own scan count")
    return data[:-2] + data[start:-2] * (scans - count) + b"\xff\xd9"


def png_without(data: bytes, kind: bytes) -> bytes:
    """``data`` (a PNG) with every chunk of type ``kind`` removed."""
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] != kind:
            out += data[pos:end]
        pos = end
    return bytes(out)


def webp_vp8x(width: int, height: int) -> bytes:
    """A WebP extended-format header declaring a width x height canvas (no image data)."""
    payload = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    chunk = b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def black_opaque(w: int, h: int) -> np.ndarray:
    """An RGBA mask that is opaque black everywhere: no pixel is edited (an empty region)."""
    m = np.zeros((h, w, 4), np.uint8)
    m[..., 3] = 255
    return m


def exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return enc(arr, "JPEG", quality=90, exif=exif.tobytes())


def animated(fmt: str, frames: int = 3) -> bytes:
    ims = [Image.fromarray(np.roll(scene(), 5 * i, axis=1)) for i in range(frames)]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return enc(ims[0], fmt, save_all=True, append_images=ims[1:], duration=100, loop=0, **kw)


# ------------------------------------------------------------------ multipart


def part(
    name: str | bytes,
    data: bytes,
    filename: str | None = None,
    content_type: str | None = None,
    extra_headers: bytes = b"",
) -> bytes:
    """One raw part (no boundary). ``name`` bytes are written verbatim (hostile names)."""
    nm = name if isinstance(name, bytes) else name.encode()
    head = b'Content-Disposition: form-data; name="' + nm + b'"'
    if filename is not None:
        head += b'; filename="' + filename.encode() + b'"'
    head += b"\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return head + extra_headers + b"\r\n" + data


def file_part(
    name: str, data: bytes, content_type: str = "image/png", filename: str = "f.png"
) -> bytes:
    return part(name, data, filename=filename, content_type=content_type)


def multipart(parts: list[bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    b = boundary.encode()
    out = b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--" + b + b"--\r\n" if close else b"")


class Corpus:
    def __init__(self, seed: int = 1234) -> None:
        self.rng = random.Random(seed)
        self.cases: list[Case] = []
        self.img = scene()
        self.png = enc(self.img, "PNG")
        self.jpeg = enc(self.img, "JPEG", quality=90)
        self.webp = enc(self.img, "WEBP", lossless=True)
        self.webp_lossy = enc(self.img, "WEBP", quality=80)
        self.mask = enc(alpha_mask(), "PNG")

    def add(
        self,
        category: str,
        name: str,
        body: bytes,
        *,
        ctype: str = MP_TYPE,
        expect: frozenset[int] | None = None,
        **kw,
    ) -> None:
        headers = dict(kw.pop("headers", {}))
        if ctype is not None:
            headers.setdefault("Content-Type", ctype)
        self.cases.append(
            Case(
                name=f"{category}/{name}",
                category=category,
                body=body,
                headers=headers,
                expect=expect,
                **kw,
            )
        )

    def edit(
        self,
        image: bytes | None,
        *,
        mask: bytes | None = None,
        image_ct: str = "image/png",
        fields: dict[str, str | bytes] | None = None,
    ) -> bytes:
        """A form with ``image`` (if not None), an optional mask and text fields (default prompt)."""
        parts = []
        if image is not None:
            parts.append(file_part("image", image, image_ct))
        if mask is not None:
            parts.append(file_part("mask", mask))
        flds = {"prompt": "remove the red box"} if fields is None else fields
        for k, v in flds.items():
            parts.append(part(k, v if isinstance(v, bytes) else v.encode()))
        return multipart(parts)

    # -------------------------------------------------------------- categories
    def baseline(self) -> None:
        c = "baseline"
        self.add(c, "png", self.edit(self.png, mask=self.mask), expect=OK)
        self.add(c, "jpeg", self.edit(self.jpeg, mask=self.mask), expect=OK)
        self.add(c, "webp", self.edit(self.webp, mask=self.mask), expect=OK)
        self.add(c, "webp-lossy-no-mask", self.edit(self.webp_lossy), expect=OK)
        self.add(
            c,
            "url",
            self.edit(self.png, mask=self.mask, fields={"prompt": "x", "response_format": "url"}),
            expect=OK,
        )

    def truncated(self) -> None:
        c = "truncated"
        for fmt, data in (("png", self.png), ("jpeg", self.jpeg), ("webp", self.webp)):
            for cut in (
                1,
                4,
                8,
                12,
                16,
                24,
                33,
                64,
                len(data) // 4,
                len(data) // 2,
                3 * len(data) // 4,
                len(data) - 16,
                len(data) - 2,
                len(data) - 1,
            ):
                # every cut loses a PNG's IEND, a JPEG's EOI or part of a WebP's RIFF data
                self.add(c, f"{fmt}-{cut}", self.edit(data[:cut]), expect=BAD)
            # the mask truncated, the image fine
            self.add(c, f"mask-{fmt}", self.edit(self.png, mask=data[: len(data) // 2]), expect=BAD)
        # a well-formed PNG whose header promises 4096x4096 but whose data holds 16 rows:
        # refused before a pixel buffer exists (as image, interlaced, and as mask)
        short = zlib.compress((b"\0" + bytes(4096 * 3)) * 16)
        self.add(
            c, "png-4096-short-data", self.edit(png_header(4096, 4096, idat=short)), expect=BAD
        )
        interlaced = png_header(4096, 4096, idat=short, interlace=1)
        self.add(c, "png-4096-interlaced-short-data", self.edit(interlaced), expect=BAD)
        self.add(
            c,
            "mask-png-4096-short-data",
            self.edit(self.png, mask=png_header(4096, 4096, idat=short)),
            expect=BAD,
        )
        self.add(c, "png-no-iend", self.edit(png_without(self.png, b"IEND")), expect=BAD)
        big_jpeg = jpeg_with_dims(self.jpeg, 4096, 4096)
        self.add(c, "jpeg-4096-header-no-eoi", self.edit(big_jpeg[:-2]), expect=BAD)
        bmp = enc(Image.fromarray(alpha_mask()[..., 3]), "BMP")
        self.add(c, "mask-bmp-short-rows", self.edit(self.png, mask=bmp[:-100]), expect=BAD)

    def corrupt(self, per_format: int = 25) -> None:
        c = "corrupt"
        for fmt, data in (
            ("png", self.png),
            ("jpeg", self.jpeg),
            ("webp", self.webp),
            ("webp-lossy", self.webp_lossy),
        ):
            for i in range(per_format):
                buf = bytearray(data)
                kind = i % 5
                if kind == 0:  # flip random bits
                    for _ in range(1 + i):
                        pos = self.rng.randrange(len(buf))
                        buf[pos] ^= 1 << self.rng.randrange(8)
                elif kind == 1:  # overwrite a run with random bytes
                    pos = self.rng.randrange(len(buf))
                    for j in range(pos, min(len(buf), pos + 16)):
                        buf[j] = self.rng.randrange(256)
                elif kind == 2:  # zero a header region
                    pos = self.rng.randrange(min(64, len(buf)))
                    buf[pos : pos + 8] = b"\x00" * 8
                elif kind == 3:  # duplicate a slice (lengths no longer match)
                    pos = self.rng.randrange(len(buf))
                    buf[pos:pos] = buf[pos : pos + self.rng.randrange(1, 200)]
                else:  # 0xff storm (JPEG markers), 0x00 storm elsewhere
                    pos = self.rng.randrange(len(buf))
                    buf[pos : pos + 32] = b"\xff" * 32
                self.add(c, f"{fmt}-{i}", self.edit(bytes(buf)))
        # random garbage with the right magic bytes
        for magic, tag in (
            (b"\x89PNG\r\n\x1a\n", "png"),
            (b"\xff\xd8\xff\xe0", "jpeg"),
            (b"RIFF\x00\x01\x00\x00WEBPVP8 ", "webp"),
            (b"GIF89a", "gif"),
            (b"BM", "bmp"),
            (b"II*\x00", "tiff"),
            (b"\x00\x00\x00\x18ftypheic", "heic"),
            (b"%PDF-1.4", "pdf"),
            (b"<svg xmlns='http://www.w3.org/2000/svg'>", "svg"),
        ):
            junk = bytes(self.rng.randrange(256) for _ in range(300))
            self.add(c, f"magic-{tag}", self.edit(magic + junk), expect=BAD)
        # PNG structure: a wrong CRC, data inflating to more than the header says, a broken
        # deflate stream, no IDAT, a palette image without PLTE, a flood of empty chunks
        idat = self.png.index(b"IDAT")  # its CRC follows the type and the payload
        idat_crc = idat + 4 + struct.unpack_from(">I", self.png, idat - 4)[0]
        bad_crc = bytearray(self.png)
        bad_crc[idat_crc] ^= 0xFF
        self.add(c, "png-idat-bad-crc", self.edit(bytes(bad_crc)), expect=BAD)
        rows = b"".join(b"\0" + self.img[y].tobytes() for y in range(H))
        self.add(
            c,
            "png-idat-too-much",
            self.edit(png_header(W, H, idat=zlib.compress(rows * 2))),
            expect=BAD,
        )
        self.add(
            c, "png-idat-not-deflate", self.edit(png_header(W, H, idat=rows[:500])), expect=BAD
        )
        self.add(c, "png-no-idat", self.edit(png_without(self.png, b"IDAT")), expect=BAD)
        pal = enc(Image.fromarray(self.img).convert("P"), "PNG")
        self.add(c, "png-palette-no-plte", self.edit(png_without(pal, b"PLTE")), expect=BAD)
        flood = self.png[:33] + png_chunk(b"prVt", b"") * 70_000 + self.png[33:]
        self.add(c, "png-70000-chunks", self.edit(flood), expect=BAD)
        # JPEG: more scans than any encoder writes (each costs a full decoding pass)
        progressive = enc(self.img, "JPEG", progressive=True)
        for scans in (65, 500):
            many = jpeg_with_scans(progressive, scans)
            self.add(c, f"jpeg-{scans}-scans", self.edit(many), expect=BAD)
        dqt = self.jpeg.index(b"\xff\xdb")  # stray bytes: Pillow's header parser reads them 1 by 1
        stray = self.jpeg[:dqt] + b"\0" * 5000 + self.jpeg[dqt:]
        self.add(c, "jpeg-5000-stray-bytes", self.edit(stray), expect=BAD)
        self.add(
            c,
            "mask-jpeg-500-scans",
            self.edit(self.png, mask=jpeg_with_scans(progressive, 500)),
            expect=BAD,
        )
        # WebP: a chunk that claims more bytes than the RIFF holds
        webp = bytearray(self.webp)
        webp[16:20] = struct.pack("<I", struct.unpack_from("<I", webp, 16)[0] + 1000)
        self.add(c, "webp-chunk-past-riff", self.edit(bytes(webp)), expect=BAD)

    def tiny_and_huge(self) -> None:
        c = "dimensions"
        self.add(c, "zero-byte-image", self.edit(b""), expect=BAD)
        self.add(c, "zero-byte-mask", self.edit(self.png, mask=b""), expect=BAD)
        self.add(c, "one-byte", self.edit(b"\x89"), expect=BAD)
        one = np.array([[[10, 20, 30]]], np.uint8)
        self.add(c, "1x1-png", self.edit(enc(one, "PNG")), expect=OK)
        self.add(c, "1x1-jpeg", self.edit(enc(one, "JPEG")), expect=OK)
        self.add(c, "1x1-webp", self.edit(enc(one, "WEBP", lossless=True)), expect=OK)
        self.add(
            c,
            "1x1-transparent-png",
            self.edit(enc(np.zeros((1, 1, 4), np.uint8), "PNG")),
            expect=OK,
        )
        self.add(
            c,
            "1x1-image-1x1-mask-opaque",
            self.edit(enc(one, "PNG"), mask=enc(black_opaque(1, 1), "PNG")),
            expect=BAD,
        )  # empty edit region
        self.add(c, "1xN-strip", self.edit(enc(scene(1, 300), "PNG")), expect=OK)
        self.add(c, "Nx1-strip", self.edit(enc(scene(300, 1), "PNG")), expect=OK)
        for w, h in (
            (65535, 1),
            (1, 65535),
            (65535, 65535),
            (0, 0),
            (0, 10),
            (2**31 - 1, 2**31 - 1),
            (2**32 - 1, 1),
            (100000, 100000),
            (4097, 4096),
            (4096, 4097),
        ):
            # over the pixel limit (or empty): refused from the header; else the data is short
            # (64 bytes for w x h pixels: truncated), refused before decoding
            self.add(
                c,
                f"png-header-{w}x{h}",
                self.edit(png_header(w, h, idat=zlib.compress(b"\0" * 64))),
                expect=BAD,
            )
            self.add(
                c,
                f"mask-png-header-{w}x{h}",
                self.edit(self.png, mask=png_header(w, h, idat=zlib.compress(b"\0" * 64))),
                expect=BAD,
            )
        for w, h in ((65535, 65535), (65535, 1), (1, 65535), (0, 0), (8192, 8192)):
            self.add(c, f"jpeg-sof-{w}x{h}", self.edit(jpeg_with_dims(self.jpeg, w, h)), expect=BAD)
        for w, h in ((16777216, 16777216), (65535, 65535), (16383, 16383), (1, 1)):
            self.add(c, f"webp-vp8x-{w}x{h}", self.edit(webp_vp8x(w, h)), expect=BAD)
        # a real (valid) decompression bomb: 10000x10000 zero pixels compress to ~100 KB
        bomb = png_header(10000, 10000, color=0, idat=zlib.compress(b"\0" * (10001 * 10000), 9))
        self.add(c, "png-bomb-10000x10000", self.edit(bomb), expect=BAD)
        # mask size differs from the image
        self.add(
            c,
            "mask-size-mismatch",
            self.edit(self.png, mask=enc(alpha_mask(48, 64), "PNG")),
            expect=BAD,
        )

    def modes(self) -> None:
        c = "modes"
        img = Image.fromarray(self.img)
        self.add(c, "gif-animated", self.edit(animated("GIF")), expect=BAD)
        self.add(c, "gif-still", self.edit(enc(img.convert("P"), "GIF")), expect=BAD)
        self.add(c, "apng-animated", self.edit(animated("PNG")), expect=OK)
        self.add(c, "webp-animated", self.edit(animated("WEBP")), expect=OK)
        self.add(
            c,
            "png-16bit-gray",
            self.edit(
                enc(Image.fromarray(np.arange(W * H, dtype=np.uint16).reshape(H, W) * 20), "PNG")
            ),
            expect=OK,
        )
        ok, rgb16 = cv2.imencode(".png", (self.img.astype(np.uint16) * 257)[..., ::-1].copy())
        assert ok
        self.add(c, "png-16bit-rgb", self.edit(rgb16.tobytes()), expect=OK)
        rgba16 = np.dstack([self.img, np.full((H, W), 255, np.uint8)]).astype(np.uint16) * 257
        rgba16[BOX[1] : BOX[3], BOX[0] : BOX[2], 3] = 0
        ok, buf = cv2.imencode(".png", rgba16[..., [2, 1, 0, 3]].copy())
        self.add(c, "png-16bit-rgba-transparent", self.edit(buf.tobytes()), expect=OK)
        self.add(c, "png-palette", self.edit(enc(img.convert("P"), "PNG")), expect=OK)
        pal = img.convert("P")
        pal.info["transparency"] = 0
        self.add(c, "png-palette-transparency", self.edit(enc(pal, "PNG", transparency=0)))
        self.add(c, "png-gray", self.edit(enc(img.convert("L"), "PNG")), expect=OK)
        self.add(c, "png-gray-alpha", self.edit(enc(img.convert("LA"), "PNG")), expect=OK)
        self.add(c, "png-1bit", self.edit(enc(img.convert("1"), "PNG")), expect=OK)
        self.add(
            c,
            "png-rgba-all-transparent",
            self.edit(enc(np.zeros((H, W, 4), np.uint8), "PNG")),
            expect=OK,
        )
        self.add(c, "jpeg-gray", self.edit(enc(img.convert("L"), "JPEG")), expect=OK)
        self.add(c, "jpeg-cmyk", self.edit(enc(img.convert("CMYK"), "JPEG")), expect=OK)
        self.add(c, "jpeg-progressive", self.edit(enc(img, "JPEG", progressive=True)), expect=OK)
        self.add(
            c,
            "jpeg-progressive-64-scans",
            self.edit(jpeg_with_scans(enc(img, "JPEG", progressive=True), 64)),
            expect=OK,
        )
        self.add(c, "jpeg-subsampling-444", self.edit(enc(img, "JPEG", subsampling=0)), expect=OK)
        self.add(c, "webp-rgba", self.edit(enc(img.convert("RGBA"), "WEBP")), expect=OK)
        self.add(c, "bmp", self.edit(enc(img, "BMP")), expect=BAD)
        self.add(c, "tiff", self.edit(enc(img, "TIFF")), expect=BAD)
        self.add(c, "ico", self.edit(enc(img, "ICO")), expect=BAD)
        self.add(
            c,
            "mask-gif",
            self.edit(self.png, mask=enc(Image.fromarray(alpha_mask()[..., 3]), "GIF")),
            expect=OK,
        )
        self.add(
            c,
            "mask-bmp",
            self.edit(self.png, mask=enc(Image.fromarray(255 - alpha_mask()[..., 3]), "BMP")),
            expect=OK,
        )
        self.add(
            c,
            "mask-16bit",
            self.edit(
                self.png,
                mask=enc(
                    Image.fromarray((255 - alpha_mask()[..., 3]).astype(np.uint16) * 257), "PNG"
                ),
            ),
            expect=OK,
        )
        self.add(
            c,
            "mask-all-opaque-black",
            self.edit(self.png, mask=enc(black_opaque(W, H), "PNG")),
            expect=BAD,
        )
        self.add(
            c,
            "mask-all-opaque-white",
            self.edit(self.png, mask=enc(np.full((H, W, 4), 255, np.uint8), "PNG")),
            expect=OK,
        )  # no transparency: white = edit, so everything is edited
        self.add(
            c,
            "mask-all-black-no-alpha",
            self.edit(self.png, mask=enc(np.zeros((H, W), np.uint8), "PNG")),
            expect=BAD,
        )
        for o in range(1, 9):  # EXIF orientations: the mask must match the displayed size
            shown = (W, H) if o in (1, 2, 3, 4) else (H, W)
            self.add(
                c,
                f"exif-orientation-{o}-mask-displayed",
                self.edit(exif_jpeg(self.img, o), mask=enc(alpha_mask(*shown), "PNG")),
                expect=OK,
            )
            self.add(
                c, f"exif-orientation-{o}-no-mask", self.edit(exif_jpeg(self.img, o)), expect=OK
            )
        self.add(
            c,
            "exif-rotated-mask-stored-size",
            self.edit(exif_jpeg(self.img, 6), mask=self.mask),
            expect=BAD,
        )
        exif = Image.Exif()
        exif[0x0112] = 99  # out of range: shown as stored
        self.add(
            c,
            "exif-orientation-99",
            self.edit(enc(self.img, "JPEG", exif=exif.tobytes())),
            expect=OK,
        )
        bad_exif = enc(self.img, "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
        self.add(c, "exif-garbage", self.edit(bad_exif), expect=OK)

    def content_types(self) -> None:
        c = "content-type"
        for ct in (
            "text/plain",
            "application/json",
            "image/gif",
            "application/x-msdownload",
            "",
            "image/png; charset=binary",
            "multipart/mixed; boundary=x",
            "../../etc",
        ):
            # a multipart/* part type makes it a nested multipart (refused with a 400)
            self.add(
                c,
                f"part-{ct or 'empty'}",
                self.edit(self.png, image_ct=ct, mask=self.mask),
                expect=BAD if ct.startswith("multipart/") else OK,
            )
        self.add(
            c,
            "png-bytes-named-jpg",
            multipart(
                [file_part("image", self.png, "image/jpeg", "photo.jpg"), part("prompt", b"x")]
            ),
            expect=OK,
        )
        self.add(
            c,
            "filename-traversal",
            multipart(
                [
                    file_part("image", self.png, filename="../../../../etc/passwd"),
                    part("prompt", b"x"),
                ]
            ),
            expect=OK,
        )
        self.add(
            c,
            "filename-nul",
            multipart([file_part("image", self.png, filename="a\x00b.png"), part("prompt", b"x")]),
        )
        valid = self.edit(self.png, mask=self.mask)
        for ct in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/octet-stream",
            "image/png",
            "application/xml",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=WRONG",
            "multipart/form-data; boundary=" + "x" * 5000,
            "multipart/mixed; boundary=" + BOUNDARY,
            "application/json",
            "application/json; charset=latin-1",
            "*/*",
            ";;;",
            "\u00e9/\u00e9",
        ):
            self.add(
                c,
                f"body-{ct[:40]}",
                valid,
                ctype=ct,
                expect=None if ct.startswith("multipart/mixed") else BAD,
            )
        self.add(c, "no-content-type", valid, ctype=None, expect=BAD)
        self.add(
            c,
            "urlencoded-form",
            b"prompt=x&image=abc",
            ctype="application/x-www-form-urlencoded",
            expect=BAD,
        )

    def text_fields(self) -> None:
        c = "text"
        for label, raw in (
            ("latin1", "caf\u00e9".encode("latin-1")),
            ("ff-fe", b"\xff\xfe\x00x"),
            ("overlong", b"\xc0\xaf"),
            ("surrogate", b"\xed\xa0\x80"),
            ("lone-continuation", b"\x80\x80"),
            ("truncated-utf8", b"\xe2\x82"),
        ):
            for fld in ("prompt", "model", "size", "n", "user", "negative_prompt"):
                self.add(
                    c,
                    f"{label}-{fld}",
                    self.edit(self.png, mask=self.mask, fields={"prompt": "x", fld: raw}),
                    expect=BAD,
                )
        weird = {
            "nul": "a\x00b",
            "emoji": "\U0001f600" * 100,
            "rtl": "\u202eevil",
            "crlf": "a\r\nb",
            "only-spaces": "   ",
            "zero-width": "\u200b",
            "combining": "e" + "\u0301" * 1000,
            "prompt-32000": "a" * 32000,
            "prompt-32001": "a" * 32001,
            "prompt-32000-4byte": "\U0001f600" * 32000,
            "html": "<script>alert(1)</script>",
            "format-string": "%s%n%x{0}{__class__}",
            "sql": "'; DROP TABLE x; --",
        }
        for label, value in weird.items():
            exp = BAD if label in ("only-spaces", "prompt-32001") else OK
            self.add(
                c,
                f"prompt-{label}",
                self.edit(self.png, mask=self.mask, fields={"prompt": value}),
                expect=exp,
            )
        self.add(c, "prompt-missing", self.edit(self.png, mask=self.mask, fields={}), expect=BAD)
        self.add(
            c,
            "prompt-empty",
            self.edit(self.png, mask=self.mask, fields={"prompt": ""}),
            expect=BAD,
        )
        for label, value in (
            ("model-traversal", "../../etc/passwd"),
            ("model-long", "m" * 10000),
            ("model-nul", "a\x00"),
            ("model-unicode", "\u00e9\u00e9"),
        ):
            self.add(
                c,
                label,
                self.edit(self.png, fields={"prompt": "x", "model": value}),
                expect=frozenset({404}),
            )
        for fld in ("user", "input_fidelity", "scheduler", "negative_prompt", "unknown_field"):
            self.add(
                c, f"long-{fld}", self.edit(self.png, fields={"prompt": "x", fld: "z" * 100000})
            )

    def duplicates(self) -> None:
        c = "duplicate"
        p = lambda k, v: part(k, v.encode())  # noqa: E731
        img = file_part("image", self.png)
        m = file_part("mask", self.mask)
        forms = {
            "prompt-twice": [img, p("prompt", "a"), p("prompt", "b")],
            "prompt-twice-second-empty": [img, p("prompt", "a"), p("prompt", "")],
            "n-twice": [img, p("prompt", "a"), p("n", "1"), p("n", "2")],
            "n-twice-second-bad": [img, p("prompt", "a"), p("n", "1"), p("n", "9999")],
            "mask-twice": [img, m, m, p("prompt", "a")],
            "mask-twice-second-bad": [img, m, file_part("mask", b"junk"), p("prompt", "a")],
            "model-twice": [
                img,
                p("model", "nope"),
                p("model", "opencv-telea-inpaint"),
                p("prompt", "a"),
            ],
            "image-and-image[]": [img, file_part("image[]", self.jpeg), p("prompt", "a")],
            "image-as-text-field": [p("image", "not a file"), p("prompt", "a")],
            "mask-as-text-field": [img, p("mask", "not a file"), p("prompt", "a")],
            "prompt-as-file": [img, file_part("prompt", b"a prompt", "text/plain", "p.txt")],
            "many-images-16": [file_part("image[]", self.png)] * 16 + [p("prompt", "a")],
            "many-images-17": [file_part("image[]", self.png)] * 17 + [p("prompt", "a")],
            "many-images-40": [file_part("image", self.png)] * 40 + [p("prompt", "a")],
            "second-image-garbage": [img, file_part("image[]", b"garbage"), p("prompt", "a")],
            "second-image-gif": [img, file_part("image[]", animated("GIF")), p("prompt", "a")],
            "second-image-bomb-header": [
                img,
                file_part("image[]", png_header(65535, 65535)),
                p("prompt", "a"),
            ],
            "mask-before-image": [m, p("prompt", "a"), img],
            "unknown-files": [
                img,
                file_part("other", self.png),
                file_part("x", b"\0"),
                p("prompt", "a"),
            ],
        }
        expect = {
            "n-twice-second-bad": BAD,
            "mask-twice-second-bad": BAD,
            "many-images-17": BAD,
            "many-images-40": BAD,
            "second-image-garbage": BAD,
            "second-image-gif": BAD,
            "image-as-text-field": BAD,
            "mask-as-text-field": None,
            "prompt-as-file": BAD,
            "prompt-twice-second-empty": BAD,
            "second-image-bomb-header": None,
        }
        for label, parts in forms.items():
            self.add(c, label, multipart(parts), expect=expect.get(label, OK))

    def numbers(self) -> None:
        c = "numbers"
        absurd = [
            "-1",
            "0",
            "11",
            "1e9",
            "99999999999999999999999",
            "9" * 5000,
            "NaN",
            "nan",
            "inf",
            "-inf",
            "1.5",
            " 1",
            "0x10",
            "\u00bd",
            "\u0661",
            "1_000",
            "+1",
            "--1",
            "1e-400",
            "true",
            "null",
            "[]",
            "{}",
            "",
        ]
        for fld in (
            "n",
            "output_compression",
            "partial_images",
            "seed",
            "steps",
            "guidance_scale",
            "strength",
        ):
            for v in absurd:
                self.add(
                    c,
                    f"{fld}={v[:24]}",
                    self.edit(self.png, mask=self.mask, fields={"prompt": "x", fld: v}),
                )
        for v in (
            "0x0",
            "-8x-8",
            "99999999x99999999",
            "8x",
            "x8",
            "1024x1024x1024",
            "auto ",
            "AUTO",
            "\u0661\u0660\u0662\u0664x\u0661\u0660\u0662\u0664",
            "\u00b2x8",
            "64X64",
            "64*64",
            "63x64",
            "8x8",
            "16x16",
            "4096x4096",
            "4104x4104",
            "64 x 64",
            "1e3x1e3",
            "0064x0064",
            "1536x1024",
            "NaNxNaN",
            "",
            "x",
        ):
            self.add(
                c,
                f"size={v}",
                self.edit(self.png, mask=self.mask, fields={"prompt": "x", "size": v}),
            )
        for fld, vals in (
            ("response_format", ["xml", "URL", "b64", ""]),
            ("output_format", ["gif", "JPG", "jpg", "bmp", "png\x00"]),
            ("background", ["transparent", "none", "TRANSPARENT"]),
            ("quality", ["ultra", "HD", "max", "low"]),
            ("stream", ["maybe", "TRUE", "2", "on"]),
            ("scheduler", ["nope", "ddim"]),
        ):
            for v in vals:
                self.add(
                    c,
                    f"{fld}={v}",
                    self.edit(self.png, mask=self.mask, fields={"prompt": "x", fld: v}),
                )
        self.add(
            c,
            "n10-size4096-total-pixels",
            self.edit(
                self.png, mask=self.mask, fields={"prompt": "x", "n": "10", "size": "4096x4096"}
            ),
            expect=BAD,
        )
        self.add(
            c,
            "transparent-jpeg",
            self.edit(
                self.png,
                mask=self.mask,
                fields={"prompt": "x", "background": "transparent", "output_format": "jpeg"},
            ),
            expect=BAD,
        )
        self.add(
            c,
            "stream-partials",
            self.edit(
                self.png,
                mask=self.mask,
                fields={"prompt": "x", "stream": "true", "partial_images": "3"},
            ),
            expect=OK,
        )

    def structure(self) -> None:
        c = "multipart"
        img = file_part("image", self.png)
        pr = part("prompt", b"x")
        b = BOUNDARY.encode()
        self.add(c, "empty-body", b"", expect=BAD)
        self.add(c, "only-closing-boundary", b"--" + b + b"--\r\n", expect=BAD)
        self.add(c, "no-closing-boundary", multipart([img, pr], close=False))
        self.add(c, "garbage", bytes(self.rng.randrange(256) for _ in range(2000)), expect=BAD)
        self.add(
            c,
            "preamble-epilogue",
            b"preamble\r\n" + multipart([img, pr]) + b"epilogue" * 100,
            expect=OK,
        )
        self.add(c, "lf-only", multipart([img, pr]).replace(b"\r\n", b"\n"))
        self.add(c, "cut-mid-part", multipart([img, pr])[:300])
        self.add(c, "cut-in-headers", b"--" + b + b"\r\nContent-Disposition: form-da")
        self.add(
            c,
            "part-no-disposition",
            b"--"
            + b
            + b"\r\nContent-Type: image/png\r\n\r\n"
            + self.png
            + b"\r\n--"
            + b
            + b"--\r\n",
            expect=BAD,
        )
        self.add(
            c,
            "part-no-name",
            multipart([b"Content-Disposition: form-data\r\n\r\nvalue", img, pr]),
            expect=OK,
        )
        self.add(
            c,
            "part-not-form-data",
            multipart([b'Content-Disposition: attachment; name="prompt"\r\n\r\nx', img]),
        )
        self.add(c, "name-with-quote", multipart([part(b'pro\\"mpt', b"x"), img]), expect=BAD)
        self.add(
            c, "name-unicode", multipart([part("\u00e9\u00e9".encode(), b"x"), img, pr]), expect=OK
        )
        self.add(c, "name-latin1-bytes", multipart([part(b"\xe9\xff", b"x"), img, pr]))
        self.add(c, "name-huge", multipart([part(b"n" * 7000, b"x"), img, pr]))
        self.add(
            c,
            "header-huge",
            multipart(
                [part("prompt", b"x", extra_headers=b"X-Pad: " + b"p" * 20000 + b"\r\n"), img]
            ),
        )
        self.add(
            c,
            "many-part-headers",
            multipart(
                [
                    part(
                        "prompt",
                        b"x",
                        extra_headers=b"".join(b"X-H%d: v\r\n" % i for i in range(500)),
                    ),
                    img,
                ]
            ),
        )
        self.add(
            c,
            "rfc2231-name",
            multipart([b"Content-Disposition: form-data; name*=UTF-8''prompt\r\n\r\nx", img]),
        )
        self.add(
            c,
            "base64-transfer-encoding",
            multipart(
                [
                    part(
                        "image",
                        base64.b64encode(self.png),
                        filename="a.png",
                        content_type="image/png",
                        extra_headers=b"Content-Transfer-Encoding: base64\r\n",
                    ),
                    pr,
                ]
            ),
        )
        self.add(
            c,
            "gzip-content-encoding-part",
            multipart(
                [
                    part(
                        "image",
                        zlib.compress(self.png),
                        filename="a.png",
                        content_type="image/png",
                        extra_headers=b"Content-Encoding: deflate\r\n",
                    ),
                    pr,
                ]
            ),
        )
        inner = multipart([img, pr], boundary="innerB")
        self.add(
            c,
            "nested-multipart",
            multipart([part("image", inner, content_type="multipart/mixed; boundary=innerB"), pr]),
        )
        self.add(
            c,
            "parts-65",
            multipart([img, pr] + [part(f"f{i}", b"v") for i in range(63)]),
            expect=BAD,
        )
        self.add(
            c,
            "parts-64",
            multipart([img, pr] + [part(f"f{i}", b"v") for i in range(62)]),
            expect=OK,
        )
        self.add(
            c,
            "parts-5000",
            multipart([part("f", b"") for _ in range(5000)] + [img, pr]),
            expect=BAD,
        )
        self.add(c, "field-300KB", multipart([img, pr, part("user", b"u" * 300_000)]), expect=BAD)
        self.add(
            c, "field-256KB-exact", multipart([img, pr, part("user", b"u" * 262_144)]), expect=OK
        )
        self.add(
            c,
            "image-26MB",
            multipart([file_part("image", self.png + b"\0" * (26 * 1024 * 1024)), pr]),
            expect=BAD,
        )
        self.add(c, "boundary-in-data", multipart([part("prompt", b"--" + b), img]))
        self.add(
            c,
            "chunked-body",
            multipart([img, pr]),
            expect=OK,
            headers={"Transfer-Encoding": "chunked"},
        )
        self.add(
            c, "content-length-lies-short", multipart([img, pr]), headers={"Content-Length": "100"}
        )
        self.add(
            c,
            "content-length-huge",
            b"x",
            headers={"Content-Length": str(2**40)},
            expect=frozenset({413}),
        )

    def json_bodies(self) -> None:
        c = "json"
        data_url = "data:image/png;base64," + base64.b64encode(self.png).decode()
        mask_url = "data:image/png;base64," + base64.b64encode(self.mask).decode()
        ok = {"images": [{"image_url": data_url}], "mask": {"image_url": mask_url}, "prompt": "x"}
        J = "application/json"
        self.add(c, "valid", json.dumps(ok).encode(), ctype=J, expect=OK)
        variants = {
            "images-not-list": {**ok, "images": 5},
            "images-string": {**ok, "images": "abc"},
            "images-ints": {**ok, "images": [1, 2]},
            "images-empty": {**ok, "images": []},
            "images-null": {**ok, "images": None},
            "image-url-not-data": {**ok, "images": [{"image_url": "http://127.0.0.1:1/x.png"}]},
            "image-url-file": {**ok, "images": [{"image_url": "file:///etc/passwd"}]},
            "data-no-comma": {**ok, "images": [{"image_url": "data:image/png;base64"}]},
            "data-bad-base64": {**ok, "images": [{"image_url": "data:image/png;base64,@@@"}]},
            "data-not-image": {**ok, "images": [{"image_url": "data:text/plain;base64,aGVsbG8="}]},
            "mask-int": {**ok, "mask": 5},
            "mask-list": {**ok, "mask": [1]},
            "prompt-object": {**ok, "prompt": {"a": 1}},
            "prompt-list": {**ok, "prompt": ["a"]},
            "prompt-number": {**ok, "prompt": 5},
            "prompt-null": {**ok, "prompt": None},
            "n-bool": {**ok, "n": True},
            "n-float": {**ok, "n": 1.5},
            "n-huge": {**ok, "n": 10**30},
            "n-list": {**ok, "n": [1]},
            "seed-negative": {**ok, "seed": -5},
            "size-int": {**ok, "size": 512},
            "stream-string": {**ok, "stream": "yes"},
        }
        for label, body in variants.items():
            self.add(c, label, json.dumps(body).encode(), ctype=J)
        for label, raw in (
            ("deep-nesting", b"[" * 100000 + b"]" * 100000),
            ("deep-object", b'{"a":' * 50000 + b"1" + b"}" * 50000),
            ("int-5000-digits", b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}"),
            ("float-1e999", b'{"prompt": "x", "images": [], "n": 1e999}'),
            ("nan-literal", b'{"prompt": "x", "n": NaN}'),
            ("top-level-array", b"[1, 2]"),
            ("top-level-string", b'"x"'),
            ("null", b"null"),
            ("empty", b""),
            ("truncated", json.dumps(ok).encode()[:200]),
            ("latin1", '{"prompt": "caf\u00e9"}'.encode("latin-1")),
            ("bom", b'\xef\xbb\xbf{"prompt": "x"}'),
            ("duplicate-keys", b'{"prompt": "x", "prompt": "", "images": []}'),
        ):
            self.add(c, label, raw, ctype=J, expect=BAD)
        # json.loads detects UTF-16/32 by itself: a UTF-16 body is accepted, not an error
        self.add(c, "utf16", json.dumps(ok).encode("utf-16"), ctype=J)

    def routes(self) -> None:
        c = "routes"
        for name in (
            "../../etc/passwd",
            "..%2F..%2Fetc%2Fpasswd",
            "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "0" * 32 + ".png",
            "0" * 32 + ".PNG",
            "0" * 32 + ".png%00.txt",
            "a" * 5000,
            ".",
            "..",
            "%00",
            "0" * 31 + "g.png",
            "0" * 32 + ".gif",
            "\u00e9.png",
            "0" * 32 + ".png/..",
            "0" * 32 + ".png?x=1",
        ):
            self.add(
                c,
                f"file-{name[:40]}",
                b"",
                method="GET",
                path="/v1/images/files/" + name,
                ctype=None,
                auth=False,
            )
        for path in (
            "/v1/models/..%2F..",
            "/v1/models/" + "m" * 3000,
            "/v1/models/%00",
            "/v1/../health",
            "//health",
            "/v1/images/edits/",
            "/v1/images/edits?x=" + "y" * 3000,
            "/metrics?x=1",
            "/openapi.json",
            "/ready",
            "/nope",
        ):
            self.add(c, f"get-{path[:40]}", b"", method="GET", path=path, ctype=None)
        for method in ("GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"):
            self.add(c, f"method-{method}", b"", method=method, ctype=None)
        self.add(c, "post-models", b"{}", path="/v1/models", ctype="application/json")

    def auth_variants(self) -> None:
        c = "auth"
        body = self.edit(self.png, mask=self.mask)
        for label, value in (
            ("none", None),
            ("empty", ""),
            ("bearer-only", "Bearer"),
            ("bearer-space", "Bearer "),
            ("basic", "Basic dXNlcjpwYXNz"),
            ("wrong", "Bearer sk-wrong-key"),
            ("long", "Bearer " + "k" * 7000),
            ("latin1", "Bearer caf\u00e9"),
            ("tab", "Bearer\tsk"),
            ("lowercase", "bearer sk-wrong"),
            ("double", "Bearer a Bearer b"),
        ):
            headers = {} if value is None else {"Authorization": value}
            self.add(c, label, body, auth=False, headers=headers, expect=frozenset({401}))

    def build(self) -> list[Case]:
        for gen in (
            self.baseline,
            self.truncated,
            self.corrupt,
            self.tiny_and_huge,
            self.modes,
            self.content_types,
            self.text_fields,
            self.duplicates,
            self.numbers,
            self.structure,
            self.json_bodies,
            self.routes,
            self.auth_variants,
        ):
            gen()
        names = [c.name for c in self.cases]
        assert len(names) == len(set(names)), "case names must be unique"
        return self.cases


def build_corpus(seed: int = 1234) -> list[Case]:
    """Every case, in a fixed order (the same bytes for the same seed)."""
    return Corpus(seed).build()


def fast_subset(cases: list[Case], count: int = 60) -> list[Case]:
    """A deterministic spread over every category (for the default test suite): big bodies
    (over 1 MB) are left to the full campaign."""
    small = [c for c in cases if len(c.body) < 1_000_000]
    by_cat: dict[str, list[Case]] = {}
    for case in small:
        by_cat.setdefault(case.category, []).append(case)
    chosen: list[Case] = []
    i = 0
    while len(chosen) < count and any(i < len(v) for v in by_cat.values()):
        for group in by_cat.values():
            # stride through each category so that the subset is not just its first cases
            stride = max(1, len(group) // max(1, count // len(by_cat)))
            j = i * stride
            if j < len(group) and len(chosen) < count:
                chosen.append(group[j])
        i += 1
    return chosen


if __name__ == "__main__":
    corpus = build_corpus()
    for cat, n in Counter(c.category for c in corpus).items():
        print(f"{cat:14s} {n}")
    print(f"{'total':14s} {len(corpus)}")
