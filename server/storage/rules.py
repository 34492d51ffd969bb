"""The rules both stores share: names, keys, content types, layout and expiry.

A store holds two kinds of things under one root (a folder, or a bucket prefix), laid out the
same way in both stores:

- ``url`` images, at ``<name>`` where name = ``<id>.<ext>``: id is 32 lowercase hex characters
  from ``secrets`` (128 bits), ext is ``png``, ``jpeg`` or ``webp``. Lookups accept only that
  exact shape, so no client string ever becomes a path or an object key.
- generic objects (for server-side features such as async jobs), at ``objects/<key>``: keys are
  chosen by our code, never by a client, and still checked against a fixed shape (``KEY``).

Everything stored expires ``ttl_s`` seconds after it was written (file mtime / S3
``LastModified``); ``expired`` is that rule.
"""

from __future__ import annotations

import re
import secrets

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

#: a url image's name: what a client sees at the end of its link
_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")
#: a generic object's key: 1..8 "/"-separated segments of lowercase letters, digits, ".", "_",
#: "-", each starting with a letter or digit (so no ".", "..", hidden or partial-file names)
_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,127}"
KEY = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{0,7}}$")
#: a generic object's content type, as stored with it (``type/subtype``, no parameters needed)
_CONTENT_TYPE = re.compile(r"^[a-z]+/[a-z0-9.+-]+(; ?[a-z-]+=[a-z0-9-]+)?$")
#: where generic objects live, relative to the store's root
OBJECTS = "objects/"


def new_name(fmt: str) -> str:
    """A fresh, unguessable image name ``<32 hex>.<fmt>``; ValueError for an unknown format."""
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unsupported image format {fmt!r}: expected one of {list(CONTENT_TYPES)}")
    return f"{secrets.token_hex(16)}.{fmt}"


def name_content_type(name: str) -> str | None:
    """The content type of a well-formed image name, None for any other string."""
    m = _NAME.match(name)
    return CONTENT_TYPES[m.group(1)] if m else None


def object_path(key: str) -> str:
    """Where a generic object lives relative to the root; ValueError for a malformed key."""
    if not KEY.match(key):
        raise ValueError(
            f"invalid object key {key[:80]!r}: use 1-8 '/'-separated segments of a-z, 0-9, "
            "'.', '_', '-', each starting with a letter or digit"
        )
    return OBJECTS + key


def check_content_type(content_type: str) -> str:
    """``content_type`` if it is a plain ``type/subtype``; ValueError otherwise."""
    if not _CONTENT_TYPE.match(content_type):
        raise ValueError(f"invalid content type {content_type[:80]!r}: expected type/subtype")
    return content_type


def is_ours(path: str) -> bool:
    """Whether a root-relative path is one this server writes (an image or a generic object):
    the sweeps delete nothing else, so a shared folder or bucket prefix loses no foreign data."""
    if path.startswith(OBJECTS):
        return bool(KEY.match(path[len(OBJECTS) :]))
    return name_content_type(path) is not None


def expired(age_s: float, ttl_s: float) -> bool:
    """Whether something written ``age_s`` seconds ago is past its ``ttl_s``."""
    return age_s > ttl_s
