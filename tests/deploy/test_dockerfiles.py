"""The container images (deploy/docker): hadolint passes on every Dockerfile and fails on a bad
one, the shipped stage has the properties the deployment relies on, and the health check
script works against the real server. (No image is built here: there is no Docker engine.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.server_process import ServerProcess, free_port
from server.cli import settings
from server.config import without_server_env

from .kube import DEPLOY, DOCKERFILES, ROOT, final_stage, hadolint, instructions

HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
SERVED = [p for p in DOCKERFILES if p.name in ("Dockerfile.cpu", "Dockerfile.cuda")]


def test_the_images_are_all_here():
    assert {p.name for p in DOCKERFILES} == {
        "Dockerfile.cpu",
        "Dockerfile.cuda",
        "Dockerfile.models",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    done = hadolint(dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"  # DL3007: latest
        "RUN apt-get update && apt-get install curl\n"  # DL3008/DL3009/DL3015/DL3014
        "RUN cd /src && pip install flask\n"  # DL3003, DL3013, DL3042
        "CMD python -m server\n"  # DL3025: shell form
    )
    done = hadolint(bad)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3014", "DL3003", "DL3025"):
        assert rule in done.stdout


def _env(stage) -> dict[str, str]:
    """ENV instructions of a stage (``KEY=value`` pairs)."""
    out = {}
    for op, args in stage:
        if op == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                out[key] = value
    return out


@pytest.mark.parametrize("dockerfile", SERVED, ids=lambda p: p.name)
def test_the_shipped_stage(dockerfile):
    """Non-root, tini as PID 1 running the server, listening on every interface on the port
    it exposes, a health check, and only the runtime install (no torch extras)."""
    stage = final_stage(dockerfile)
    ops = [op for op, _ in stage]
    user = [args for op, args in stage if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    (entrypoint,) = [args for op, args in stage if op == "ENTRYPOINT"]
    assert entrypoint == '["tini", "--", "python", "-m", "server"]'
    env = _env(stage)
    assert env["INPAINT_HOST"] == "0.0.0.0"
    # the server's default port (the image leaves it to the server)
    port_default = next(s.default for s in settings() if s.env == "INPAINT_PORT")
    (exposed,) = [args for op, args in stage if op == "EXPOSE"]
    assert exposed == str(port_default)
    (check,) = [args for op, args in stage if op == "HEALTHCHECK"]
    assert "/usr/local/bin/inpaint-healthcheck" in check
    assert env["INPAINT_MODELS_DIR"] == "/models"
    installs = [
        args for op, args in instructions(dockerfile) if op == "RUN" and "pip install" in args
    ]
    extras = "gpu" if dockerfile.name.endswith("cuda") else None
    assert any(("pip install ." in a) if extras is None else ('".[gpu]"' in a) for a in installs)
    assert not any(x in a for a in installs for x in ("[export", "[dev", "[bench", "torch"))


def test_the_context_holds_what_the_images_copy():
    """Every path the images COPY from the context exists and is not in .dockerignore."""
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for dockerfile in SERVED:
        for op, args in instructions(dockerfile):
            if op == "COPY" and "--from=" not in args:
                *sources, _ = [a for a in args.split() if not a.startswith("--")]
                for source in sources:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: {source}"
                    assert source.split("/")[0] not in ignored, f"{dockerfile.name}: {source}"


def _healthcheck(port: int, **env) -> subprocess.CompletedProcess:
    environ = {**without_server_env(dict(os.environ)), "INPAINT_PORT": str(port), **env}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "3"],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_script_against_the_real_server(tmp_path):
    """Exit 0 while the server answers /health (whatever Host names it accepts for the API);
    1, with the reason, when nothing listens."""
    empty = tmp_path / "models"
    empty.mkdir()
    args = ["--no-auth", "--models-dir", str(empty), "--allowed-host", "images.example.com"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        ok = _healthcheck(server.port, INPAINT_HOST="localhost")
        assert ok.returncode == 0, ok.stderr
    gone = _healthcheck(free_port())
    assert gone.returncode == 1
    assert "unhealthy" in gone.stderr
