"""Structure checks: truncated or corrupt files are refused before any pixel buffer exists.

Each walk reads only the container (chunk/segment lengths, checksums, markers): O(file bytes),
no decompression, no allocation proportional to the header's size. Pillow then decodes a file
whose every length is known to fit. PNG: chunk walk (:func:`_walk_png`) and bounded inflate check
(:func:`_check_png_data`); JPEG: marker walk with the scan count; WebP: RIFF walk; BMP and TIFF:
rows/strips within the file, from Pillow's parsed header. :func:`_walk` dispatches on the format.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from .errors import ImageError

#: A real JPEG has at most a few dozen scans (libjpeg's progressive script writes 10 for YCbCr,
#: 6 for gray, 2 + 4 x components = 18 for CMYK; mozjpeg's optimized scripts stay below ~25), but
#: every scan is a full pass over all coefficients: a 126 KB 4096x4096 file of 500 tiny scans
#: cost 15.9 s of CPU to decode (2000 scans: 49 s). 64 leaves real encoders 2.5x headroom.
MAX_JPEG_SCANS = 64
#: Chunks (PNG, WebP) or segments (JPEG) walked per file. Real files have at most a few thousand
#: (8 KiB IDAT chunks: ~3,200 in 25 MB); a 25 MB file of empty 12-byte chunks would be 2 million
#: Python iterations (seconds). 65536 is far above the first and far below the second.
MAX_CONTAINER_ITEMS = 65536
# Streaming inflate of PNG data: zlib gets at most this many input bytes per call (so its
# unconsumed tail stays small) and hands back at most this many output bytes per call.
_INFLATE_IN = 1 << 16
_INFLATE_OUT = 1 << 18
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # gray, RGB, palette, gray+alpha, RGBA
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
# The marker ending a scan's entropy-coded data: 0xFF then a code that is not a stuffed zero
# (FF00), a restart marker (RSTn sit inside a scan) or another fill byte.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_NOT_FILL = re.compile(rb"[^\xff]")  # regexes, not Python loops: a file may be all 0xFF
# Stray and fill bytes tolerated before a marker: encoders write none (libjpeg skips them with a
# warning); Pillow's header parser reads them one at a time in Python (~1 s per 5 MB).
_JPEG_MAX_STRAY = 4096
_BMP_UNCOMPRESSED = (0, 3, 6)  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS: rows stored raw


def _truncated(fmt: str, detail: str) -> ImageError:
    return ImageError(f"The {fmt.upper()} image is truncated: {detail}. Upload the complete file.")


def _corrupt(fmt: str, detail: str) -> ImageError:
    return ImageError(
        f"The {fmt.upper()} image is corrupt: {detail}. Re-export it and upload again."
    )


@dataclass(frozen=True)
class _PngLayout:
    width: int
    height: int
    depth: int  # bits per sample
    color: int  # IHDR colour type (0, 2, 3, 4, 6)
    interlace: int  # 0 none, 1 Adam7
    idat: tuple[tuple[int, int], ...]  # (offset, length) of each IDAT payload in the file

    def data_size(self) -> int:
        """Bytes the IDAT stream must inflate to: per row a filter byte + ceil(width x bits / 8),
        per Adam7 pass when interlaced (an empty pass has no rows, hence no filter bytes)."""
        bits = _PNG_CHANNELS[self.color] * self.depth
        total = 0
        for x0, y0, dx, dy in _ADAM7 if self.interlace else ((0, 0, 1, 1),):
            pw = max(0, -(-(self.width - x0) // dx))
            ph = max(0, -(-(self.height - y0) // dy))
            if pw and ph:
                total += ph * (1 + (pw * bits + 7) // 8)
        return total


def _walk_png(data: bytes) -> _PngLayout:
    """Chunk walk: every length within the file, every CRC right, IHDR first and valid, PLTE for
    palette images, consecutive IDAT chunks, and an IEND before the file ends."""
    n, view, pos = len(data), memoryview(data), len(_PNG_SIGNATURE)
    ihdr: tuple[int, ...] | None = None
    idat: list[tuple[int, int]] = []
    idat_closed = has_plte = False
    for count in range(MAX_CONTAINER_ITEMS + 1):
        if count == MAX_CONTAINER_ITEMS:
            raise _corrupt("png", f"it has more than {MAX_CONTAINER_ITEMS} chunks")
        if pos + 8 > n:
            raise _truncated("png", "the file ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        name = kind.decode("latin-1")
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise _corrupt("png", f"the chunk header at byte {pos} is invalid")
        end = pos + 12 + length
        if end > n:
            raise _truncated("png", f"its {name} chunk needs {length} bytes; the file ends sooner")
        if zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _corrupt("png", f"the checksum (CRC) of its {name} chunk does not match")
        if (count == 0) != (kind == b"IHDR"):
            raise _corrupt("png", "it must start with exactly one IHDR chunk")
        if kind == b"IHDR":
            if length != 13:
                raise _corrupt("png", "its IHDR chunk has the wrong length")
            ihdr = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"PLTE":
            has_plte = True
        elif kind == b"IDAT":
            if idat_closed:
                raise _corrupt("png", "its IDAT chunks are not consecutive")
            idat.append((pos + 8, length))
        elif kind == b"IEND":
            break
        idat_closed = bool(idat) and kind != b"IDAT"
        pos = end
    assert ihdr is not None  # the loop refuses a file whose first chunk is not IHDR
    width, height, depth, color, compression, filtering, interlace = ihdr
    if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
        raise _corrupt("png", f"its header declares {width}x{height} pixels")
    if depth not in _PNG_DEPTHS.get(color, ()) or compression or filtering or interlace > 1:
        raise _corrupt("png", f"its header is invalid (colour type {color}, bit depth {depth})")
    if not idat:
        raise _corrupt("png", "it has no image data (IDAT chunk)")
    if color == 3 and not has_plte:
        raise _corrupt("png", "it is a palette image without a palette (PLTE chunk)")
    return _PngLayout(width, height, depth, color, interlace, tuple(idat))


def _check_png_data(data: bytes, layout: _PngLayout) -> None:
    """Inflate the IDAT stream and count it against what the header implies; never holds more
    than ``_INFLATE_IN`` input + ``_INFLATE_OUT`` output bytes. Short = truncated; long or a
    broken deflate stream = corrupt. Bytes after the stream's end are ignored, as decoders do."""
    expected, got = layout.data_size(), 0
    view, inflater = memoryview(data), zlib.decompressobj()
    size = f"{layout.width}x{layout.height}"
    try:
        for offset, length in layout.idat:
            for start in range(offset, offset + length, _INFLATE_IN):
                pending = view[start : min(start + _INFLATE_IN, offset + length)]
                while pending and not inflater.eof:
                    got += len(inflater.decompress(pending, _INFLATE_OUT))
                    if got > expected:
                        raise _corrupt("png", f"its pixel data is larger than its {size} header")
                    pending = inflater.unconsumed_tail
        while not inflater.eof:  # output zlib still holds after the last input byte
            out = inflater.decompress(b"", _INFLATE_OUT)
            if not out:
                break
            got += len(out)
            if got > expected:
                raise _corrupt("png", f"its pixel data is larger than its {size} header")
    except zlib.error as e:
        raise _corrupt("png", f"its compressed pixel data is broken ({e})") from e
    if got < expected:
        raise _truncated(
            "png", f"its pixel data holds {got} of the {expected} bytes its {size} header implies"
        )


def _walk_jpeg(data: bytes) -> None:
    """Marker walk from SOI to EOI: segment lengths within the file, one valid frame header
    (SOF) before the first scan, at most ``MAX_JPEG_SCANS`` scans, every scan's entropy-coded
    data followed by a marker, and an EOI (data after it is ignored: MPO appends more images)."""
    n, pos, scans, frame = len(data), 2, 0, False
    for _ in range(MAX_CONTAINER_ITEMS):
        if pos >= n:
            raise _truncated("jpeg", "the file ends before its end-of-image marker (EOI)")
        # stray bytes, then fill bytes (FF), may precede a marker's code: skipped, as libjpeg does
        found = _JPEG_NEXT_MARKER.search(data, pos) if data[pos] != 0xFF else None
        code = _JPEG_NOT_FILL.search(data, found.start() if found else pos)
        if code is None or (found is None and data[pos] != 0xFF):
            raise _truncated("jpeg", "the file ends before its end-of-image marker (EOI)")
        if code.start() - pos > _JPEG_MAX_STRAY:
            raise _corrupt("jpeg", f"it has {code.start() - pos} stray bytes at byte {pos}")
        marker, pos = data[code.start()], code.start() + 1
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            continue
        if marker in (0x00, 0xD8) or pos + 2 > n:
            raise _corrupt("jpeg", f"it has an invalid marker at byte {pos - 1}")
        length = struct.unpack_from(">H", data, pos)[0]
        end = pos + length
        if length < 2 or end > n:
            raise _truncated("jpeg", f"its segment at byte {pos - 2} runs past the end of the file")
        if marker in _JPEG_SOF:
            if frame:
                raise _corrupt("jpeg", "it has more than one frame header")
            components = data[pos + 7] if length >= 8 else 0
            if length < 8 or length != 8 + 3 * components:
                raise _corrupt("jpeg", "its frame header (SOF) is invalid")
            frame = True
        elif marker == 0xDA:  # SOS: a scan header, then entropy-coded data up to the next marker
            if not frame:
                raise _corrupt("jpeg", "a scan comes before the frame header")
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(
                    f"The JPEG image has more than {MAX_JPEG_SCANS} scans (progressive passes); "
                    "real encoders write at most a few dozen and each one costs a full decoding "
                    "pass. Re-save it (for example as a baseline JPEG) and upload again."
                )
            found = _JPEG_NEXT_MARKER.search(data, end)
            if found is None:
                raise _truncated("jpeg", f"the file ends inside the data of scan {scans}")
            pos = found.start()
            continue
        pos = end
    else:
        raise _corrupt("jpeg", f"it has more than {MAX_CONTAINER_ITEMS} segments")
    if not scans:
        raise _corrupt("jpeg", "it has no image data (no scan)")


def _walk_webp(data: bytes) -> None:
    """RIFF walk: the RIFF size fits the file, every chunk fits the RIFF, an image chunk exists,
    and a simple lossy (VP8) image's first partition fits its chunk. Trailing bytes are ignored."""
    riff_end = 8 + struct.unpack_from("<I", data, 4)[0]
    if riff_end > len(data):
        raise _truncated("webp", f"its header promises {riff_end} bytes; the file has {len(data)}")
    pos, image = 12, False
    for _ in range(MAX_CONTAINER_ITEMS):
        if pos >= riff_end:
            break
        if pos + 8 > riff_end:
            raise _corrupt("webp", f"its chunk header at byte {pos} runs past the RIFF data")
        kind, size = struct.unpack_from("<4sI", data, pos)
        end = pos + 8 + size
        if end > riff_end:
            raise _truncated(
                "webp", f"its {kind.decode('latin-1')!r} chunk runs past the RIFF data"
            )
        if kind == b"VP8 ":
            # frame tag: bits 5..23 = first partition size; then 7 bytes of start code + size
            if size < 10 or 10 + (int.from_bytes(data[pos + 8 : pos + 11], "little") >> 5) > size:
                raise _truncated("webp", "its VP8 chunk is shorter than its frame header says")
        image = image or kind in (b"VP8 ", b"VP8L", b"ANMF")
        pos = end + (size & 1)  # chunks are padded to an even size
    else:
        raise _corrupt("webp", f"it has more than {MAX_CONTAINER_ITEMS} chunks")
    if not image:
        raise _corrupt("webp", "it has no image data (VP8, VP8L or ANMF chunk)")


def _walk_bmp(data: bytes, im: Image.Image) -> None:
    """Uncompressed BMP: the rows the header implies fit the file (RLE: left to Pillow)."""
    if len(data) < 34 or struct.unpack_from("<I", data, 14)[0] < 40:  # OS/2 core header: Pillow
        return
    offset = struct.unpack_from("<I", data, 10)[0]
    bits, compression = struct.unpack_from("<HI", data, 28)
    if compression not in _BMP_UNCOMPRESSED:
        return
    w, h = im.size
    stride = (w * bits + 31) // 32 * 4
    need = offset + stride * (h - 1) + (w * bits + 7) // 8  # the last row's padding may be missing
    if need > len(data):
        raise _truncated("bmp", f"its {w}x{h} pixels need {need} bytes; the file has {len(data)}")


def _walk_tiff(data: bytes, im: Image.Image) -> None:
    """The first image's strips or tiles lie inside the file (their contents: left to Pillow)."""
    tags = getattr(im, "tag_v2", {})
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # strips, tiles
        offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
        if offsets is None:
            continue
        offsets = offsets if isinstance(offsets, tuple) else (offsets,)
        counts = counts if isinstance(counts, tuple) else (counts,)
        if len(counts) != len(offsets):
            raise _corrupt("tiff", "its strip or tile table is inconsistent")
        if any(int(o) + int(c) > len(data) for o, c in zip(offsets, counts, strict=True)):
            raise _truncated("tiff", "its image data lies past the end of the file")


def _magic_format(data: bytes) -> str | None:
    """png | jpeg | webp from the first bytes (for a precise message when Pillow cannot open it)."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _walk(data: bytes, fmt: str, im: Image.Image | None) -> _PngLayout | None:
    """The container walk of ``fmt`` (no decompression); the PNG layout for :func:`_check_png_data`.
    GIF and other formats are left to Pillow, whose decoders fail on truncated data. ``im`` (the
    lazily opened image) is needed for bmp/tiff only."""
    try:
        if fmt == "png":
            return _walk_png(data)
        if fmt == "jpeg":
            _walk_jpeg(data)
        elif fmt == "webp":
            _walk_webp(data)
        elif fmt == "bmp" and im is not None:
            _walk_bmp(data, im)
        elif fmt == "tiff" and im is not None:
            _walk_tiff(data, im)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - a header too odd to walk is the client's problem too
        raise _corrupt(fmt, "its structure could not be read") from e
    return None
