"""OpenVINO's own diffusion pipeline (optimum-intel's ``OVStableDiffusionInpaintPipeline``, what
OpenVINO Model Server runs) as a baseline, in its OWN venv under ``benchmarks/.cache``.

Why a separate venv: optimum-intel pins older transformers / huggingface-hub than this project
uses (optimum-intel 2.2.0: transformers < 5.6, huggingface-hub < 1.22, hence diffusers 0.39),
so it cannot share ``.venv``. What goes in (``install_commands``):

1. ``python -m venv benchmarks/.cache/optimum-venv`` (the interpreter running the benchmark);
2. ``pip install torch==2.13.0 optimum-intel[openvino,diffusers]==<OPTIMUM_INTEL> openvino==<ours>``
   (torch pinned: any other spec pulls a multi-GB CUDA build; openvino pinned to the version
   our server runs, so both sides use the same runtime);
3. ``pip uninstall -y torchvision``: optimum-intel requires it, and PyPI's torchvision wheel is
   built for CUDA torch ("operator torchvision::nms does not exist" on import with the CPU
   torch); nothing in the SD pipeline needs it, and transformers falls back without it.

The venv is made once (a marker file records the requirements; a change rebuilds it) and is
excluded from the time budget like the exports. ``export_command`` converts the benchmark's
(LoRA-fused) diffusers folder with optimum's own exporter (and the TAESD decoder with
``openvino.convert_model``), ``benchmarks/optimum_pipe.py`` does the work inside the venv.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .assets import CACHE, ROOT, AssetError

OPTIMUM_INTEL = "2.2.0"
TORCH = "torch==2.13.0"
VENV = CACHE / "optimum-venv"
_MARKER = ".benchmark-venv.json"


def requirements(openvino_version: str | None) -> list[str]:
    reqs = [TORCH, f"optimum-intel[openvino,diffusers]=={OPTIMUM_INTEL}"]
    if openvino_version:
        reqs.append(f"openvino=={openvino_version}")
    return reqs


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def install_commands(
    venv: Path = VENV, python: str = sys.executable, openvino_version: str | None = None
) -> list[list[str]]:
    """The commands that make the venv (see the module docstring), in order."""
    py = str(venv_python(venv))
    return [
        [python, "-m", "venv", str(venv)],
        [py, "-m", "pip", "install", "-q", *requirements(openvino_version)],
        [py, "-m", "pip", "uninstall", "-q", "-y", "torchvision"],
    ]


def our_openvino_version() -> str | None:
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The venv's python, making the venv first when missing or made for other requirements."""
    want = {"requirements": requirements(our_openvino_version()), "uninstalled": ["torchvision"]}
    marker = venv / _MARKER
    if marker.is_file() and venv_python(venv).is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return venv_python(venv)
        except ValueError:
            pass
    shutil.rmtree(venv, ignore_errors=True)
    log(f"creating the optimum-intel venv in {venv} (once; ~1-3 min, ~1.6 GB) ...")
    t0 = time.perf_counter()
    for cmd in install_commands(venv, sys.executable, our_openvino_version()):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise AssetError(f"optimum venv step failed: {' '.join(cmd)}\n{tail}")
    marker.write_text(json.dumps(want))
    log(f"  optimum-intel venv ready in {time.perf_counter() - t0:.0f} s")
    return venv_python(venv)


def export_command(
    python: Path, pipeline: Path, out: Path, tiny_vae: Path | None = None
) -> list[str]:
    cmd = [str(python), "-m", "benchmarks.optimum_pipe", "export", "--pipeline", str(pipeline)]
    cmd += ["--out", str(out)]
    if tiny_vae is not None:
        cmd += ["--tiny-vae", str(tiny_vae)]
    return cmd


def export_dir(
    python: Path,
    pipeline: Path,
    name: str,
    tiny_vae: Path | None = None,
    cache: Path = CACHE,
    log=print,
) -> Path:
    """``pipeline`` exported by optimum-intel into ``cache/optimum/<name>`` (once: a marker
    records the source folder and TAESD; a different source exports again)."""
    out = cache / "optimum" / name
    want = {"pipeline": str(pipeline), "tiny_vae": str(tiny_vae) if tiny_vae else None}
    marker = out / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"optimum-intel export of {pipeline.name} into {out} (once) ...")
    t0 = time.perf_counter()
    proc = subprocess.run(
        export_command(python, pipeline, tmp, tiny_vae), cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise AssetError(f"optimum-intel export failed (exit {proc.returncode}):\n{tail}")
    marker_tmp = tmp / ".complete"
    marker_tmp.write_text(json.dumps(want))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"  exported in {time.perf_counter() - t0:.0f} s")
    return out
