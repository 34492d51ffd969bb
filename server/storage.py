"""Files behind ``response_format=url``: random ids, expiry, cleanup, no path tricks.

Each file is stored as ``<id>.<ext>`` where id is 32 hex characters from ``secrets`` (128 bits).
Lookups accept only that exact shape, so no client string ever reaches the filesystem as a path.
Expiry is by file modification time, so files in a persistent ``--files-dir`` survive a restart
until they expire; the default directory is a fresh temporary one (files do not survive).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from pathlib import Path

_NAME = re.compile(r"^([0-9a-f]{32})\.(png|jpeg|webp)$")

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class FileStore:
    def __init__(self, directory: Path | None, ttl_s: int) -> None:
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="inpaint-files-")
            directory = Path(self._tmp.name)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s

    def put(self, data: bytes, ext: str) -> str:
        """Store bytes; return the public file name ``<id>.<ext>``."""
        if ext not in CONTENT_TYPES:
            raise ValueError(f"unsupported extension {ext!r}")
        name = f"{secrets.token_hex(16)}.{ext}"
        tmp = self.directory / f".{name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)  # readers never see a half-written file
        return name

    def get(self, name: str) -> tuple[Path, str] | None:
        """Path and content type for a public name, or None if unknown, malformed or expired."""
        m = _NAME.match(name)
        if not m:
            return None
        path = self.directory / name
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        if age > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        return path, CONTENT_TYPES[m.group(2)]

    def cleanup(self) -> int:
        """Delete expired files (and stale partial writes); return how many were removed."""
        removed = 0
        now = time.time()
        for path in self.directory.iterdir():
            try:
                if now - path.stat().st_mtime > self.ttl_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def count(self) -> int:
        return sum(1 for _ in self.directory.iterdir())

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
