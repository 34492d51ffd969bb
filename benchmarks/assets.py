"""Models for the presets, built once into ``benchmarks/.cache`` (git-ignored) and reused.

- ``pipeline_dir``: the diffusers pipeline folder (random weights from ``export.tiny``'s presets,
  seed 0), the baseline's input. ``--pipeline DIR`` uses a local real pipeline instead.
- ``export_dir``: that same folder exported with ``python -m export --model <pipeline dir>`` (a
  subprocess: export memory is returned to the OS before measuring). The exporter is idempotent
  ("up to date"), so a second run costs a second.

Both sides therefore read the very same weights.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
_DONE = ".complete"
MODELS = ("tiny", "sd15-random")  # export.tiny.PRESETS


class AssetError(RuntimeError):
    pass


def pipeline_dir(model: str, seed: int = 0, cache: Path = CACHE, log=print) -> Path:
    """The random-weight diffusers pipeline ``model`` ("tiny" | "sd15-random"), built if missing."""
    folder = cache / f"{model}-pipeline-seed{seed}"
    if (folder / _DONE).is_file():
        return folder
    if model not in MODELS:
        raise AssetError(f"unknown model preset {model!r}; known: {', '.join(MODELS)}")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"building the {model} random-weight pipeline (seed {seed}) into {folder} ...")
    t0 = time.perf_counter()
    # in a subprocess: torch and GBs of random weights leave with it, before any measurement
    code = (
        "import sys; from pathlib import Path; from export.tiny import PRESETS; "
        "PRESETS[sys.argv[1]](Path(sys.argv[2]), seed=int(sys.argv[3]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, model, str(tmp), str(seed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise AssetError(f"building the {model} pipeline failed:\n{tail}")
    (tmp / _DONE).write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log(f"  built in {time.perf_counter() - t0:.0f} s")
    return folder


def export_name(model: str, precision: str, target: str) -> str:
    return f"{model}-{precision}-{target}"


def export_dir(
    source: Path,
    name: str,
    precision: str,
    target: str,
    cache: Path = CACHE,
    threads: int | None = None,
    log=print,
) -> Path:
    """Export ``source`` (a diffusers folder) to ``cache/models/<name>``; a no-op when up to date."""
    out = cache / "models" / name
    cmd = [
        sys.executable,
        "-m",
        "export",
        "--model",
        str(source),
        "--name",
        name,
        "--precision",
        precision,
        "--target",
        target,
        "--out",
        str(out),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise AssetError(f"export of {name} failed (exit {proc.returncode}):\n{tail}")
    if "up to date" not in proc.stdout:
        log(f"  exported {name} ({precision}, target {target}) in {took:.0f} s")
    return out
