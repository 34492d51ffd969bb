"""A JSON edit body's structure, bounded before ``json.loads`` builds anything, and its data
URLs cut out so that ``json.loads`` never copies them.

``json.loads`` is one C call: on a hostile body it holds the GIL for as long as it runs (a
60 MB body: ~0.3 s) and builds one object per item (1.5 M tiny entries: ~1 GB). So the body
is first walked string by string with ``bytes.find`` one ``SCAN_CHUNK`` at a time (the event
loop gets the GIL back between calls), and everything ``json.loads`` would build is counted
and bounded on the way: items, nesting depth, keys, strings, the bytes outside strings, each
string's length, data URLs. A body of a million entries stops at the first bound, after work
proportional to the bound, not to the body.

Each data URL's payload is replaced by a placeholder that names this parse's random token
(``data:;cut-<token>,<index>``): a client cannot write one (any ``data:...,`` string is cut
itself, and the token is unknown), and each payload is taken at most once (``JSONText.take``),
so every decoded byte is a distinct byte of the body.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..config import Limits
from ..errors import APIError, invalid

#: bytes searched per call for a delimiter
SCAN_CHUNK = 1 << 20
#: commas, ``[`` and ``{`` outside strings: real bodies have a few dozen
MAX_JSON_ITEMS = 4096
#: objects and arrays inside each other: the deepest real body has 3 (body, images, entry)
MAX_JSON_DEPTH = 16
#: strings (keys and values): at most two per item in valid JSON
MAX_JSON_STRINGS = 2 * MAX_JSON_ITEMS + 2
#: quote characters looked at, escaped ones (inside strings) included
MAX_JSON_QUOTES = 64 * 1024
#: bytes outside strings that are not whitespace (punctuation, numbers, true/false/null)
MAX_JSON_SYNTAX = 64 * 1024
#: bytes outside strings, whitespace included (pretty-printed bodies have a few KB)
MAX_JSON_OUTSIDE = 1 << 20
#: JSON bytes per UTF-8 byte of a field at most (``\\u00XX`` for one byte)
JSON_ESCAPE_GROWTH = 6
#: fields whose strings may come close to the field limit at once (prompt, negative_prompt...)
MAX_LONG_FIELDS = 2
#: a data URL's header (``data:image/png;base64,``) is at most this long
MAX_DATA_URL_HEAD = 256
_WHITESPACE = b" \t\r\n"
_OPEN, _CLOSE = b"[{", b"]}"


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


def too_many(what: str) -> APIError:
    return invalid(
        f"The JSON body has too many {what}; an edit needs a few dozen items: send images as "
        '{"image_url": "data:..."} entries of "images" and plain text fields.',
        None,
        "invalid_value",
    )


def not_json(why: str) -> APIError:
    return invalid(f"The body is not valid JSON: {why}.", None, "invalid_value")


@dataclass
class DataURL:
    """A data URL cut out of the body: its header (``data:image/png;base64``) and a view of
    its payload in the body (JSON-escaped when ``escaped``: ``\\/`` for ``/``)."""

    head: bytes
    payload: memoryview
    escaped: bool


@dataclass
class JSONText:
    """The body's JSON with data URLs replaced by placeholders (``text``: what ``json.loads``
    gets), and the cut-out data URLs."""

    text: bytes
    token: str
    data_urls: list[DataURL]
    _taken: set[int] = field(default_factory=set)

    def take(self, url: str) -> DataURL | None:
        """The data URL a placeholder string stands for (each one once); None when ``url`` is
        not one of this parse's placeholders."""
        head, _, index = url.partition(",")
        if head != f"data:;cut-{self.token}" or not index.isdecimal():
            return None
        i = int(index)
        if i >= len(self.data_urls) or i in self._taken:
            return None
        self._taken.add(i)
        return self.data_urls[i]


class _Scan:
    def __init__(self, body: bytes, limits: Limits) -> None:
        self.body, self.view, self.limits = body, memoryview(body), limits
        self.token = secrets.token_hex(16)
        self.parts: list = []
        self.data_urls: list[DataURL] = []
        self.items = self.depth = self.keys = self.strings = self.quotes = self.syntax = 0
        self.outside = 0
        self.max_string = JSON_ESCAPE_GROWTH * limits.max_field_bytes + 2
        self.max_strings_total = MAX_LONG_FIELDS * self.max_string
        self.strings_total = 0
        self.max_data_urls = limits.max_images + 2  # images, mask, markup
        self.key = (0, 0)  # the last string, and the key at depth 1 once a ':' follows it
        self.last = (0, 0)

    def run(self) -> JSONText:
        pos, body = 0, self.body
        while True:
            quote = find(body, b'"', pos)
            self._outside(pos, len(body) if quote < 0 else quote)
            if quote < 0:
                break
            end = self._string_end(quote + 1)
            self.strings += 1
            if self.strings > MAX_JSON_STRINGS:
                raise too_many("strings")
            self._string(quote, end)
            pos = end + 1
        if self.depth != 0:
            raise not_json("an object or array is not closed")
        return JSONText(b"".join(self.parts), self.token, self.data_urls)

    def _outside(self, start: int, stop: int) -> None:
        """Count and keep ``body[start:stop]`` (outside strings): its structure, its
        non-whitespace bytes and all its bytes, each under its bound."""
        self.outside += stop - start
        if self.outside > MAX_JSON_OUTSIDE:
            raise too_many(f"bytes outside strings (over {MAX_JSON_OUTSIDE}, whitespace included)")
        for lo in range(start, stop, MAX_JSON_SYNTAX):  # never more copied than the bound
            hi = min(lo + MAX_JSON_SYNTAX, stop)
            kept = self.body[lo:hi].translate(None, _WHITESPACE)
            self.syntax += len(kept)
            if self.syntax > MAX_JSON_SYNTAX:
                raise too_many("items (numbers, brackets, commas)")
            self.parts.append(self.view[lo:hi])
            for byte in kept:
                if byte in _OPEN:
                    self.depth += 1
                    self.items += 1
                    if self.depth > MAX_JSON_DEPTH:
                        raise too_many(f"levels of nesting (over {MAX_JSON_DEPTH})")
                elif byte in _CLOSE:
                    self.depth -= 1
                elif byte == 44:  # ","
                    self.items += 1
                elif byte == 58:  # ":"
                    self.keys += 1
                    if self.depth == 1:
                        self.key = self.last
            if self.items > MAX_JSON_ITEMS:
                raise too_many(f"items (over {MAX_JSON_ITEMS})")
            if self.keys > self.limits.max_parts:
                raise too_many(f"keys (over {self.limits.max_parts})")

    def _string_end(self, start: int) -> int:
        """The index of the quote that closes the string starting at ``start``."""
        pos = start
        while True:
            end = find(self.body, b'"', pos)
            if end < 0:
                raise not_json("a string does not end")
            self.quotes += 1
            if self.quotes > MAX_JSON_QUOTES:
                raise too_many("quotes")
            if self._backslashes_before(end, start) % 2 == 0:
                return end
            pos = end + 1

    def _backslashes_before(self, end: int, floor: int) -> int:
        count, hi = 0, end
        while hi > floor:
            lo = max(floor, hi - 4096)
            chunk = self.body[lo:hi]
            kept = len(chunk.rstrip(b"\\"))
            count += len(chunk) - kept
            if kept:
                break
            hi = lo
        return count

    def _string(self, quote: int, end: int) -> None:
        """Keep the string ``body[quote:end + 1]``, or its placeholder when it is a data URL."""
        body = self.body
        if body.startswith(b"data:", quote + 1):
            comma = body.find(b",", quote + 1, min(end, quote + 1 + MAX_DATA_URL_HEAD))
            if comma >= 0:
                if len(self.data_urls) >= self.max_data_urls:
                    raise too_many(f"data URLs (over {self.max_data_urls})")
                self.parts.append(f'"data:;cut-{self.token},{len(self.data_urls)}"'.encode())
                self.data_urls.append(
                    DataURL(
                        bytes(body[quote + 1 : comma]),
                        self.view[comma + 1 : end],
                        find(body, b"\\", comma + 1, end) >= 0,
                    )
                )
                self.last = (0, 0)
                return
        size = end - quote - 1
        self.strings_total += size
        if size > self.max_string or self.strings_total > self.max_strings_total:
            key = self.body[self.key[0] : self.key[1]].decode("utf-8", "replace")[:40]
            raise invalid(
                f"A text field of the JSON body ({key!r}) is too long: fields are limited to "
                f"{self.limits.max_field_kb:g} KB (images go in data URLs, which must have "
                "a literal comma after their header).",
                key or None,
                "string_above_max_length",
            )
        self.parts.append(self.view[quote : end + 1])
        self.last = (quote + 1, min(end, quote + 1 + 64))


def scan_json(body: bytes, limits: Limits) -> JSONText:
    """Bound the structure of the JSON ``body`` and cut its data URLs out (see the module's
    docstring); a 400 at the first bound exceeded."""
    return _Scan(body, limits).run()
