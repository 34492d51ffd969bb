"""``make gpu-check``: one command that checks the GPU paths on a lent GPU machine and writes
``gpu-check.json`` (plus the log) under ``--out`` (default ``$OUT``, else benchmarks/results).

Stages, each recorded as it ends (a run cut short still leaves what it measured), each with
``status`` ok | failed | skipped and a ``note`` saying why when skipped:

1. ``environment``: GPU name (nvidia-smi), Python, onnxruntime version and providers, torch
   and CUDA, TensorRT presence, the CPU flags.
2. ``parity``: the tiny export, fp16 (``--target cuda``) on the CUDA EP vs fp32 on the CPU EP:
   per component on the fixed sample of ``server.models.providers.accuracy`` (limit: the
   export's fp16 rtol, 2e-2 relative to the output's max) and a whole 64x64 inpaint, 8 steps
   (limits: max 0.1, mean 1e-2 on [0, 1] pixels, the pipeline tests' fp16 bounds).
3. ``tensorrt``: the TensorRT EP on the tiny fp16 export (engine build time, parity with CPU
   fp32); skipped where onnxruntime has no TensorRT EP (TensorRT's libraries are not carried).
4. ``export_full``: the full SD 1.5 architecture, random weights, fp16 ``--target cuda``,
   exported here (needs diffusers/transformers/onnxscript); its manifest's verification (the
   fused fp16 graph on the CUDA EP vs PyTorch fp32, per component) is the full-size parity.
5. ``bench``: the short ``gpu`` preset on that export: 512x512, 20 and 50 steps with the
   default recipe (guidance 7.5), and the fast recipe (4 steps, LCM, no guidance) where the
   server has the LCM scheduler; warm median latency, per step and per UNet call.

``--cpu`` runs the same code with the CPU EP in place of CUDA (parity then compares two
CPU-runnable exports; no full export): the CPU-visible check of this script. ``--dry-run``
writes the plan without loading anything. A ``--budget-s`` (default 450 s: 8 minutes with a
margin) skips what would not fit, with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".cache" / "gpu-carry"
STAGES = ("environment", "parity", "tensorrt", "export_full", "bench")
#: component limit = the exporter's fp16 rtol (export/verify.py RTOL["fp16"]): relative to max
FP16_COMPONENT_RTOL = 2e-2
#: whole-image fp16-vs-fp32 limits on [0, 1] pixels (tests/models/test_sd_pipeline.py)
FP16_IMAGE_MAX, FP16_IMAGE_MEAN = 0.1, 1e-2
#: rough seconds each heavy stage needs on an H100/H200 machine, to skip what cannot fit
ESTIMATE_S = {"tensorrt": 60, "export_full": 240, "bench": 90}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="folder for gpu-check.json ($OUT)")
    p.add_argument("--cpu", action="store_true", help="CPU EP in place of CUDA (a test run)")
    p.add_argument("--dry-run", action="store_true", help="write the plan, run nothing")
    p.add_argument("--tiny-fp32", type=Path, default=CARRY / "models" / "tiny-fp32")
    p.add_argument("--tiny-fp16", type=Path, default=CARRY / "models" / "tiny-fp16-cuda")
    p.add_argument("--full", type=Path, default=None, help="an existing full fp16 export")
    p.add_argument("--skip-full", action="store_true", help="no full-architecture stages")
    p.add_argument("--size", type=int, default=512, help="bench image side (px)")
    p.add_argument("--steps", default="20,50", help="bench step counts, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed images per bench config")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip stages past this")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    try:
        args.steps = [int(s) for s in str(args.steps).split(",") if s.strip()]
    except ValueError:
        p.error(f"--steps must be integers separated by commas, got {args.steps!r}")
    if not args.steps or min(args.steps) < 1 or args.size % 8 or args.size < 64:
        p.error("--steps must be >= 1 and --size a multiple of 8, at least 64")
    if args.out is None:
        args.out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "gpu-check")
    return args


class Run:
    """The result document, rewritten after every stage."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.monotonic()
        self.path = Path(args.out) / "gpu-check.json"
        self.doc: dict[str, Any] = {
            "schema": 1,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "mode": "dry-run" if args.dry_run else "cpu" if args.cpu else "cuda",
            "args": {k: str(v) for k, v in vars(args).items()},
            "stages": {},
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, stage: str) -> bool:
        return self.elapsed() + ESTIMATE_S.get(stage, 0) <= self.args.budget_s

    def record(self, stage: str, result: dict[str, Any]) -> None:
        result.setdefault("status", "ok")
        result["seconds"] = max(
            0.0, round(self.elapsed() - result.pop("_start", self.elapsed()), 2)
        )
        self.doc["stages"][stage] = result
        self.doc["elapsed_s"] = round(self.elapsed(), 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        print(f"[gpu-check] {stage}: {result['status']} {result.get('note', '')}", flush=True)


def skipped(note: str) -> dict[str, Any]:
    return {"status": "skipped", "note": note}


# ---------------------------------------------------------------- stages


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    from server.models.cpu_features import read_cpu_flags, reported_flags

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cpu_flags": reported_flags(read_cpu_flags()),
        "cpu_count": os.cpu_count(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        env["gpus"] = [line.strip() for line in smi.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        env["gpus"] = []
    for mod in ("torch", "tensorrt", "diffusers", "transformers", "onnxscript"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            env[mod] = None
    return env


def _provider(args) -> str:
    return "cpu" if args.cpu else "cuda"


def parity(args) -> dict[str, Any]:
    from server.models.manifest import Manifest
    from server.models.providers import select_provider
    from server.models.providers.accuracy import max_relative_error, sample_feeds

    for folder in (args.tiny_fp32, args.tiny_fp16):
        if not (Path(folder) / "manifest.json").is_file():
            return skipped(f"{folder}: no export there (python -m benchmarks.gpu_carry)")
    ref_m, m = Manifest.read(args.tiny_fp32), Manifest.read(args.tiny_fp16)
    ref_p = select_provider("cpu", threads=args.threads)
    test_p = select_provider(_provider(args), threads=args.threads)
    comps: dict[str, Any] = {}
    for comp, spec in m.components.items():
        if comp not in ref_m.components:
            continue
        feeds = sample_feeds(spec)
        ref = ref_p.load(args.tiny_fp32 / ref_m.components[comp].file, ref_m.components[comp])
        out = test_p.load(args.tiny_fp16 / spec.file, spec).run(feeds)
        err = max_relative_error(out, ref.run(feeds))
        comps[comp] = {"max_rel_err": err, "limit": FP16_COMPONENT_RTOL}
    image = _image_parity(args)
    ok = all(c["max_rel_err"] <= c["limit"] for c in comps.values())
    ok = ok and image["max_abs"] <= FP16_IMAGE_MAX and image["mean_abs"] <= FP16_IMAGE_MEAN
    return {
        "status": "ok" if ok else "failed",
        "provider": _provider(args),
        "components": comps,
        "image": image,
    }


def _inputs(side: int):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.float32)
    mask[side // 8 : side * 5 // 8, side // 4 : side * 7 // 8] = 1
    return img, mask


def _image_parity(args, steps: int = 8) -> dict[str, Any]:
    from server.models.base import Row
    from server.models.sd_inpaint import SDInpaintModel

    img, mask = _inputs(64)
    outs = []
    for folder, provider in ((args.tiny_fp32, "cpu"), (args.tiny_fp16, _provider(args))):
        model = SDInpaintModel.from_folder(
            folder, name="t", provider=provider, threads=args.threads
        )
        row = Row(image=img, mask=mask, prompt="a cat", seed=1, steps=steps, scheduler="euler")
        model.prepare([row])
        while not model.is_done(row):
            model.step([row])
        outs.append(model.finish_float([row])[0])
        model.close()
    diff = np.abs(outs[0] - outs[1])
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "limits": [FP16_IMAGE_MAX, FP16_IMAGE_MEAN],
    }


def tensorrt(args, env: dict[str, Any]) -> dict[str, Any]:
    if "TensorrtExecutionProvider" not in env.get("providers", []):
        return skipped(
            "no TensorrtExecutionProvider in this onnxruntime (TensorRT's libraries, > 1 GB, "
            "are not carried to the device: see docs/gpu.md); unverified"
        )
    from server.models.sd_inpaint import SDInpaintModel

    work = Path(args.out) / "work" / "tiny-trt"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.tiny_fp16, work)  # the engine cache goes into the model folder
    t0 = time.perf_counter()
    model = SDInpaintModel.from_folder(work, name="t", provider="tensorrt", threads=args.threads)
    load_s = time.perf_counter() - t0
    from server.models.base import Row

    img, mask = _inputs(64)
    t0 = time.perf_counter()
    (out,) = model.run([Row(image=img, mask=mask, prompt="a cat", seed=1, steps=8)])
    first_s = time.perf_counter() - t0
    return {"load_s": load_s, "first_image_s": first_s, "output_mean": float(out.mean())}


def export_full(args, env: dict[str, Any], run: Run) -> tuple[dict[str, Any], Path | None]:
    if args.full is not None:
        return {"note": "given with --full", "folder": str(args.full)}, Path(args.full)
    if args.skip_full or args.cpu:
        return skipped("--skip-full" if args.skip_full else "not in --cpu mode"), None
    missing = [m for m in ("diffusers", "transformers", "onnxscript") if not env.get(m)]
    if missing:
        return skipped(f"cannot export here: {', '.join(missing)} not importable"), None
    out = Path(args.out) / "work" / "sd15-fp16-cuda"
    cmd = [sys.executable, "-m", "export", "--preset", "sd15-random", "--precision", "fp16",
           "--target", "cuda", "--out", str(out)]  # fmt: skip
    left = max(30.0, args.budget_s - run.elapsed() - ESTIMATE_S["bench"])
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "note": f"export over {left:.0f} s"}, None
    (Path(args.out) / "export_full.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"status": "failed", "note": f"export exit {proc.returncode}"}, None
    manifest = json.loads((out / "manifest.json").read_text())
    checks = manifest.get("verification", [])
    return {
        "status": "ok" if checks and all(v["passed"] for v in checks) else "failed",
        "verification": checks,
        "notes": manifest.get("notes", []),
    }, out


def bench(args, folder: Path) -> dict[str, Any]:
    from server.models.base import Row
    from server.models.schedulers import scheduler_names
    from server.models.sd_inpaint import SDInpaintModel

    from .inprocess import instrument, run_once

    model = SDInpaintModel.from_folder(
        folder, name="bench", provider=_provider(args), threads=args.threads
    )
    rec = instrument(model)
    img, mask = _inputs(args.size)
    recipes = [("default", s, 7.5, None) for s in args.steps]
    fast = "lcm" in scheduler_names()
    if fast:
        recipes.append(("fast", 4, 0.0, "lcm"))
    results = []
    for name, steps, guidance, scheduler in recipes:
        times, unet = [], []
        for i in range(1 + args.repeats):  # the first image warms up (kernels, allocations)
            row = Row(image=img, mask=mask, prompt="a bench", seed=i, steps=steps,
                      guidance_scale=guidance, scheduler=scheduler)  # fmt: skip
            r = run_once(model, rec, row)
            if i:
                times.append(r["total"])
                unet.append(r["unet"] / max(1, r["unet_calls"]))
        med = float(np.median(times))
        results.append({
            "recipe": name, "steps": steps, "guidance": guidance, "scheduler": scheduler,
            "size": f"{args.size}x{args.size}", "latency_s": med, "runs_s": times,
            "per_step_s": med / steps, "unet_call_s": float(np.median(unet)),
        })  # fmt: skip
    out: dict[str, Any] = {"model": model.describe(), "results": results}
    if not fast:
        out["note"] = "no LCM scheduler in this server: fast recipe not measured"
    model.close()
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    if args.dry_run:
        for stage in STAGES:
            run.record(stage, skipped("dry run: planned"))
        return 0
    env = environment()
    run.record("environment", dict(env))
    if not args.cpu and "CUDAExecutionProvider" not in env["providers"]:
        note = "no CUDAExecutionProvider: install onnxruntime-gpu (docs/gpu.md)"
        for stage in STAGES[1:]:
            run.record(stage, skipped(note))
        return 2
    failed = False

    def stage(name: str, fn, *a):
        nonlocal failed
        start = run.elapsed()
        if not run.fits(name):
            run.record(name, skipped(f"over the {args.budget_s:.0f} s budget"))
            return None
        try:
            result = fn(*a)
        except Exception as exc:  # noqa: BLE001 - one stage failing must not stop the rest
            result = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
        extra = None
        if isinstance(result, tuple):
            result, extra = result
        result["_start"] = start
        run.record(name, result)
        failed = failed or result["status"] == "failed"
        return extra

    stage("parity", parity, args)
    stage("tensorrt", tensorrt, args, env)
    full = stage("export_full", export_full, args, env, run)
    bench_folder = full if full is not None else (args.tiny_fp32 if args.cpu else None)
    if bench_folder is None:
        run.record("bench", skipped("no full-architecture export (see export_full)"))
    else:
        stage("bench", bench, args, bench_folder)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
