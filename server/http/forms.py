"""Parsing an edit request's body: multipart/form-data (RFC 7578, what every SDK sends) or the
JSON variant with data URLs, into text fields and uploads.

Pure and blocking: it runs in a worker thread on bytes already read (``body.py`` reads them on
the event loop, counting). A worker thread still holds the GIL while C code runs, so no single
call here works on a whole large body: data URLs are cut out of a JSON body (``bytes.find``)
before ``json.loads`` sees it, and base64 is decoded in ``B64_CHUNK`` slices; the event loop
gets the GIL back between them. Every limit is checked while parsing, before anything large is
built: parts, header sizes, field and file sizes, JSON keys and items, each image's decoded size.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field

from ..config import Limits
from ..errors import APIError, invalid
from ..service import Upload

#: form fields that carry files; other file parts are ignored like unknown text fields
IMAGE_FIELDS = ("image", "image[]")
FILE_FIELDS = (*IMAGE_FIELDS, "mask", "markup")
#: a part's header block: real clients send two or three short lines
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_PART_HEADER_LINES = 16
#: commas + brackets + braces of a JSON body: real bodies have a few dozen; this caps what a
#: hostile body of small items can make ``json.loads`` allocate
MAX_JSON_ITEMS = 4096
#: base64 characters decoded per call (a multiple of 4): ~5 ms of C code holding the GIL
B64_CHUNK = 1 << 20
#: bytes searched per call for a delimiter
SCAN_CHUNK = 1 << 20
#: a data URL's header ("data:image/png;base64,") is at most this long
MAX_DATA_URL_HEAD = 256
#: what a cut-out data URL becomes inside the JSON text handed to json.loads
_CUT = "data:;cut,{}"
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class EditBody:
    """Text fields (last value wins) and uploads: images in order, the mask, the markup."""

    fields: dict[str, str] = field(default_factory=dict)
    images: list[Upload] = field(default_factory=list)
    mask: Upload | None = None
    markup: Upload | None = None

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


def find(body: bytes, needle: bytes, start: int = 0, stop: int | None = None) -> int:
    """``body.find(needle, start, stop)`` one ``SCAN_CHUNK`` window at a time, so that no single
    C call holds the GIL over a whole large body."""
    stop = len(body) if stop is None else stop
    n = len(needle)
    while start < stop:
        end = min(start + SCAN_CHUNK, stop)
        hit = body.find(needle, start, min(end + n - 1, stop))
        if hit >= 0:
            return hit
        start = end
    return -1


def parse_multipart(body: bytes, boundary: str, limits: Limits) -> EditBody:
    """Split ``body`` at ``--boundary`` delimiters (a preamble before the first one and an
    epilogue after the last are skipped). Parts need ``Content-Disposition: form-data``; a part
    with a ``filename`` or a file field name is a file, the others text (UTF-8)."""
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
        _add_part(out, headers, body, start, end, limits)
        pos = end + 2 + len(delim)


def _add_part(out: EditBody, headers: dict, body: bytes, start: int, end: int, limits) -> None:
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
        out.add_file(name, bytes(memoryview(body)[start:end]))  # one copy, as bytes
        return
    if size > limits.max_field_bytes:
        raise field_too_long(name)
    try:
        out.fields[name] = bytes(memoryview(body)[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(f"Field '{name[:40]}' is not valid UTF-8 text.", name[:40]) from None


# ---------------------------------------------------------------- JSON


def b64decode_chunked(encoded: memoryview, param: str) -> bytes:
    """Strict base64 (no whitespace) decoded ``B64_CHUNK`` characters at a time."""
    out = bytearray()
    try:
        for i in range(0, len(encoded), B64_CHUNK):
            out += binascii.a2b_base64(encoded[i : i + B64_CHUNK], strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{param}' has invalid base64 data.", param, "invalid_image_file") from None
    return bytes(out)


def cut_data_urls(body: bytes) -> tuple[bytes, list[memoryview]]:
    """The JSON text with each data URL's payload replaced by a short reference (``_CUT``), and
    the payloads (views into ``body``, not copies). Only ``bytes.find`` scans the whole body."""
    parts, payloads, pos = [], [], 0
    view = memoryview(body)
    while (start := find(body, b'"data:', pos)) >= 0:
        slashes = len(body[max(0, start - 64) : start]) - len(
            body[max(0, start - 64) : start].rstrip(b"\\")
        )
        if slashes % 2:  # an escaped quote inside some string: not a value's start
            parts.append(view[pos : start + 1])
            pos = start + 1
            continue
        comma = body.find(b",", start, start + MAX_DATA_URL_HEAD)
        end = find(body, b'"', comma + 1) if comma >= 0 else -1
        if end < 0 or find(body, b"\\", comma, end) >= 0:
            break  # not a plain data URL: json.loads will judge the rest as it is
        parts.append(view[pos : start + 1])
        parts.append(_CUT.format(len(payloads)).encode())
        payloads.append(view[comma + 1 : end])
        pos = end
    parts.append(view[pos:])
    return b"".join(parts), payloads


def _data_url(value, param: str, limits: Limits, payloads: list[memoryview]) -> bytes:
    url = value.get("image_url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise invalid(f'\'{param}\' must be {{"image_url": "data:image/png;base64,..."}}.', param)
    head, _, tail = url.partition(",")
    encoded = memoryview(tail.encode("ascii", "replace"))
    if head == "data:;cut" and tail.isdecimal() and int(tail) < len(payloads):
        encoded = payloads[int(tail)]
    if len(encoded) * 3 // 4 > limits.max_image_bytes:  # checked before decoding
        raise too_large_file("image" if param == "images" else param, limits)
    return b64decode_chunked(encoded, param)


def _field_text(value) -> str:
    """A JSON value as the text a form field would carry."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_json(body: bytes, limits: Limits) -> EditBody:
    """``{"images": [{"image_url": "data:..."}], "mask": {...}, "prompt": ...}``."""
    body, payloads = cut_data_urls(body)
    items = body.count(b",") + body.count(b"[") + body.count(b"{")
    if items > MAX_JSON_ITEMS:
        raise invalid(f"The JSON body has too many items (over {MAX_JSON_ITEMS}).", None)
    keys = [0]

    def count_keys(pairs):
        keys[0] += len(pairs)
        if keys[0] > limits.max_parts:
            raise ValueError("too many keys")
        return dict(pairs)

    try:
        doc = json.loads(body, object_pairs_hook=count_keys)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, too many keys, too deep
        raise invalid(
            f"The body is not valid JSON (or has more than {limits.max_parts} keys).", None
        ) from None
    if not isinstance(doc, dict):
        raise invalid("The JSON body must be an object.", None)
    listed = doc.get("images") or []
    if not isinstance(listed, list):
        raise invalid('\'images\' must be a list of {"image_url": "data:..."} objects.', "images")
    if len(listed) > limits.max_images:
        raise invalid(
            f"Too many images: {len(listed)}; at most {limits.max_images} are accepted.",
            "image",
            "invalid_value",
        )
    out = EditBody(
        images=[Upload("image", _data_url(v, "images", limits, payloads)) for v in listed]
    )
    for name in ("mask", "markup"):
        if doc.get(name):
            out.add_file(name, _data_url(doc[name], name, limits, payloads))
    for key, value in doc.items():
        if key in ("images", "mask", "markup") or value is None:
            continue
        text = _field_text(value)
        if len(text.encode("utf-8", "surrogatepass")) > limits.max_field_bytes:
            raise field_too_long(key)
        out.fields[key] = text
    return out
