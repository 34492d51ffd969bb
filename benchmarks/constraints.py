"""``deploy/constraints.txt``, the lock ``make lock`` writes (``uv pip compile --universal``),
read back: the pin that applies to a given Python and platform, and the requirement graph its
``# via`` comments record (who requires what), so that a set of packages can be derived from
it instead of being listed by hand (``gpu_carry``'s carried wheels).

The graph is the union over every Python and platform the lock covers: a requirement with its
own environment marker (``colorama; sys_platform == 'win32'``) is taken as unconditional. The
pins' markers are exact, so ``closure`` keeps only packages pinned for the environment asked
about; what it can add is a package that some other requirement path needs there (more than
the least set, never less).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "deploy" / "constraints.txt"


@dataclass(frozen=True)
class Pin:
    name: str  #: canonical name
    version: str
    marker: Marker | None  #: where this pin applies (None: everywhere)
    via: tuple[str, ...]  #: canonical names of the locked packages that require it


def read(path: Path = LOCK) -> list[Pin]:
    """Every pin of the lock, in file order, with its marker and its ``# via`` packages (the
    lock's inputs, ``-r file`` and ``project (pyproject.toml)``, are not packages: left out)."""
    pins: list[Pin] = []
    current: Requirement | None = None
    via: list[str] = []

    def flush() -> None:
        if current is not None:
            (spec,) = current.specifier
            pins.append(
                Pin(canonicalize_name(current.name), spec.version, current.marker, tuple(via))
            )

    for line in Path(path).read_text().splitlines():
        text = line.strip()
        if not text:
            continue
        if not line[0].isspace() and not text.startswith("#"):
            flush()
            current, via = Requirement(text), []
            continue
        if current is None or not text.startswith("#"):
            continue  # the header
        entry = text.lstrip("#").strip()  # "via", "via NAME" or, below "via", "NAME"
        if entry.startswith("via ") or entry == "via":
            entry = entry[3:].strip()
        if entry and " " not in entry and not entry.startswith("-"):
            via.append(canonicalize_name(entry))
    flush()
    return pins


def environment(python: str, sys_platform: str = "linux", machine: str = "x86_64") -> dict:
    """PEP 508 marker variables of CPython ``python`` (``"3.12"``) on a platform."""
    system = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}[sys_platform]
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "platform_python_implementation": "CPython",
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "os_name": "nt" if sys_platform == "win32" else "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def pins_for(pins: list[Pin], env: dict) -> dict[str, str]:
    """``name -> version`` of the pins that apply in ``env`` (one per name)."""
    out: dict[str, str] = {}
    for pin in pins:
        if pin.marker is None or pin.marker.evaluate(env):
            if out.setdefault(pin.name, pin.version) != pin.version:
                raise ValueError(f"{pin.name}: two pins apply ({out[pin.name]}, {pin.version})")
    return out


def closure(pins: list[Pin], roots, env: dict) -> set[str]:
    """``roots`` and everything they require, directly or not, among the packages pinned for
    ``env`` (canonical names; a root not pinned there is left out)."""
    present = set(pins_for(pins, env))
    children: dict[str, set[str]] = {}
    for pin in pins:
        for parent in pin.via:
            children.setdefault(parent, set()).add(pin.name)
    seen: set[str] = set()
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in present:
            continue
        seen.add(name)
        todo.extend(children.get(name, ()))
    return seen
