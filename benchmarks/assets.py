"""Models for the presets, built once into ``benchmarks/.cache`` (git-ignored) and reused.

- ``pipeline_dir``: the diffusers pipeline folder (random weights from ``export.tiny``'s presets,
  seed 0), the baseline's input. ``--pipeline DIR`` uses a local real pipeline instead.
- ``export_dir``: that same folder exported with ``python -m export --model <pipeline dir>`` (a
  subprocess: export memory is returned to the OS before measuring). The exporter is idempotent
  ("up to date"), so a second run costs a second.

Both sides therefore read the very same weights.

The fast recipe's model (presets with ``fast_model``), built once the same way:

- ``lora_dir``: a random LoRA on the pipeline's UNet attention projections
  (``export.lora.build_random_lora``, UNet-only like the real LCM-LoRA), in a folder whose name
  contains ``lcm``: the exporter's automatic fast preset is then LCM, 4 steps, no guidance;
- ``taesd_dir``: a random ``AutoencoderTiny`` (``export.taesd.build_random_tiny_vae``): TAESD's
  real architecture for the full model, the small test config for the tiny one;
- ``fused_pipeline_dir``: the pipeline with that LoRA fused by the exporter's own
  ``export.lora.fuse_loras`` (diffusers' load + fuse + unload), saved: the baselines' input,
  so that diffusers, optimum-intel and our export (``--lora``) compute with the same weights;
- ``tiny_encode_view``: our export as ``--tiny-vae-encode`` writes it, without exporting again:
  the same graphs (linked), a manifest whose fast preset encodes with TAESD too.
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
#: the random LoRA's fusing scale. build_random_lora draws A and B ~ N(0, 0.2^2) at rank 4, so
#: B @ A has entries of std ~0.08, 2-3x the random base projections' (~0.03): at 0.1 the fused
#: weights change by ~25% of their magnitude, enough to be a real change and mild enough to keep
#: activations in the range the base weights give. Speed does not depend on the values.
LORA_SCALE = 0.1
LORA_SEED = 1


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


def _run_python(code: str, args: list[str], what: str) -> None:
    """Run ``code`` in a fresh interpreter (torch and its GBs leave with it); AssetError on
    failure with the output's tail."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise AssetError(f"{what} failed:\n{tail}")


def _build_once(folder: Path, what: str, code: str, args: list[str], log=print) -> Path:
    """Build ``folder`` with ``code`` (which writes into ``sys.argv[1]``, a temporary sibling)
    unless a complete one exists; atomically renamed into place."""
    if (folder / _DONE).is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"building {what} into {folder} ...")
    t0 = time.perf_counter()
    _run_python(code, [str(tmp), *args], f"building {what}")
    (tmp / _DONE).write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log(f"  built in {time.perf_counter() - t0:.0f} s")
    return folder


def lora_dir(pipeline: Path, model: str, cache: Path = CACHE, log=print) -> Path:
    """A random LCM-style LoRA for ``pipeline`` (named ``...-lcm-lora``: the fast preset)."""
    code = (
        "import sys; from pathlib import Path; from export.lora import build_random_lora; "
        "build_random_lora(Path(sys.argv[2]), Path(sys.argv[1]), seed=int(sys.argv[3]), "
        "text_encoder=False)"
    )
    folder = cache / f"{model}-lcm-lora-seed{LORA_SEED}"
    return _build_once(
        folder, "a random LCM-style LoRA", code, [str(pipeline), str(LORA_SEED)], log
    )


def taesd_dir(model: str, cache: Path = CACHE, log=print) -> Path:
    """A random-weight TAESD (full architecture unless ``model`` is "tiny")."""
    full = model != "tiny"
    code = (
        "import sys; from pathlib import Path; from export.taesd import build_random_tiny_vae; "
        "build_random_tiny_vae(Path(sys.argv[1]), seed=0, full_size=sys.argv[2] == '1')"
    )
    folder = cache / f"{model}-taesd-seed0"
    return _build_once(folder, "a random TAESD", code, ["1" if full else "0"], log)


def fused_pipeline_dir(
    pipeline: Path,
    lora: Path,
    model: str,
    scale: float = LORA_SCALE,
    cache: Path = CACHE,
    log=print,
) -> Path:
    """``pipeline`` with ``lora`` fused at ``scale`` (the exporter's ``fuse_loras``), saved."""
    code = (
        "import sys; from pathlib import Path; import torch; "
        "from diffusers import StableDiffusionInpaintPipeline; "
        "from export.lora import LoraArg, fuse_loras; "
        "pipe = StableDiffusionInpaintPipeline.from_pretrained(sys.argv[2], "
        "torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False); "
        "fuse_loras(pipe, (LoraArg(sys.argv[3], float(sys.argv[4])),)); "
        "pipe.save_pretrained(sys.argv[1], safe_serialization=True)"
    )
    folder = cache / f"{model}-pipeline-lcm-fused"
    args = [str(pipeline), str(lora), repr(scale)]
    return _build_once(folder, "the LoRA-fused diffusers pipeline", code, args, log)


def fast_export_args(lora: Path, taesd: Path, scale: float = LORA_SCALE) -> list[str]:
    """The exporter arguments that make the fast recipe's model: the LoRA fused, TAESD beside."""
    return ["--lora", f"{lora}:{scale}", "--tiny-vae", str(taesd)]


def export_name(model: str, precision: str, target: str, fast: bool = False) -> str:
    return f"{model}{'-lcm-taesd' if fast else ''}-{precision}-{target}"


def export_dir(
    source: Path,
    name: str,
    precision: str,
    target: str,
    cache: Path = CACHE,
    threads: int | None = None,
    log=print,
    extra: list[str] | None = None,
) -> Path:
    """Export ``source`` (a diffusers folder) to ``cache/models/<name>``; a no-op when up to date.
    ``extra``: more exporter arguments (``fast_export_args``)."""
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
    cmd += list(extra or [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise AssetError(f"export of {name} failed (exit {proc.returncode}):\n{tail}")
    if "up to date" not in proc.stdout:
        log(f"  exported {name} ({precision}, target {target}) in {took:.0f} s")
    return out


def tiny_encode_view(folder: Path) -> Path:
    """``folder`` (an SD export with ``--tiny-vae`` and a fast preset) as ``python -m export ...
    --tiny-vae-encode`` writes it: ``<folder>-tiny-encode`` beside it, whose entries are links to
    ``folder``'s (the same graphs and caches) and whose ``manifest.json`` differs in
    ``fast_preset.tiny_vae_encode`` (and the export arguments and name that record it), the one
    manifest-only change the exporter makes for that option. Rewritten at every call, so it
    follows ``folder``'s re-exports."""
    from server.models.manifest import MANIFEST_FILE, Manifest

    manifest = Manifest.read(folder)
    if manifest.fast_preset is None or "taesd_encoder" not in manifest.components:
        raise AssetError(f"{folder}: no fast preset or no taesd_encoder (export with --tiny-vae)")
    view = folder.with_name(folder.name + "-tiny-encode")
    view.mkdir(exist_ok=True)
    for entry in folder.iterdir():
        link = view / entry.name
        if entry.name == MANIFEST_FILE or (link.is_symlink() and link.resolve() == entry.resolve()):
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(entry.resolve())
    fast = manifest.fast_preset.model_copy(update={"tiny_vae_encode": True})
    args = {**manifest.export_args, "tiny_vae_encode": True, "name": view.name}
    update = {"fast_preset": fast, "export_args": args, "name": view.name}
    manifest.model_copy(update=update).write(view)
    return view
