"""Where ``response_format=url`` images (and other server-side objects) are kept.

``Store`` is the interface the rest of the server uses; ``make_store(config)`` builds the one the
settings ask for:

- no S3 settings: ``FileStore`` (local.py), a folder served by this server's files route;
- ``--s3-bucket``: ``S3Store`` (s3.py), an S3-compatible bucket linked by presigned GETs, so
  that links work whichever replica wrote them.

The rules both share (names, keys, layout, expiry) live in rules.py. Every method may block
(disk, network; S3's ``link`` while boto3 first finds its credentials): call them from an
executor, never on the event loop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO, Protocol

from ..config import StorageConfig
from .local import FileStore
from .s3 import MAX_LINK_TTL_S, S3Store  # boto3 is imported only when an S3Store is built

__all__ = ["FileStore", "S3Store", "Store", "check_config", "make_store"]

ADDRESSING_STYLES = ("auto", "path", "virtual")
#: "" or "/"-terminated segments of characters that need no escaping in URLs, each starting
#: with a letter or digit (HTTP clients may collapse "." and ".." and break the signature)
_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/)*$")


class Store(Protocol):
    def put(self, data: bytes, fmt: str) -> str:
        """Store an encoded image (``fmt``: png, jpeg or webp); return its name."""

    def link(self, name: str, base_url: str) -> str:
        """The URL a client downloads the image from: ``{base_url}/v1/images/files/{name}``
        for the local store (``base_url`` = this server as the client sees it), a presigned
        GET for S3. Valid for the TTL."""

    def open(self, name: str) -> tuple[Path, str] | None:
        """``(path, content_type)`` of a fresh image this server serves itself, else None
        (always None for S3: its links never point at us)."""

    def put_object(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (ours, never client text: ``rules.KEY``'s shape, else
        ValueError), replacing what was there; it expires like an image."""

    def get_object(self, key: str) -> bytes | None:
        """The bytes under ``key``; None if missing or expired."""

    def open_object(self, key: str) -> tuple[BinaryIO, int] | None:
        """``(stream, size)``: the bytes under ``key`` to read in chunks (``stream.read(n)``,
        then ``stream.close()``), for objects too big to hold at once; None if missing or
        expired."""

    def delete_object(self, key: str) -> None:
        """Delete ``key`` (nothing happens if it is missing)."""

    def cleanup(self) -> int:
        """Delete what has expired; return how many things were removed."""

    def close(self) -> None:
        """Release the store (the default local folder is deleted)."""


def check_config(config: StorageConfig) -> None:
    """ValueError, saying which setting to fix, for storage settings that cannot work together.
    Touches nothing (``make_store`` connects)."""
    s3_set = [
        name
        for name, value in (
            ("--s3-endpoint-url", config.s3_endpoint_url),
            ("--s3-link-endpoint-url", config.s3_link_endpoint_url),
            ("--s3-region", config.s3_region),
            ("--s3-no-sweep", config.s3_no_sweep),
        )
        if value
    ]
    if config.s3_bucket is None:
        if s3_set:
            raise ValueError(f"{', '.join(s3_set)}: S3 settings, but no --s3-bucket is set")
        return
    if not 0 < config.file_ttl <= MAX_LINK_TTL_S:
        raise ValueError(
            f"--file-ttl {config.file_ttl}: a presigned S3 link lives 1..{MAX_LINK_TTL_S} s"
        )
    if not _PREFIX.match(config.s3_prefix):
        raise ValueError(
            f"--s3-prefix {config.s3_prefix!r}: use '' or segments of A-Z a-z 0-9 . _ - "
            "that start with a letter or digit and end in '/', e.g. 'inpaint/'"
        )
    if config.s3_addressing_style not in ADDRESSING_STYLES:
        raise ValueError(
            f"--s3-addressing-style {config.s3_addressing_style!r}: use one of "
            f"{', '.join(ADDRESSING_STYLES)}"
        )
    for flag, url in (
        ("--s3-endpoint-url", config.s3_endpoint_url),
        ("--s3-link-endpoint-url", config.s3_link_endpoint_url),
    ):
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{flag} {url!r}: expected an http:// or https:// URL")


def make_store(config: StorageConfig) -> Store:
    """The store the settings ask for. With S3 the bucket is probed once (HEAD), so a wrong
    bucket, endpoint or credential stops the start with a RuntimeError naming it."""
    check_config(config)
    if config.s3_bucket is None:
        return FileStore(config.files_dir, config.file_ttl)
    store = S3Store(
        config.s3_bucket,
        config.s3_prefix,
        config.file_ttl,
        endpoint_url=config.s3_endpoint_url,
        link_endpoint_url=config.s3_link_endpoint_url,
        region=config.s3_region,
        addressing_style=config.s3_addressing_style,
        sweep=not config.s3_no_sweep,
    )
    store.check()
    return store
