"""Carry what ``make gpu-check`` needs to a lent GPU machine that reaches no package registry,
and install it there. Three sub-commands (docs/gpu.md has the whole sequence):

``prepare`` (here, once): the tiny exports (fp32 for the CPU reference, fp16 ``--target cuda``
for the CUDA EP), the ``onnxruntime-gpu`` wheel (cp312, CUDA 13) and the pure-Python/cp312
wheels the full export, the server and the diffusers baseline need beyond what the device has
(torch, onnx, onnxruntime, numpy), all at the versions deploy/constraints.txt pins for CPython
3.12 on Linux x86-64 (``carried``), packed into one ``kit.tar`` and split into
``parts/NN/part`` of at most ``--part-mb`` MiB: one carried ignored folder per device call (a
call carries at most 64 MiB, the repo included).

``install`` (device, last call): join the parts, unpack, ``pip install --no-deps --target``
every carried wheel whose distribution the device's Python does not have (onnxruntime-gpu
always: the device has only the CPU build).

``run`` (device): ``install`` when ``--parts`` is given, then ``python -m benchmarks.gpu_check``
with ``PYTHONPATH`` (the installed wheels first, so onnxruntime-gpu shadows the CPU build) and
``LD_LIBRARY_PATH`` (the ``nvidia-*`` CUDA 13 / cuDNN libraries torch ships) set. ``make
gpu-check`` calls this.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".cache" / "gpu-carry"
#: what the lent GPU machine's Python (CPython 3.12, Linux x86-64) already has: neither these
#: nor what they require are carried (``install`` would skip them anyway: it installs only
#: what is missing)
DEVICE_HAS = ("torch", "onnx", "onnxruntime", "numpy")
#: what the full export, the server and the diffusers baseline (gpu_check's ``baseline``
#: stage: diffusers' StableDiffusionInpaintPipeline / AutoencoderTiny on torch) import beyond
#: that; they and their requirements are carried (``carried``)
ROOTS = (
    "onnxruntime-gpu",  # the CUDA execution provider: the lock's release is built for CUDA 13
    "diffusers", "transformers", "onnxscript", "pydantic", "tokenizers", "huggingface-hub",
    "open-clip-torch",  # its CLIP BPE vocabulary file only (export.tiny)
)  # fmt: skip
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")


def split(src: Path, folder: Path, part_bytes: int) -> list[Path]:
    """``src`` -> ``folder/00/part``, ``folder/01/part``...: one folder per device call."""
    parts = []
    with open(src, "rb") as f:
        while chunk := f.read(part_bytes):
            path = folder / f"{len(parts):02d}" / "part"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(chunk)
            parts.append(path)
    return parts


def join(parts_dir: Path, dst: Path) -> Path:
    """Concatenate every ``part*`` file under ``parts_dir`` (sorted by relative path)."""
    parts = sorted(p for p in Path(parts_dir).rglob("part*") if p.is_file())
    if not parts:
        raise FileNotFoundError(f"no part files under {parts_dir}")
    with open(dst, "wb") as out:
        for p in parts:
            out.write(p.read_bytes())
    return dst


def carried(lock: Path | None = None) -> dict[str, str]:
    """``name -> version`` of the wheels ``prepare`` packs: the requirement closure of
    ``ROOTS`` in deploy/constraints.txt minus that of ``DEVICE_HAS``, at the lock's pins for
    the device (CPython 3.12 on Linux x86-64)."""
    from . import constraints

    pins = constraints.read(lock or constraints.LOCK)
    env = constraints.environment(DEVICE_PYTHON, "linux", "x86_64")
    versions = constraints.pins_for(pins, env)
    need = constraints.closure(pins, ROOTS, env) - constraints.closure(pins, DEVICE_HAS, env)
    return {name: versions[name] for name in sorted(need)}


def missing_distributions(dists) -> list[str]:
    """The distributions of ``dists`` this Python does not have installed."""
    return [d for d in dists if not _installed(d)]


def library_dirs(site_dirs: list[Path]) -> list[str]:
    """Folders of CUDA/cuDNN shared libraries under ``site_dirs`` (``nvidia/*/lib``,
    ``torch/lib``), for LD_LIBRARY_PATH: ORT's CUDA EP loads them by name."""
    found: list[str] = []
    for site in site_dirs:
        for lib in sorted(Path(site).glob("nvidia/*/lib")) + [Path(site) / "torch" / "lib"]:
            if lib.is_dir() and str(lib) not in found:
                found.append(str(lib))
    return found


def gpu_env(target: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for gpu_check: ``target`` (the carried wheels) and the repo first on
    PYTHONPATH, the nvidia library folders on LD_LIBRARY_PATH."""
    import site

    env = dict(os.environ if base is None else base)
    sites = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    py = [str(target), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(":") if p]
    env["PYTHONPATH"] = ":".join(py)
    libs = library_dirs([Path(target), *sites])
    env["LD_LIBRARY_PATH"] = ":".join(
        libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    )
    return env


# ---------------------------------------------------------------- sub-commands


def prepare(args) -> int:
    kit = CARRY / "kit"
    (kit / "wheels").mkdir(parents=True, exist_ok=True)
    py = sys.executable
    exports = {"tiny-fp32": ("fp32", "cpu"), "tiny-fp16-cuda": ("fp16", "cuda")}
    for name, (precision, target) in exports.items():
        out = str(CARRY / "models" / name)
        cmd = [py, "-m", "export", "--tiny", "--precision", precision, "--target", target]
        subprocess.run([*cmd, "--out", out], cwd=ROOT, check=True)
    pins = [f"{name}=={version}" for name, version in carried().items()]
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [py, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
         DEVICE_PYTHON, *plat, "--dest", str(kit / "wheels"), *pins],
        check=True,
    )  # fmt: skip
    tar_path = CARRY / "kit.tar"
    with tarfile.open(tar_path, "w") as tar:  # wheels and ONNX do not compress: plain tar
        tar.add(kit / "wheels", arcname="wheels")
        tar.add(CARRY / "models", arcname="models")
    parts = split(tar_path, CARRY / "parts", int(args.part_mb * 1024 * 1024))
    tar_path.unlink()
    print(f"{len(parts)} parts under {CARRY / 'parts'}; carry one per device call:")
    for p in parts:
        print(f"  {p.parent.relative_to(ROOT)}")
    return 0


def wheel_distribution(wheel: Path) -> str:
    """The distribution a wheel file installs (``onnxruntime_gpu-1.31.1-cp312-...whl`` ->
    ``onnxruntime-gpu``)."""
    return wheel.name.split("-")[0].replace("_", "-").lower()


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def install(parts: Path, target: Path) -> Path:
    """Join + unpack the kit next to ``target`` and install into ``target``; returns the kit."""
    work = Path(target).parent / "gpu-kit"
    work.mkdir(parents=True, exist_ok=True)
    tar_path = join(parts, work / "kit.tar")
    with tarfile.open(tar_path) as tar:
        tar.extractall(work, filter="data")
    tar_path.unlink()
    wheels = sorted((work / "wheels").glob("*.whl"))
    chosen = [w for w in wheels if missing_distributions([wheel_distribution(w)])]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
         str(target), *map(str, chosen)],
        check=True,
    )  # fmt: skip
    return work


def run(args, rest: list[str]) -> int:
    target = Path(args.target)
    if args.parts:
        kit = install(Path(args.parts), target)
        models = kit / "models"
        rest = [
            "--tiny-fp32", str(models / "tiny-fp32"),
            "--tiny-fp16", str(models / "tiny-fp16-cuda"), *rest,
        ]  # fmt: skip
    env = gpu_env(target)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", *rest]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_carry", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="here: exports + wheels -> parts to carry")
    pr.add_argument("--part-mb", type=float, default=50.0)
    for name in ("install", "run"):
        s = sub.add_parser(name, help=f"device: {name}")
        s.add_argument("--parts", default=None, help="folder holding the carried parts")
        s.add_argument("--target", default="/tmp/gpu-site", help="pip --target folder")
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        return prepare(args)
    if args.cmd == "install":
        if not args.parts:
            p.error("install needs --parts")
        install(Path(args.parts), Path(args.target))
        return 0
    return run(args, rest)


if __name__ == "__main__":
    raise SystemExit(main())
