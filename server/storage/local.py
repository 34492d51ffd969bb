"""The embedded store: a local folder, served by this server's ``/v1/images/files/{name}``.

Layout and names follow ``rules.py``: images at ``<directory>/<name>``, generic objects at
``<directory>/objects/<key>``. Writes go to a hidden ``.<...>.part`` file first and are renamed
into place, so readers never see a half-written file. Expiry is by modification time, so files
in a persistent ``--files-dir`` survive a restart until they expire; the default directory is a
fresh temporary one (files do not survive). Links only work on the replica that wrote the file:
several replicas need the S3 store (``s3.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from . import rules


class FileStore:
    def __init__(self, directory: Path | None, ttl_s: int) -> None:
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="inpaint-files-")
            directory = Path(self._tmp.name)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s

    # ------------------------------------------------------------------ url images
    def put(self, data: bytes, fmt: str) -> str:
        """Store encoded image bytes; return the public name ``<id>.<fmt>``."""
        name = rules.new_name(fmt)
        self._write(self.directory / name, data)
        return name

    def link(self, name: str, base_url: str) -> str:
        """The client's URL of a stored image: this server's files route."""
        return f"{base_url}/v1/images/files/{name}"

    def open(self, name: str) -> tuple[Path, str] | None:
        """Path and content type for a public name, or None if unknown, malformed or expired."""
        content_type = rules.name_content_type(name)
        if content_type is None or self._fresh(self.directory / name) is None:
            return None
        return self.directory / name, content_type

    # ------------------------------------------------------------------ generic objects
    def put_object(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (replacing it). The content type is checked but not
        kept: local objects are read back by the server, never served to clients."""
        rules.check_content_type(content_type)
        path = self.directory / rules.object_path(key)
        for attempt in range(2):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return self._write(path, data)
            except FileNotFoundError:
                if attempt:  # else the sweep removed the (long empty) folder meanwhile: again
                    raise

    def get_object(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None if missing or expired."""
        path = self._fresh(self.directory / rules.object_path(key))
        return None if path is None else path.read_bytes()

    def open_object(self, key: str) -> tuple[BinaryIO, int] | None:
        """The open file under ``key`` and its size, or None if missing or expired."""
        path = self._fresh(self.directory / rules.object_path(key))
        try:
            stream = path.open("rb") if path is not None else None
        except FileNotFoundError:  # swept in between
            stream = None
        return None if stream is None else (stream, os.fstat(stream.fileno()).st_size)

    def delete_object(self, key: str) -> None:
        (self.directory / rules.object_path(key)).unlink(missing_ok=True)

    # ------------------------------------------------------------------ upkeep
    def cleanup(self) -> int:
        """Delete expired files of ours (and stale partial writes); return how many."""
        removed = 0
        now = time.time()
        for folder, _dirs, files in os.walk(self.directory, topdown=False):
            for file in files:
                path = Path(folder, file)
                rel = path.relative_to(self.directory).as_posix()
                if not (rules.is_ours(rel) or _is_partial(file)):
                    continue
                try:
                    if rules.expired(now - path.stat().st_mtime, self.ttl_s):
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            # an object folder left empty for a whole TTL (emptying it set its mtime)
            if folder != str(self.directory) and not os.listdir(folder):
                with contextlib.suppress(OSError):
                    if rules.expired(now - os.stat(folder).st_mtime, self.ttl_s):
                        os.rmdir(folder)
        return removed

    def count(self) -> int:
        """Files in the store (partial writes included)."""
        return sum(len(files) for _, _, files in os.walk(self.directory))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # ------------------------------------------------------------------ helpers
    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: readers see the old bytes or the new ones

    def _fresh(self, path: Path) -> Path | None:
        """``path`` if it exists and has not expired; an expired file is removed on access."""
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        age = time.time() - st.st_mtime
        if rules.expired(age, self.ttl_s):
            path.unlink(missing_ok=True)
            return None
        return path


def _is_partial(file_name: str) -> bool:
    return file_name.startswith(".") and file_name.endswith(".part")
