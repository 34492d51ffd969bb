"""The lock (deploy/constraints.txt, `make lock`): it covers every requirement of
pyproject.toml's sets and deploy/constraints.in at a version they allow (a failure here means
the lock is stale: run `make lock`), the Makefile's `make lock` resolves every extra, and every
install the Makefile and CI make goes through it."""

from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks import constraints

from .kube import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])


def _requirements() -> dict[str, list[Requirement]]:
    """Every requirement the lock must cover, by where it is written."""
    sets = {"dependencies": PYPROJECT["project"]["dependencies"]}
    sets.update(PYPROJECT["project"]["optional-dependencies"])
    out = {k: [Requirement(r) for r in v] for k, v in sets.items()}
    lines = (ROOT / "deploy" / "constraints.in").read_text().splitlines()
    inputs = [line.split("#")[0].strip() for line in lines]
    out["deploy/constraints.in"] = [Requirement(r) for r in inputs if r]
    return out


def test_the_lock_pins_every_requirement_at_a_version_it_allows():
    pins = constraints.read()
    versions: dict[str, set[str]] = {}
    for pin in pins:
        versions.setdefault(pin.name, set()).add(pin.version)
    stale = []
    for where, reqs in _requirements().items():
        for req in reqs:
            name = canonicalize_name(req.name)
            if name == PROJECT:  # the dev extra's inpaint-server[export]
                continue
            if not any(req.specifier.contains(v, prereleases=True) for v in versions.get(name, ())):
                stale.append(f"{where}: {req} (lock: {sorted(versions.get(name, ())) or 'none'})")
    assert not stale, "deploy/constraints.txt is stale, run `make lock`:\n" + "\n".join(stale)


def test_the_lock_has_one_pin_per_environment():
    """For the Pythons the project supports, on the platforms it is served on, at most one pin
    of each package applies (pins_for raises otherwise)."""
    pins = constraints.read()
    for python in ("3.10", "3.11", "3.12", "3.13"):
        for platform, machine in (("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64")):
            found = constraints.pins_for(pins, constraints.environment(python, platform, machine))
            assert "onnxruntime" in found and "torch" in found


def test_make_lock_resolves_every_extra_and_the_tools():
    recipe = MAKEFILE[MAKEFILE.index("\nlock:") :].split("\n\n")[0]
    assert "uv pip compile pyproject.toml deploy/constraints.in" in recipe
    assert "--universal" in recipe and "--config-file deploy/uv.toml" in recipe
    extras = set(re.findall(r"--extra (\S+)", recipe))
    assert extras == set(PYPROJECT["project"]["optional-dependencies"])
    assert "find-links" not in recipe  # the lock must work on machines without local wheels
    header = (ROOT / "deploy" / "constraints.txt").read_text().splitlines()[:2]
    assert header[1].strip("# ") == "make lock"


def test_every_install_of_the_makefile_and_ci_goes_through_the_lock():
    """`pip install` is written once in the Makefile, with -c deploy/constraints.txt; every
    recipe installs through it; CI only calls make."""
    code = [line for line in MAKEFILE.splitlines() if not line.startswith("#")]
    lines = [line for line in code if "pip install" in line]
    assert lines == ["PIP_LOCKED := $(PY) -m pip install -q -c $(LOCK)"]
    assert "LOCK := deploy/constraints.txt" in MAKEFILE
    assert "PIP_INSTALL := $(PIP_LOCKED) --build-constraint $(LOCK)" in MAKEFILE
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make lint", "make test"]
