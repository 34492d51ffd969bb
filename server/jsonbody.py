"""JSON bodies that hold large strings (base64 images: tens to hundreds of MB), encoded in
pieces so that no single call holds the GIL for long.

``json.dumps`` of a body runs as one C call: a thread encoding a 100 MB answer keeps the event
loop's thread from running for the whole call, even from an executor. ``encode`` gives the same
bytes as ``json.dumps(obj).encode()`` (default separators, ``ensure_ascii``), but escapes each
long string in slices of ``PIECE_CHARS`` characters, each its own short call: between them the
interpreter hands the GIL to other threads (every ``sys.getswitchinterval()``, 5 ms). Run it in
an executor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

#: characters of a long string escaped per call (~1 MB: a millisecond or two)
PIECE_CHARS = 1 << 20


def pieces(obj) -> Iterator[bytes]:
    """The JSON text of ``obj`` (dicts with string keys, lists, scalars) in pieces."""
    if isinstance(obj, str):
        if len(obj) <= PIECE_CHARS:
            yield json.dumps(obj).encode()
            return
        yield b'"'
        for start in range(0, len(obj), PIECE_CHARS):
            yield json.dumps(obj[start : start + PIECE_CHARS])[1:-1].encode()
        yield b'"'
    elif isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        yield b"{"
        for i, (key, value) in enumerate(obj.items()):
            yield (b", " if i else b"") + json.dumps(key).encode() + b": "
            yield from pieces(value)
        yield b"}"
    elif isinstance(obj, (list, tuple)):
        yield b"["
        for i, value in enumerate(obj):
            if i:
                yield b", "
            yield from pieces(value)
        yield b"]"
    else:
        yield json.dumps(obj).encode()


def encode(obj) -> bytes:
    """``json.dumps(obj).encode()``, built from ``pieces``. Blocking: call it in an executor."""
    return b"".join(pieces(obj))
