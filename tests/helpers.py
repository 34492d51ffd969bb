"""Shared test helpers: image / mask byte builders, fake models, multipart forms, error checks.

Every image is generated in code. Arrays follow docs/CONVENTIONS.md: uint8 HxWx3 RGB or HxWx4 RGBA.
The HTTP tests' client is the ``make_client`` fixture (tests/conftest.py); the end-to-end tests'
real server and OpenAI client come from ``start_server`` (tests/e2e/conftest.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from server.config import ServerConfig, make_config
from server.models.base import Capabilities, ModelLimits, Row
from server.models.builtin import NAME as BUILTIN
from server.models.builtin import BuiltinInpaintModel
from server.models.registry import ModelRegistry

KEY = "sk-test"
EDITS = "/v1/images/edits"
AUTH = {"Authorization": f"Bearer {KEY}"}
RED = (255, 0, 0)

# ---------------------------------------------------------------- pixels


def scene(w: int = 64, h: int = 48, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 HxWx3: blue background, a red square at ``box`` = (x0, y0, x1, y1) (default centred),
    plus a faint gradient so that 'outside unchanged' is not trivially true of a flat image."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 200
    img[..., 1] = (np.arange(w)[None, :] * 60 // max(1, w - 1)).astype(np.uint8)
    x0, y0, x1, y1 = box or default_box(w, h)
    img[y0:y1, x0:x1] = RED
    return img


def default_box(w: int, h: int) -> tuple[int, int, int, int]:
    """The red square of :func:`scene`: the middle third of the image."""
    return w // 3, h // 3, 2 * w // 3, 2 * h // 3


def alpha_mask(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """OpenAI convention: RGBA, opaque everywhere except alpha 0 in ``box`` (= edit)."""
    m = np.zeros((h, w, 4), np.uint8)
    m[..., 3] = 255
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1, 3] = 0
    return m


def bw_mask(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Black/white convention: L (no alpha), white (255) in ``box`` = edit."""
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


def grown(box: tuple[int, int, int, int], px: int, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(0, x0 - px), max(0, y0 - px), min(w, x1 + px), min(h, y1 + px)


def outside(shape: tuple[int, int], box: tuple[int, int, int, int], margin: int = 0) -> np.ndarray:
    """bool HxW: True outside ``box`` grown by ``margin``."""
    h, w = shape
    x0, y0, x1, y1 = grown(box, margin, w, h)
    keep = np.ones((h, w), bool)
    keep[y0:y1, x0:x1] = False
    return keep


def inner(box: tuple[int, int, int, int], margin: int) -> tuple[slice, slice]:
    """Slices of ``box`` shrunk by ``margin`` (deep inside the edit region)."""
    x0, y0, x1, y1 = box
    return slice(y0 + margin, y1 - margin), slice(x0 + margin, x1 - margin)


def not_red(pixels: np.ndarray) -> bool:
    """True when no pixel of uint8 ...x3 is anywhere near pure red."""
    dist = np.abs(pixels[..., :3].astype(int) - np.array([255, 0, 0])).sum(-1)
    return bool((dist > 150).all())


def check_kept_and_edited(out: np.ndarray, original: np.ndarray, box) -> None:
    """Outside the box: bit-identical; deep inside: the red is gone."""
    assert out.shape[:2] == original.shape[:2]
    keep = outside(original.shape[:2], box)
    assert np.array_equal(out[..., :3][keep], original[..., :3][keep])
    assert not_red(out[inner(box, 3)])


# ---------------------------------------------------------------- encoders


def encode(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def png(arr: np.ndarray) -> bytes:
    return encode(arr, "PNG")


def jpeg(arr: np.ndarray, quality: int = 95, **kw) -> bytes:
    return encode(arr, "JPEG", quality=quality, **kw)


def webp(arr: np.ndarray, lossless: bool = True) -> bytes:
    return encode(arr, "WEBP", lossless=lossless)


def gif(arr: np.ndarray) -> bytes:
    return encode(arr, "GIF")


def exif_rotated_jpeg(arr: np.ndarray, orientation: int = 6) -> bytes:
    """JPEG storing ``arr`` as-is with an EXIF orientation tag (6 = viewer rotates 90 deg CW)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(arr, exif=exif.tobytes())


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def huge_png_header(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny file whose IHDR declares ``width`` x ``height`` RGB pixels (a decompression bomb
    shape): the server must refuse it from the header, without decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def decode_image(data: bytes) -> tuple[np.ndarray, str]:
    """Encoded bytes -> (uint8 array as stored, Pillow format name)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.array(im), im.format


def decode_b64(b64: str) -> np.ndarray:
    """A ``b64_json`` string (an SDK result's ``.b64_json``) -> the uint8 array as stored."""
    return decode_image(base64.b64decode(b64))[0]


def b64_image(item: dict) -> np.ndarray:
    return decode_b64(item["b64_json"])


# ---------------------------------------------------------------- HTTP


class Multipart:
    """A hand-built multipart/form-data body (exact part names, bytes and order; no guessing by
    the HTTP client, which would send a form without files as urlencoded)."""

    BOUNDARY = "----inpaint-test-boundary-7MA4YWxkTrZu0gW"

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def field(self, name: str, value: str | bytes) -> Multipart:
        data = value.encode() if isinstance(value, str) else value
        self.parts.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data)
        return self

    def file(
        self,
        name: str,
        data: bytes,
        filename: str = "image.png",
        content_type: str = "application/octet-stream",
    ) -> Multipart:
        head = (
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        self.parts.append(head.encode() + data)
        return self

    @property
    def body(self) -> bytes:
        b = self.BOUNDARY.encode()
        out = b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in self.parts)
        return out + b"--" + b + b"--\r\n"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.BOUNDARY}"

    def headers(self, auth: bool = True) -> dict[str, str]:
        return {"Content-Type": self.content_type, **(AUTH if auth else {})}


def form(
    fields: dict[str, object] | None = None,
    images: list[tuple[str, bytes]] | None = None,
    mask: bytes | None = None,
    mask_first: bool = False,
) -> Multipart:
    """multipart/form-data: ``images`` as (part name, bytes); text ``fields``; optional mask.
    ``mask_first`` puts the mask and text fields before the images (part order is free)."""
    mp = Multipart()

    def add_images():
        for i, (name, data) in enumerate(images or []):
            mp.file(name, data, filename=f"img{i}.png")

    def add_rest():
        if mask is not None:
            mp.file("mask", mask, filename="mask.png", content_type="image/png")
        for k, v in (fields or {}).items():
            mp.field(k, str(v))

    if mask_first:
        add_rest()
        add_images()
    else:
        add_images()
        add_rest()
    return mp


def edit_form(img: bytes | None = None, mask: bytes | None = None, **fields) -> Multipart:
    """The common case: one image part named 'image', a prompt unless prompt=None, optional mask."""
    fields.setdefault("prompt", "remove the red square")
    if fields["prompt"] is None:
        del fields["prompt"]
    images = [("image", img)] if img is not None else []
    return form(fields, images, mask)


async def raw_get(client, target: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalisation), with ``Host: host`` and
    the test key, as one HTTP/1.1 request on a fresh socket: (status, the raw answer)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return int(raw.split(b" ", 2)[1]), raw


async def post_edit(client, mp: Multipart, auth: bool = True):
    return await client.post(EDITS, data=mp.body, headers=mp.headers(auth))


async def edit_ok(client, mp: Multipart) -> dict:
    """POST ``mp`` to the edits route; assert a 200 JSON answer and return its body."""
    resp = await post_edit(client, mp)
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "application/json"
    return json.loads(text)


def assert_error(
    status: int,
    body: dict,
    expected_status: int,
    *,
    type: str = "invalid_request_error",
    code: str | None,
    param: str | None,
) -> None:
    """The exact OpenAI error shape: the four keys, their values, a non-empty message."""
    assert status == expected_status, body
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and len(err["message"]) > 10, err
    assert err["type"] == type, err
    assert err["code"] == code, err
    assert err["param"] == param, err


async def expect_error(resp, expected_status: int, **kw) -> dict:
    assert resp.content_type == "application/json", resp.content_type
    body = await resp.json()
    assert_error(resp.status, body, expected_status, **kw)
    return body["error"]


# ---------------------------------------------------------------- configs and fake models


def config(tmp_models: Path | None = None, **kw) -> ServerConfig:
    """ServerConfig with the test key and a models dir with no exported models; ``kw`` are flat
    setting names (``max_parts=4``)."""
    kw.setdefault("api_keys", (KEY,))
    return make_config(models_dir=tmp_models or Path("/nonexistent-models-dir"), **kw)


class FakeModel:
    """A single-pass model for fault injection: sleeps ``delay`` s then fills the edit region with
    a constant colour, or raises ``error`` if given. Counts calls; ``started`` is set on entry."""

    def __init__(
        self,
        name: str = "fake",
        delay: float = 0.0,
        error: Exception | None = None,
        fill: tuple[int, int, int] = (0, 255, 0),
    ) -> None:
        self.name = name
        self.delay = delay
        self.error = error
        self.fill = np.array(fill, np.uint8)
        self.capabilities = Capabilities(
            limits=ModelLimits(min_side=16, max_side=2048, native_side=512, max_work_side=2048),
            reads_prompt=False,
            streams_previews=False,
        )
        self.calls = 0
        self.started = threading.Event()

    def describe(self) -> dict:
        return {"kind": "fake"}

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def run(self, rows: list[Row]) -> list[np.ndarray]:
        self.calls += 1
        self.started.set()
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        out = []
        for row in rows:
            img = row.image.copy()
            img[row.mask > 0.5] = self.fill
            out.append(img)
        return out

    def close(self) -> None:
        pass


def registry(*models, default: str | None = None) -> ModelRegistry:
    """A registry holding the built-in model plus ``models``; default = ``default`` or built-in."""
    builtin = BuiltinInpaintModel()
    reg = {builtin.name: builtin}
    reg.update({m.name: m for m in models})
    return ModelRegistry(models=reg, default=default or BUILTIN)


# ---------------------------------------------------------------- skip reasons
# The run's summary (tests/conftest.py) groups skips by these prefixes, so that what this machine
# lacks reads apart from other skips: hardware (another machine runs those tests) and Debian
# packages (one command installs them).

MISSING_HARDWARE = "missing hardware"
MISSING_PACKAGE = "missing system package"


def missing_hardware(what: str) -> str:
    """Skip reason of a test that needs hardware this machine lacks (``what``: which)."""
    return f"{MISSING_HARDWARE}: {what}"


#: the attention kernel (server/models/providers/fused_attention.py) runs on AMX tiles only
NO_AMX_BF16 = missing_hardware("AMX-BF16 (Intel Xeon 4th gen or newer)")
#: without bf16 units OpenVINO computes a bf16 hint in f32
NO_NATIVE_BF16 = missing_hardware("native bf16 (AVX512_BF16 or AMX)")


def missing_package(package: str, what: str) -> str:
    """Skip reason of a test that needs the Debian package ``package`` (``what``: the file or
    service it provides that is missing)."""
    return f"{MISSING_PACKAGE} {package}: {what} (apt-get install -y {package})"


# ---------------------------------------------------------------- the HTTP tests' standard picture

W, H = 64, 48
BOX = default_box(W, H)  # (21, 16, 42, 32)
IMG = png(scene(W, H))  # PNG bytes of scene(W, H)
MASK = png(alpha_mask(W, H, BOX))  # PNG bytes: edit BOX
