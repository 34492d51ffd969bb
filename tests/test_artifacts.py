"""The test-model cache (tests/artifacts.py): what its key covers, so that a stale model never
hides a change in export/; built once and reused; a race won by another process; writes into
an entry caught; stale entries pruned."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import artifacts

CALLS: list[dict] = []


def _builder(out: Path, seed: int) -> Path:
    CALLS.append({"seed": seed})
    (out / "model").mkdir()
    (out / "model" / "weights.bin").write_bytes(bytes([seed]) * 64)
    return out / "model"


def _racing(out: Path) -> Path:
    """The first call lets a second build of the same key finish and rename its entry into
    place before it does, as another pytest process would."""
    CALLS.append({})
    me = b"first" if len(CALLS) == 1 else b"second"
    if me == b"first":
        artifacts.artifact(_racing)
    (out / "weights.bin").write_bytes(me)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of this test's own, and a record of use of its own (the run's check of the
    shared models must not see the entries these tests write into on purpose)."""
    monkeypatch.setattr(artifacts, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(artifacts, "_used", {})
    monkeypatch.setattr(artifacts, "_failed", {})
    CALLS.clear()
    return tmp_path / "cache"


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A checkout with an ``export`` package that imports some ``server`` modules and not
    others; ``artifacts.ROOT`` points at it for the test."""
    files = {
        "export/__init__.py": "",
        "export/a.py": "from server.models.manifest import M\nfrom .b import x\n",
        "export/b.py": "def f():\n    from server import util  # lazily\n",
        "export/data.json": "{}",
        "server/__init__.py": "",
        "server/models/__init__.py": "",
        "server/models/manifest.py": "from ..base import Z\n",
        "server/base.py": "Z = 1\n",
        "server/util.py": "",
        "server/unrelated.py": "",
    }
    root = tmp_path / "checkout"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(artifacts, "ROOT", root)
    artifacts.inputs_digest.cache_clear()
    yield root
    artifacts.inputs_digest.cache_clear()  # the real checkout's again


def test_the_real_sources_are_export_and_the_server_modules_it_imports():
    names = set(artifacts.sources(artifacts.ROOT))
    assert {"export/__main__.py", "export/exporter.py", "export/tiny.py"} <= names
    assert {"server/models/manifest.py", "tests/artifacts.py"} <= names
    assert "server/http/app.py" not in names and "server/models/sd_inpaint.py" not in names
    versions = artifacts.versions()
    assert {"torch", "diffusers", "transformers", "onnx", "onnxruntime", "peft"} <= set(versions)


def test_the_key_follows_every_source_byte_and_argument(fake_root):
    assert set(artifacts.sources(fake_root)) == {
        "export/__init__.py",
        "export/a.py",
        "export/b.py",
        "export/data.json",
        "server/__init__.py",
        "server/models/__init__.py",
        "server/models/manifest.py",
        "server/base.py",  # imported by manifest.py (relative)
        "server/util.py",  # imported in a function
        "artifacts.py",  # the cache's own rules
    }

    def key(**args) -> str:
        artifacts.inputs_digest.cache_clear()
        return artifacts.key(_builder, args)

    before = key(seed=0)
    assert key(seed=0) == before and key(seed=1) != before
    for rel in ("export/b.py", "export/data.json", "server/base.py", "server/util.py"):
        path = fake_root / rel
        text = path.read_bytes()
        path.write_bytes(text + b" ")  # one byte more
        assert key(seed=0) != before, rel
        path.write_bytes(text)
        assert key(seed=0) == before
    (fake_root / "server" / "unrelated.py").write_text("CHANGED = True\n")
    assert key(seed=0) == before  # not imported by the exporter


def test_built_once_then_reused_read_only_by_convention(cache):
    first = artifacts.artifact(_builder, seed=3)
    assert first.parent.parent == cache and first.name == "model"
    assert (first / "weights.bin").read_bytes() == bytes([3]) * 64
    again = artifacts.artifact(_builder, seed=3)
    other = artifacts.artifact(_builder, seed=4)
    assert again == first and other != first and CALLS == [{"seed": 3}, {"seed": 4}]
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")]
    assert artifacts.changed() == {}

    (first / "weights.bin").write_bytes(b"tampered")
    (first / "ov_cache").mkdir()
    assert artifacts.changed() == {
        first.parent: ["model/ov_cache added", "model/weights.bin changed"]
    }
    with pytest.raises(AssertionError, match="changed during this run.*copy it first"):
        artifacts.artifact(_builder, seed=3)


def test_an_entry_changed_by_an_earlier_run_is_built_again(cache, monkeypatch):
    first = artifacts.artifact(_builder, seed=5)
    (first / "weights.bin").write_bytes(b"tampered")
    monkeypatch.setattr(artifacts, "_used", {})  # a later run
    with pytest.warns(UserWarning, match="weights.bin changed.*rebuilt"):
        again = artifacts.artifact(_builder, seed=5)
    assert again == first and (again / "weights.bin").read_bytes() == bytes([5]) * 64
    assert len(CALLS) == 2


def test_a_race_lost_to_another_process_uses_its_entry(cache):
    got = artifacts.artifact(_racing)
    assert len(CALLS) == 2 and (got / "weights.bin").read_bytes() == b"second"  # the winner's
    assert [p.name for p in cache.iterdir()] == [got.name]  # no build folder left


def test_building_prunes_other_versions_and_abandoned_builds_unused_for_an_hour(cache, monkeypatch):
    old = artifacts.artifact(_builder, seed=6).parent
    recent = artifacts.artifact(_builder, seed=8).parent  # a run started before the edit uses it
    abandoned = cache / ".build-x-1-dead"
    running = cache / ".build-y-2-live"  # another process's, still building
    abandoned.mkdir()
    running.mkdir()
    hours_ago = time.time() - 2 * artifacts.STALE_S
    for path in (old, abandoned):
        os.utime(path, (hours_ago, hours_ago))
    monkeypatch.setattr(artifacts, "inputs_digest", lambda: "other sources")
    new = artifacts.artifact(_builder, seed=7).parent
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in (new, recent, running))


def test_a_failed_build_is_not_tried_again_in_the_process(cache):
    with pytest.raises(ZeroDivisionError):
        artifacts.artifact(_failing, n=1)
    with pytest.raises(ZeroDivisionError):
        artifacts.artifact(_failing, n=1)
    assert len(CALLS) == 1 and list(cache.iterdir()) == []  # nothing left behind


def _failing(out: Path, n: int) -> Path:
    CALLS.append({"n": n})
    (out / "partial").write_text("half")
    return out / str(n / 0)
