"""The architecture's import rules, read from the source (AST), so that a violation fails here:

- ``server/`` never imports torch (nor transformers / diffusers);
- ``server/protocol.py`` imports nothing of ours;
- the models, the batcher and the service import no aiohttp (only ``server/http/`` does);
- ``export/`` imports only the manifest schema from ``server/``;
- the SQL engine (``server/database.py``) imports nothing of ours, and the rate limiter nothing
  from ``server/jobs/`` (both stand on the engine; neither stands on the other);
- and at run time: importing the server's entry points in a fresh interpreter loads no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_WORLD = ("torch", "transformers", "diffusers", "open_clip")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (module ``module``, default: from its place in
    the repo) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # "from . import x": x may be a module
                    found.update(f"{name}.{a.name}".lstrip(".") for a in node.names)
            else:
                name = node.module or ""
            if name:
                found.add(name)
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", sources("server"), ids=lambda p: str(p.relative_to(ROOT)))
def test_server_never_imports_torch(path):
    bad = {m for m in imports(path) if _top(m) in TORCH_WORLD}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_protocol_imports_nothing_of_ours():
    ours = {m for m in imports(ROOT / "server/protocol.py") if _top(m) in ("server", "export")}
    assert not ours, ours


#: every module of server/ but the HTTP layer and the entry point
PURE = [p for p in sources("server") if p.relative_to(ROOT).parts[1] not in ("http", "__main__.py")]


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_models_batching_and_service_import_no_aiohttp(path):
    bad = {m for m in imports(path) if _top(m) == "aiohttp" or m.startswith("server.http")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_http_package_and_the_entry_point_import_aiohttp():
    users = {
        str(p.relative_to(ROOT))
        for p in sources("server")
        if any(_top(m) == "aiohttp" for m in imports(p))
    }
    allowed = {"server/__main__.py"}
    assert {u for u in users if not u.startswith("server/http/")} <= allowed, users


@pytest.mark.parametrize("path", sources("export"), ids=lambda p: str(p.relative_to(ROOT)))
def test_export_imports_only_the_manifest_from_server(path):
    used = {m for m in imports(path) if _top(m) == "server"}
    assert used <= {"server.models.manifest", "server.models"}, used


#: module -> the packages of ours it must not import (a lower layer never reaches up)
BELOW = {
    "server/database.py": ("server", "export"),
    "server/ratelimit.py": ("server.jobs", "server.batches", "server.files"),
}


def _reaches(used: set[str], packages: tuple[str, ...]) -> set[str]:
    return {m for m in used if any(m == p or m.startswith(p + ".") for p in packages)}


@pytest.mark.parametrize("name", sorted(BELOW))
def test_the_engine_and_the_rate_limiter_stand_below_jobs(name):
    bad = _reaches(imports(ROOT / name), BELOW[name])
    assert not bad, f"{name} imports {sorted(bad)}"


def test_the_checker_sees_violations(tmp_path):
    """The rules above can fail: torch, aiohttp and relative imports are all seen."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch\nfrom aiohttp import web\nfrom .. import export\nfrom ..http import app\n"
    )
    found = imports(probe, module="server.service.probe")
    assert {"torch", "aiohttp", "server.export", "server.http"} <= found
    # the rate limiter once imported the engine from jobs inside a method: still seen
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from .jobs.database import make_engine\n")
    used = imports(lazy, module="server.ratelimit")
    assert _reaches(used, BELOW["server/ratelimit.py"]) == {"server.jobs.database"}


def test_server_package_never_imports_torch():
    code = (
        "import sys, server.http.app, server.__main__, server.service, server.models.registry\n"
        "bad = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
