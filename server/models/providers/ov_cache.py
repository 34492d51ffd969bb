"""Compiled OpenVINO models kept on disk, so that only the first load pays for compiling (the
dynamic graphs; static per-shape graphs are compiled in memory, see ``OpenVINOProvider``).

Layout: ``<cache folder>/<component>-<precision>-<key>.blob`` (``CompiledModel.export_model``)
and a ``.json`` beside it naming what the key covers. The key is a hash of everything that
decides the blob's content: the component files' sha256 from the manifest (weights included),
the precision, the time-embedding pin, the OpenVINO version and the CPU (a blob compiled for
AMX must not be imported on another machine).

Why not OpenVINO's own ``CACHE_DIR``: for a model we edited in memory (the fp32 time-embedding
marks), a cache hit still reads, converts and hashes the whole ONNX file first (seconds for
the 3.4 GB UNet); importing our blob skips all of that. Writes go to a temporary file renamed
into place, so concurrent servers never read half a blob. A folder that cannot be written
turns the cache off with one warning; the server still runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("server.models.providers")


class BlobCache:
    """Compiled models by key under ``folder``; ``hits`` / ``misses`` / ``stores`` count use."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.enabled = True

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}-{key}.blob"

    def load(self, core, name: str, key: str, device: str, config: dict[str, str]):
        """(compiled model, its sidecar dict) stored under (name, key), or (None, {}) (a miss).

        The blob is read into memory before the import (a transient copy of its size): an
        import from a memory map would tie the compiled model to the mapping's lifetime."""
        path = self.path(name, key)
        if self.enabled and path.is_file():
            try:
                compiled = core.import_model(io.BytesIO(path.read_bytes()), device, config)
                meta = json.loads(path.with_suffix(".json").read_text())
            except Exception as exc:  # noqa: BLE001 - a bad blob is recompiled, not fatal
                log.warning("OpenVINO cache: %s unreadable (%s); recompiling", path, exc)
            else:
                self.hits += 1
                return compiled, meta
        self.misses += 1
        return None, {}

    def store(self, compiled, name: str, key: str, parts: dict[str, Any]) -> None:
        """Write ``compiled`` under (name, key) and ``parts`` (what the key covers) beside it."""
        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(name, key)
            # the sidecar first: a reader that finds the blob finds its sidecar too
            path.with_suffix(".json").write_text(json.dumps(parts, indent=1, default=str))
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".blob")
            try:
                stream = io.BytesIO()  # the Python API exports to BytesIO only, not to files
                compiled.export_model(stream)
                with os.fdopen(fd, "wb") as f:
                    f.write(stream.getbuffer())
                del stream
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self.stores += 1
        except Exception as exc:  # noqa: BLE001 - a cache must never stop a model loading
            self.enabled = False
            log.warning(
                "OpenVINO cache %s not writable (%s): compiling at every start", self.folder, exc
            )

    def discard(self, name: str, key: str) -> None:
        for path in (self.path(name, key), self.path(name, key).with_suffix(".json")):
            path.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """For ``/v1/models``: the cache folder's own name (inside the model's folder), never
        its path (clients learn nothing of the server's file system)."""
        return {
            "folder": self.folder.name,
            "enabled": self.enabled,
            "hits": self.hits,
            "misses": self.misses,
            "stores": self.stores,
        }
