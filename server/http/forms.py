"""Parsing an edit request's body: multipart/form-data (RFC 7578, what every SDK sends) or the
JSON variant with data URLs, into text fields and uploads.

Pure and blocking: it runs in a worker thread on bytes already read (``body.py`` reads them on
the event loop, counting). A worker thread still holds the GIL while C code runs, so no single
call here works on a whole large body: a JSON body's structure is bounded and its data URLs
cut out (``jsonscan.py``) before ``json.loads`` sees it, and base64 is decoded in ``B64_CHUNK``
slices; the event loop gets the GIL back between them. Every limit is checked while parsing,
before anything large is built: parts, header sizes, field and file sizes, JSON keys, items and
depth, each image's decoded size (and, for JSON, reserved in the memory budget before it is
decoded). References to files and URLs are left as ``Reference`` objects (``references.py``).
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field

from ..config import Limits
from ..errors import APIError, invalid
from ..service import Upload
from .jsonscan import SCAN_CHUNK, JSONText, find, scan_json  # noqa: F401 - SCAN_CHUNK re-exported

#: form fields that carry files; other file parts are ignored like unknown text fields
IMAGE_FIELDS = ("image", "image[]")
FILE_FIELDS = (*IMAGE_FIELDS, "mask", "markup")
#: a part's header block: real clients send two or three short lines
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_PART_HEADER_LINES = 16
#: base64 characters decoded per call (a multiple of 4): ~5 ms of C code holding the GIL
B64_CHUNK = 1 << 20
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class EditBody:
    """Text fields (last value wins) and uploads: images in order, the mask, the markup. A
    JSON body may name an image (``Reference``) instead: ``references.resolve_references``
    replaces each by its ``Upload`` before the edit uses them."""

    fields: dict[str, str] = field(default_factory=dict)
    images: list[Upload | Reference] = field(default_factory=list)
    mask: Upload | Reference | None = None
    markup: Upload | Reference | None = None

    def add_file(self, name: str, data: bytes) -> None:
        if name in IMAGE_FIELDS:
            self.images.append(Upload(name, data))
        elif name in ("mask", "markup"):
            setattr(self, name, Upload(name, data))


def malformed(what: str) -> APIError:
    return invalid(f"Malformed multipart body: {what}.", None)


def too_large_file(param: str, limits: Limits) -> APIError:
    return invalid(
        f"'{param}' is larger than {limits.max_image_mb:g} MB; send a smaller file.",
        param,
        "image_too_large",
    )


def field_too_long(name: str) -> APIError:
    return invalid(f"Field '{name[:40]}' is too long.", name[:40], "string_above_max_length")


# ---------------------------------------------------------------- multipart


def _params(header_value: str) -> tuple[str, dict[str, str]]:
    """'form-data; name="a"; filename="b.png"' -> ("form-data", {"name": "a", ...})."""
    kind, _, rest = header_value.partition(";")
    params = {}
    for key, value in _PARAM.findall(";" + rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value.strip()
    return kind.strip().lower(), params


def _part_headers(block: bytes) -> dict[str, str]:
    lines = block.split(b"\r\n")
    if len(block) > MAX_PART_HEADER_BYTES or len(lines) > MAX_PART_HEADER_LINES:
        raise malformed("a part's headers are too long")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise malformed("a part header is not 'Name: value'")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
    return headers


def parse_multipart(body: bytes, boundary: str, limits: Limits, reservation=None) -> EditBody:
    """Split ``body`` at ``--boundary`` delimiters (a preamble before the first one and an
    epilogue after the last are skipped). Parts need ``Content-Disposition: form-data``; a part
    with a ``filename`` or a file field name is a file, the others text (UTF-8). Each file's
    copy is reserved in ``reservation`` (when given) before it is made."""
    if not 1 <= len(boundary) <= 70:
        raise malformed("the boundary must be 1 to 70 characters")
    delim = b"--" + boundary.encode("latin-1", "replace")
    pos = 0 if body.startswith(delim) else find(body, b"\r\n" + delim) + 2
    if pos < 0 or not body.startswith(delim, pos):
        raise malformed("no boundary delimiter found")
    out, parts = EditBody(), 0
    pos += len(delim)
    while True:
        if body.startswith(b"--", pos):  # the close delimiter: the rest is an epilogue
            return out
        eol = body.find(b"\r\n", pos, pos + 256)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise malformed("a delimiter is not followed by CRLF")
        parts += 1
        if parts > limits.max_parts:
            raise invalid(f"Too many form parts: more than {limits.max_parts}.", None)
        head_end = body.find(b"\r\n\r\n", eol, eol + MAX_PART_HEADER_BYTES + 4)
        if head_end < 0:
            raise malformed("a part's headers do not end (or are too long)")
        headers = _part_headers(body[eol + 2 : head_end]) if head_end > eol else {}
        start = head_end + 4
        end = find(body, b"\r\n" + delim, start)
        if end < 0:
            raise malformed("the body ends inside a part (no closing boundary)")
        _add_part(out, headers, body, start, end, limits, reservation)
        pos = end + 2 + len(delim)


def _add_part(
    out: EditBody, headers: dict, body: bytes, start: int, end: int, limits, reservation
) -> None:
    kind, params = _params(headers.get("content-disposition", ""))
    if kind != "form-data":
        raise malformed("every part needs 'Content-Disposition: form-data'")
    if headers.get("content-type", "").lower().startswith("multipart/"):
        raise invalid("Nested multipart bodies are not supported.", None)
    name = params.get("name", "")
    size = end - start
    if name in FILE_FIELDS or "filename" in params:
        param = name if name in ("mask", "markup") else "image"
        if size > limits.max_image_bytes:
            raise too_large_file(param, limits)
        if reservation is not None:
            reservation.add(size)
        out.add_file(name, bytes(memoryview(body)[start:end]))  # one copy, as bytes
        return
    if size > limits.max_field_bytes:
        raise field_too_long(name)
    try:
        out.fields[name] = bytes(memoryview(body)[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(f"Field '{name[:40]}' is not valid UTF-8 text.", name[:40]) from None


# ---------------------------------------------------------------- JSON


@dataclass(frozen=True)
class Reference:
    """An image the JSON body names instead of carrying it: ``kind`` "file_id" (a file of
    ``/v1/files``) or "url" (an http(s) URL); ``param`` is the field it fills ("image",
    "mask", "markup"). ``references.resolve_references`` replaces it by an ``Upload``."""

    param: str
    kind: str
    value: str


def b64decode_chunked(encoded, param: str) -> bytes:
    """Strict base64 (no whitespace) decoded ``B64_CHUNK`` characters at a time."""
    out = bytearray()
    try:
        for i in range(0, len(encoded), B64_CHUNK):
            out += binascii.a2b_base64(encoded[i : i + B64_CHUNK], strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{param}' has invalid base64 data.", param, "invalid_image_file") from None
    return bytes(out)


def _unescape_slashes(payload: memoryview) -> bytes:
    """A payload with JSON's ``\\/`` escapes (PHP writes them) turned back into ``/``,
    ``B64_CHUNK`` bytes at a time (a chunk never ends between ``\\`` and ``/``)."""
    out, i, n = bytearray(), 0, len(payload)
    while i < n:
        j = min(i + B64_CHUNK, n)
        if payload[j - 1] == 0x5C and j < n:
            j += 1
        out += bytes(payload[i:j]).replace(b"\\/", b"/")
        i = j
    return bytes(out)


def _reference_shape(param: str) -> APIError:
    return invalid(
        f'\'{param}\' must be {{"image_url": "data:image/png;base64,..."}}, '
        '{"image_url": "https://..."} or {"file_id": "file-..."}.',
        param,
        "invalid_value",
    )


def _decode(url: str, param: str, limits: Limits, text: JSONText, reservation) -> bytes:
    """The bytes of a data URL (a placeholder of ``text``, or one written inline), its size
    checked against the image limit and reserved before it is decoded. ``param`` names the
    JSON field in errors ("images", "mask", "markup")."""
    cut = text.take(url)
    if cut is not None:
        head = cut.head.replace(b"\\/", b"/").decode("latin-1")
        payload = _unescape_slashes(cut.payload) if cut.escaped else cut.payload
    else:  # inline: escapes in its header kept it in the JSON text (bounded as a field)
        head, _, rest = url.partition(",")
        payload = rest.encode("ascii", "replace")
    if not head.lower().endswith(";base64"):
        raise invalid(
            f"'{param}' must be a base64 data URL (data:image/png;base64,...).",
            param,
            "invalid_image_file",
        )
    size = len(payload) * 3 // 4
    if size > limits.max_image_bytes:  # checked before decoding
        raise too_large_file("image" if param == "images" else param, limits)
    if reservation is not None:
        reservation.add(size)
    return b64decode_chunked(payload, param)


def _image(value, param: str, limits: Limits, text: JSONText, reservation) -> Upload | Reference:
    """One entry of ``images`` (``param`` "image") or ``mask``, ``markup``: ``{"image_url":
    ...}`` (a string, or ``{"url": ...}`` as chat messages write it), ``{"file_id": ...}``, or
    a bare URL."""
    where = "images" if param == "image" else param  # the JSON field, in errors
    if isinstance(value, dict):
        known = {k: v for k, v in value.items() if k in ("image_url", "file_id")}
        if len(known) != 1:
            raise _reference_shape(where)
        ((kind, value),) = known.items()
        if kind == "file_id":
            if not isinstance(value, str) or not value:
                raise _reference_shape(where)
            return Reference(param, "file_id", value)
        if isinstance(value, dict):
            value = value.get("url")
    if not isinstance(value, str):
        raise _reference_shape(where)
    scheme = value[:8].lower()
    if scheme.startswith("data:"):
        return Upload(param, _decode(value, where, limits, text, reservation))
    if scheme.startswith(("http://", "https://")):
        return Reference(param, "url", value)
    raise _reference_shape(where)


def _field_text(value, text: JSONText) -> str:
    """A JSON value as the text a form field would carry (a text that looked like a data URL
    and was cut out is put back)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        cut = text.take(value)
        if cut is not None:
            return json.loads(b'"' + cut.head + b"," + bytes(cut.payload) + b'"')
    return str(value)


def parse_json(body: bytes, limits: Limits, reservation=None) -> EditBody:
    """``{"images": [{"image_url": "data:..."} | {"image_url": "https://..."} | {"file_id":
    "file-..."}], "mask": {...}, "markup": {...}, "prompt": ...}``: data URLs decoded (each
    decoded byte reserved in ``reservation`` first), the other references kept as
    ``Reference`` objects in order, the other values as text fields."""
    text = scan_json(body, limits)
    keys = [0]

    def count_keys(pairs):
        keys[0] += len(pairs)
        if keys[0] > limits.max_parts:
            raise ValueError("too many keys")
        return dict(pairs)

    try:
        doc = json.loads(text.text, object_pairs_hook=count_keys)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, too many keys, too deep
        raise invalid(
            f"The body is not valid JSON (or has more than {limits.max_parts} keys).",
            None,
            "invalid_value",
        ) from None
    if not isinstance(doc, dict):
        raise invalid("The JSON body must be an object.", None, "invalid_value")
    listed = doc.get("images") or []
    if not isinstance(listed, list):
        raise _reference_shape("images")
    if len(listed) > limits.max_images:
        raise invalid(
            f"Too many images: {len(listed)}; at most {limits.max_images} are accepted.",
            "image",
            "invalid_value",
        )
    out = EditBody(images=[_image(v, "image", limits, text, reservation) for v in listed])
    for name in ("mask", "markup"):
        if doc.get(name):
            setattr(out, name, _image(doc[name], name, limits, text, reservation))
    for key, value in doc.items():
        if key in ("images", "mask", "markup") or value is None:
            continue
        value = _field_text(value, text)
        if len(value.encode("utf-8", "surrogatepass")) > limits.max_field_bytes:
            raise field_too_long(key)
        out.fields[key] = value
    return out
