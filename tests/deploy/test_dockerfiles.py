"""The container images (deploy/docker): hadolint passes on every Dockerfile and fails on a bad
one, the shipped stage has the properties the deployment relies on, every install takes the
lock's versions, the CPU image builds the AMX attention kernel with a compiler only its build
stage has, and the health check script works against the real server. (No image is built
here: there is no Docker engine.)"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from benchmarks import constraints
from benchmarks.server_process import ServerProcess, free_port
from server.cli import settings
from server.config import without_server_env

from .kube import DEPLOY, DOCKERFILES, ROOT, final_stage, hadolint, instructions

HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
SERVED = [p for p in DOCKERFILES if p.name in ("Dockerfile.cpu", "Dockerfile.cuda")]
LOCK = "deploy/constraints.txt"
#: the project itself, as the images install it (the CPU runtime set; the CUDA one with [gpu])
PROJECT = {"Dockerfile.cpu": ".", "Dockerfile.cuda": ".[gpu]"}
#: what the Makefile's install stamp and the CPU image's build stage both run
KERNEL_BUILD = "from server.models.providers.fused_attention import main; main()"


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
    targets = [t for words in _pip_installs(dockerfile) for t in _targets(words)]
    assert PROJECT[dockerfile.name] in targets
    assert not any(x in t for t in targets for x in ("[export", "[dev", "[bench", "torch"))


def _stages(dockerfile) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (from its FROM), in order."""
    stages: list[list[tuple[str, str]]] = []
    for op, args in instructions(dockerfile):
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, args))
    return stages


def _pip_installs(dockerfile) -> list[list[str]]:
    """Every ``pip install`` command of the Dockerfile's RUNs (split on ``&&``), as words after
    ``install``."""
    out = []
    for op, args in instructions(dockerfile):
        if op == "RUN":
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    out.append(words[2:])
    return out


def _targets(words: list[str]) -> list[str]:
    """What a pip install installs: its words that are neither options nor option values."""
    valued = {"-c", "--constraint", "--build-constraint", "-r", "--requirement"}
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in valued:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def _option(words: list[str], *names: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in names]


@pytest.mark.parametrize("dockerfile", SERVED, ids=lambda p: p.name)
def test_every_install_takes_the_locks_versions(dockerfile):
    """The lock is copied into the build stage before the first install; that install brings
    pip to the lock's release, every later one takes -c deploy/constraints.txt, the project's
    also --build-constraint (pip >= 26.2 applies only that to setuptools' isolated build);
    no version is written in the Dockerfile (the lock is the one place: onnxruntime-gpu's
    release included, which the lock pins for the image's Python 3.12)."""
    build = _stages(dockerfile)[0]
    copies = [i for i, (op, args) in enumerate(build) if op == "COPY" and LOCK in args.split()]
    first_install = next(i for i, (op, args) in enumerate(build) if "pip install" in args)
    assert copies and copies[0] < first_install
    installs = _pip_installs(dockerfile)
    assert _targets(installs[0]) == ["pip"]
    for words in installs:
        assert _option(words, "-c", "--constraint") == [LOCK], words
        assert not any("==" in t for t in _targets(words)), words
    (project,) = [w for w in installs if PROJECT[dockerfile.name] in _targets(w)]
    assert _option(project, "--build-constraint") == [LOCK]
    assert not any(op == "ARG" and "VERSION" in args for op, args in instructions(dockerfile))
    py312 = constraints.pins_for(constraints.read(), constraints.environment("3.12"))
    for words in installs:
        for target in _targets(words):
            if not target.startswith("."):
                assert target in py312, f"{dockerfile.name}: {target} is not in the lock"


def test_the_cpu_image_builds_the_attention_kernel_in_its_build_stage():
    """g++ is installed in the build stage and nowhere in the shipped one; the build stage runs
    the same kernel build as `make install`, after the install, against the installed package
    (python -P: not the sources in the working directory), so the library lands in /opt/venv,
    which the shipped stage copies."""
    dockerfile = DEPLOY / "docker" / "Dockerfile.cpu"
    build, *_, final = _stages(dockerfile)
    runs = [args for op, args in build if op == "RUN"]
    assert any("apt-get install" in r and "g++" in r.split() for r in runs)
    assert not any("g++" in args or "gcc" in args for _, args in final)
    (kernel,) = [i for i, r in enumerate(runs) if KERNEL_BUILD in r]
    assert shlex.split(runs[kernel])[:3] == ["python", "-P", "-c"]
    project = next(i for i, r in enumerate(runs) if "pip install" in r and " ." in r)
    assert project < kernel
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    assert f"-c '{KERNEL_BUILD}'" in (ROOT / "Makefile").read_text()


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
