"""Test models built once per source version and reused, within a run and across runs.

``artifact(builder, **args)`` is the folder ``builder(out, **args)`` builds: ``builder`` writes
into the empty folder ``out`` and returns the path of its result inside it; the caller gets that
path inside the cache entry ``<cache>/<builder name>-<key>/``. The cache is ``.cache/test-models/``
in the checkout (ignored by git), or ``$TEST_MODELS_CACHE``.

The key is a sha256 of everything the output is made from, so a stale model never hides a change:

- the builder: its module, name and source text, and ``args`` (JSON). An argument that is another
  artifact's path carries that artifact's key, so a chain (TAESD -> export with ``--tiny-vae``)
  follows its inputs;
- the files of the ``export/`` package, of the ``server`` modules they import (read from their
  import statements, transitively: ``server/models/manifest.py``, ...) and of this module;
- the versions of the libraries the exports record (``export.exporter.LIBRARIES``: torch,
  diffusers, transformers, onnx, onnxruntime, ...), of peft and open-clip-torch (LoRAs, the CLIP
  vocabulary) and of Python.

A builder writes only into ``out``, and what it records of a path must come from its arguments:
the entry is built in a ``.build-*`` folder and renamed into place (atomic, so two pytest
processes may race: both build, one rename wins, and a crash never leaves an entry that looks
complete). Building an entry removes the entries made from other sources or library versions
(or by another text of the same builder with the same arguments) once unused for an hour (a run
still using one, started before an edit, keeps it), and build folders left by crashes: the cache
holds the current version of each model and those used in the last hour. A build that failed is
not tried again in the same process (it would fail again, at the same cost, for every fixture).

Entries are read-only by convention (copy one with ``shutil.copytree`` before changing it), and
checked: an entry records the sha256 of each file, a lookup compares them, and ``changed()``
(the run's summary, tests/conftest.py, which fails the run) lists the entries this process used
that something wrote into. The mode bits are left alone: root (CI, the dev containers) writes
through them, and ``copytree`` would carry them into the copies tests make in order to write.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

from export.hashing import sha256 as file_sha256

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TEST_MODELS_CACHE") or ROOT / ".cache" / "test-models").absolute()
RECORD = ".artifact.json"
#: besides the exporter's own list: the LoRA builder's and the CLIP vocabulary's packages
MORE_LIBRARIES = ("peft", "open-clip-torch", "safetensors", "pydantic")
#: an entry of another version unused this long, or a build folder this old (a crashed run's),
#: is removed: a test run uses its entries for minutes, a tiny model builds in under a minute
STALE_S = 3600

_used: dict[Path, dict] = {}  # entry -> its record, for each entry this process returned
_failed: dict[Path, BaseException] = {}  # entry -> why building it failed in this process


def artifact(builder: Callable[..., Path], /, **args) -> Path:
    """The result of ``builder(out, **args)`` from the cache, built now if it is not there."""
    digest = key(builder, args)
    entry = CACHE / f"{builder.__name__.strip('_')}-{digest[:16]}"
    record = _record(entry)
    if record is not None and (diff := _diff(entry, record)):
        if entry in _used:
            raise AssertionError(
                f"{entry} was changed during this run ({', '.join(diff)}): a test wrote into a "
                "shared model; copy it first (shutil.copytree)"
            )
        changes = ", ".join(diff)
        warnings.warn(f"{entry} changed since it was built ({changes}); rebuilt", stacklevel=2)
        _remove(entry)
        record = None
    if record is None:
        if entry in _failed:
            raise _failed[entry]
        made = {**_slot(builder, args), "key": digest, "inputs": inputs_digest()}
        try:
            record = _build(builder, args, entry, made)
        except BaseException as exc:
            _failed[entry] = exc
            raise
    os.utime(entry)  # its last use, for _prune
    _used[entry] = record
    return entry / record["result"]


def key(builder: Callable[..., Path], args: dict) -> str:
    """The cache key of ``builder(out, **args)``'s output (see the module docstring)."""
    source = inspect.getsource(builder)
    return _sha({**_slot(builder, args), "source": source, "inputs": inputs_digest()})


def _slot(builder: Callable[..., Path], args: dict) -> dict:
    return {"builder": f"{builder.__module__}.{builder.__qualname__}", "args": args}


def changed() -> dict[Path, list[str]]:
    """The entries this process used whose files are no longer those built: path -> changes."""
    return {e: d for e, r in _used.items() if (d := _diff(e, r))}


@cache
def inputs_digest() -> str:
    """sha256 of the sources and library versions every artifact is made with."""
    return _sha({"sources": sources(ROOT), "versions": versions()})


def versions() -> dict[str, str]:
    from export.exporter import LIBRARIES

    out = {"python": platform.python_version()}
    for lib in (*LIBRARIES, *MORE_LIBRARIES):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def sources(root: Path) -> dict[str, str]:
    """sha256 of each file of ``root/export`` (a package: every file in it), of the ``server``
    modules (and their packages' ``__init__``) those import, transitively, and of this file."""
    todo = [p for p in (root / "export").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    todo.append(Path(__file__))
    seen: dict[Path, str] = {}
    while todo:
        path = todo.pop()
        if path not in seen:
            seen[path] = file_sha256(path)
            if path.suffix == ".py" and path.is_relative_to(root):
                todo += _server_imports(root, path)
    return {_name(root, p): d for p, d in sorted(seen.items())}


def _name(root: Path, path: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def _server_imports(root: Path, path: Path) -> list[Path]:
    """The files of the ``server`` modules ``path`` imports, lazily (in a function) or not."""
    package = path.relative_to(root).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of ``path``, up level - 1
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]  # a.name may be a module
        else:
            continue
        for parts in (n.split(".") for n in names):
            if parts[0] == "server":  # the module and the packages it runs the __init__ of
                for i in range(1, len(parts) + 1):
                    module = root.joinpath(*parts[:i])
                    files = (module.with_suffix(".py"), module / "__init__.py")
                    found += [p for p in files if p.is_file()]
    return found


def _build(builder: Callable[..., Path], args: dict, entry: Path, record: dict) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    _prune(record)
    tmp = CACHE / f".build-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        result = Path(builder(tmp, **args)).absolute()
        record = {**record, "result": str(result.relative_to(tmp)), "files": _files(tmp)}
        (tmp / RECORD).write_text(json.dumps(record, indent=1))
        try:
            tmp.rename(entry)
        except OSError as exc:  # another process renamed the same entry first: use theirs
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or _record(entry) is None:
                raise
            record = _record(entry)
    finally:
        _remove(tmp)
    return record


def _prune(record: dict) -> None:
    """Remove the entries of other versions and the build folders unused for ``STALE_S``."""
    for path in CACHE.iterdir():
        try:
            if time.time() - path.stat().st_mtime < STALE_S:
                continue
        except FileNotFoundError:  # another process pruned it first
            continue
        if path.name.startswith(".build-"):
            _remove(path)
        elif (old := _record(path)) is not None and (
            old["inputs"] != record["inputs"]
            or (old["builder"], old["args"]) == (record["builder"], record["args"])
        ):
            _remove(path)


def _record(entry: Path) -> dict | None:
    try:
        return json.loads((entry / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _files(folder: Path) -> dict[str, str]:
    """What ``folder`` holds (but its record): relative path -> sha256, "dir" or "-> target"."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if rel == RECORD:
            continue
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        else:
            out[rel] = "dir" if p.is_dir() else file_sha256(p)
    return out


def _diff(entry: Path, record: dict) -> list[str]:
    now, then = _files(entry), record["files"]
    return sorted(
        [f"{p} changed" for p in now.keys() & then.keys() if now[p] != then[p]]
        + [f"{p} added" for p in now.keys() - then.keys()]
        + [f"{p} removed" for p in then.keys() - now.keys()]
    )


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _sha(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ the shared test models
# Each is an ``artifact`` call; a fixture that needs one asks here, so that a model is built once.


def tiny_pipeline(seed: int = 0) -> Path:
    """``export.tiny.build_tiny_pipeline`` (the tiny random SD-inpainting pipeline, diffusers
    ``save_pretrained`` layout), the weights ``python -m export --tiny --seed <seed>`` exports."""
    return artifact(_tiny_pipeline, seed=seed)


def _tiny_pipeline(out: Path, seed: int) -> Path:
    from export.tiny import build_tiny_pipeline

    return build_tiny_pipeline(out / "tiny-pipeline", seed=seed)


def export(*argv: str, folder: str = "tiny-sd-inpaint") -> Path:
    """``python -m export *argv --out <entry>/<folder>`` (a model folder with manifest.json)."""
    return artifact(_export, argv=[str(a) for a in argv], folder=folder)


def _export(out: Path, argv: list[str], folder: str) -> Path:
    from export.__main__ import main

    rc = main([*argv, "--out", str(out / folder)])
    assert rc == 0, f"python -m export {' '.join(argv)}: exit {rc}; see the captured output"
    return out / folder


def tiny_vae(seed: int) -> Path:
    """``export.taesd.build_random_tiny_vae``: a random TAESD-shaped ``AutoencoderTiny``."""
    return artifact(_tiny_vae, seed=seed)


def _tiny_vae(out: Path, seed: int) -> Path:
    from export.taesd import build_random_tiny_vae

    return build_random_tiny_vae(out / "taesd", seed=seed)


def lora(pipeline: Path, folder: str, seed: int, text_encoder: bool = True) -> Path:
    """``export.lora.build_random_lora`` for ``pipeline``, in a folder named ``folder`` (the
    exporter picks a LoRA's automatic fast preset by its name)."""
    return artifact(
        _lora, pipeline=str(pipeline), folder=folder, seed=seed, text_encoder=text_encoder
    )


def _lora(out: Path, pipeline: str, folder: str, seed: int, text_encoder: bool) -> Path:
    from export.lora import build_random_lora

    return build_random_lora(Path(pipeline), out / folder, seed=seed, text_encoder=text_encoder)


def oneshot_sources(lama_seed: int, migan_seed: int) -> Path:
    """One-shot networks as users download them, with random weights: a LaMa-like TorchScript
    archive ``big-lama-tiny.pt`` (``export.lama_like``, like IOPaint's big-lama.pt) and a
    MI-GAN-like generator state dict ``migan-tiny.pt`` (``export.migan_like``)."""
    return artifact(_oneshot_sources, lama_seed=lama_seed, migan_seed=migan_seed)


def _oneshot_sources(out: Path, lama_seed: int, migan_seed: int) -> Path:
    import torch

    from export import lama_like, migan_like

    lama_like.save_torchscript(lama_like.build("tiny", seed=lama_seed), out / "big-lama-tiny.pt")
    migan = migan_like.build("tiny", seed=migan_seed)
    torch.save(migan.generator.state_dict(), out / "migan-tiny.pt")
    return out
