"""The SHA-256 of the files an export writes or reads, and the check that a model folder still
holds the files its manifest hashed (what "up to date" rests on). Shared by the SD exporter,
the one-shot importer and the LoRA records."""

from __future__ import annotations

import hashlib
from pathlib import Path

from server.models.manifest import Manifest, OneShotManifest


def sha256(path: Path) -> str:
    """Hex digest of the file's bytes (read in 4 MiB chunks: graphs can be several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def files_match(folder: Path, manifest: Manifest | OneShotManifest) -> bool:
    """Every component lists its hashes and every hashed file in ``folder`` still has them."""
    for comp in manifest.components.values():
        if not comp.sha256:
            return False
        for rel, digest in comp.sha256.items():
            p = folder / rel
            if not p.is_file() or sha256(p) != digest:
                return False
    return True
