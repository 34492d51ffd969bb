"""The official openai-node SDK for end-to-end tests: the version pinned by
``tests/e2e/node/package-lock.json``, installed once with ``npm ci`` into
``.cache/node-sdk/<digest of the lock file>/`` (the npm registry must be reachable the first
time), and ``run_node`` to run a script of ``tests/e2e/node/`` with it.

Tests skip with ``missing()``'s reason where ``node`` or ``npm`` is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import missing_package

NODE_DIR = Path(__file__).parent / "node"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "node-sdk"


def missing() -> str | None:
    """The skip reason when node or npm is not installed, else None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return missing_package("nodejs", f"no {tool} to run the openai-node SDK")
    return None


def install() -> Path:
    """The ``node_modules`` folder holding the pinned SDK (installed on first use)."""
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    folder = (
        CACHE / hashlib.sha256(lock + (NODE_DIR / "package.json").read_bytes()).hexdigest()[:16]
    )
    if (folder / "node_modules" / "openai" / "package.json").exists():
        return folder / "node_modules"
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="install-", dir=CACHE))
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_DIR / name, work / name)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        check=True,
        timeout=300,
        capture_output=True,
    )
    try:
        work.rename(folder)  # atomic: a concurrent run's install wins, ours is dropped
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
    return folder / "node_modules"


def run_node(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``tests/e2e/node/<script>`` (CommonJS: ``require("openai")``) with the pinned SDK;
    stdout and stderr captured as text; raises on a non-zero exit, with its stderr."""
    env = {**os.environ, "NODE_PATH": str(install())}
    done = subprocess.run(
        ["node", str(NODE_DIR / script), *args],
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise AssertionError(f"node {script} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done
