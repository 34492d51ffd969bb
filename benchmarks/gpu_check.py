"""``make gpu-check``: one command that checks the GPU paths on a lent GPU machine and writes
``gpu-check.json`` (plus the logs) under ``--out`` (default ``$OUT``, else benchmarks/results).

Stages, each recorded as it ends (a run cut short still leaves what it measured), each with
``status`` ok | failed | skipped and a ``note`` saying why when skipped:

1. ``environment``: GPU name (nvidia-smi), Python, onnxruntime version and providers, torch
   and its CUDA, TensorRT presence, diffusers, the CPU flags.
2. ``parity``: the tiny export, fp16 (``--target cuda``) on the CUDA EP vs fp32 on the CPU EP:
   per component on the fixed sample of ``server.models.providers.accuracy`` (limit: the
   export's fp16 rtol, 2e-2 relative to the output's max) and a whole 64x64 inpaint, 8 steps
   (limits: max 0.1, mean 1e-2 on [0, 1] pixels, the pipeline tests' fp16 bounds).
3. ``tensorrt``: the TensorRT EP on the tiny fp16 export (engine build time, parity with CPU
   fp32); skipped where onnxruntime has no TensorRT EP (TensorRT's libraries are not carried).
4. ``export_full``: the full SD 1.5-inpainting architecture with random weights saved as a
   diffusers folder (``benchmarks.assets.pipeline_dir``, seed 0) and a random full-size TAESD
   (``benchmarks.assets.taesd_dir``: ``export.taesd.build_random_tiny_vae(full_size=True)``),
   exported fp16 ``--target cuda --tiny-vae`` from that folder (needs
   diffusers/transformers/onnxscript); its manifest's verification (the fused fp16 graphs on
   the CUDA EP vs PyTorch fp32, per component, TAESD's included) is the full-size parity.
5. ``bench``: the short ``gpu`` preset on that export (``benchmarks.recipes``): 512x512, 20 and
   50 steps with the default recipe (guidance 7.5), and the fast recipe (LCM, 4 steps, guidance
   1 = no classifier-free guidance, TAESD decode) where the server has the LCM scheduler; warm
   median latency (1 warm-up + 3 timed images each), per step and per UNet call.
6. ``baseline``: diffusers ``StableDiffusionInpaintPipeline`` in fp16 on CUDA on the same
   pipeline folder (``benchmarks.baseline.bench_diffusers``, in its own process through
   ``benchmarks.phase``): the default recipe at the largest bench step count (50) and the fast
   recipe (``LCMScheduler``, 4 steps, guidance 1, ``AutoencoderTiny`` decode with the same TAESD
   weights), warm median latency, CUDA-synchronized. Then the GPU targets of issue 12 go into
   the JSON (``targets``: measured, target, pass): default recipe at 50 steps <= 0.45 s per
   image and >= 2x diffusers fp16 in the same run, fast recipe <= 60 ms (512x512, batch 1).

``--cpu`` runs the same code with the CPU EP in place of CUDA: parity compares two
CPU-runnable exports, ``export_full`` exports the tiny pipeline with a tiny TAESD (fp32
``--target cpu``), ``bench`` runs on it and ``baseline`` is diffusers fp32 on the CPU: the
CPU-visible check of this script. ``--dry-run`` writes the plan without loading anything. A
``--budget-s`` (default 450 s: 8 minutes with a margin) skips what would not fit, with a note;
``baseline`` is the first to go (the full export keeps the time ``bench`` needs, not more).
The exit status does not depend on the targets (they are measurements, not correctness).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from .recipes import DEFAULT_GUIDANCE, Recipe, default, fast

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".cache" / "gpu-carry"
STAGES = ("environment", "parity", "tensorrt", "export_full", "bench", "baseline")
#: component limit = the exporter's fp16 rtol (export/verify.py RTOL["fp16"]): relative to max
FP16_COMPONENT_RTOL = 2e-2
#: whole-image fp16-vs-fp32 limits on [0, 1] pixels (tests/models/test_sd_pipeline.py)
FP16_IMAGE_MAX, FP16_IMAGE_MEAN = 0.1, 1e-2
#: rough seconds each heavy stage needs on an H100/H200 machine, to skip what cannot fit.
#: export_full: the random pipeline (~4.3 GB saved) + TAESD built, then the export (4 min, a
#: guess: never run there); baseline: torch/diffusers import, the fp32 folder loaded as fp16,
#: 1 warm-up + 1 timed 50-step image and the fast recipe; more timed images while time is left.
ESTIMATE_S = {"tensorrt": 60, "export_full": 270, "bench": 90, "baseline": 60}
#: issue 12's GPU targets: H100/H200, 512x512, batch 1, default recipe at 50 steps
TARGET_SIZE, TARGET_STEPS = 512, 50
TARGET_DEFAULT_S, TARGET_SPEEDUP, TARGET_FAST_S = 0.45, 2.0, 0.060
PROMPT = "a bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="folder for gpu-check.json ($OUT)")
    p.add_argument("--cpu", action="store_true", help="CPU EP in place of CUDA (a test run)")
    p.add_argument("--dry-run", action="store_true", help="write the plan, run nothing")
    p.add_argument("--tiny-fp32", type=Path, default=CARRY / "models" / "tiny-fp32")
    p.add_argument("--tiny-fp16", type=Path, default=CARRY / "models" / "tiny-fp16-cuda")
    p.add_argument(
        "--full", type=Path, default=None, help="an existing export (with --tiny-vae) to bench"
    )
    p.add_argument(
        "--pipeline", type=Path, default=None,
        help="the diffusers folder to export (or that --full was exported from): the baseline's "
        "input; default: built (random weights, seed 0) under --out",
    )  # fmt: skip
    p.add_argument(
        "--taesd", type=Path, default=None,
        help="the AutoencoderTiny folder to export with (or that --full has); default: built",
    )  # fmt: skip
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

    def write(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")

    def record(self, stage: str, result: dict[str, Any]) -> None:
        result.setdefault("status", "ok")
        result["seconds"] = max(
            0.0, round(self.elapsed() - result.pop("_start", self.elapsed()), 2)
        )
        self.doc["stages"][stage] = result
        self.write()
        print(f"[gpu-check] {stage}: {result['status']} {result.get('note', '')}", flush=True)


def skipped(note: str) -> dict[str, Any]:
    return {"status": "skipped", "note": note}


def plan(args) -> dict[str, str]:
    """What each stage would do with these arguments (the --dry-run output)."""
    dev = "the CPU EP (--cpu)" if args.cpu else "the CUDA EP"
    model = "the tiny pipeline + a tiny TAESD, fp32 --target cpu" if args.cpu else (
        "the SD 1.5-inpainting architecture (random weights) + a random full-size TAESD, "
        "fp16 --target cuda"
    )  # fmt: skip
    side = f"{args.size}x{args.size}"
    torch_side = "fp32 on the CPU" if args.cpu else "fp16 on CUDA"
    return {
        "environment": "GPU, Python, onnxruntime + providers, torch + CUDA, diffusers, CPU flags",
        "parity": f"tiny fp16 export on {dev} vs fp32 on the CPU EP: components + a 64x64 image",
        "tensorrt": "TensorRT EP engine build on the tiny fp16 export (when onnxruntime has it)",
        "export_full": f"python -m export --model <pipeline folder> --tiny-vae <TAESD>: {model}",
        "bench": f"ours on {dev}, {side}: default recipe (guidance 7.5) at "
        f"{', '.join(map(str, args.steps))} steps; fast recipe (LCM, 4 steps, guidance 1, TAESD "
        f"decode); 1 warm-up + {args.repeats} timed images each",
        "baseline": f"diffusers StableDiffusionInpaintPipeline {torch_side}, same pipeline "
        f"folder, {side}: default recipe at {max(args.steps)} steps and the fast recipe "
        "(LCMScheduler, AutoencoderTiny decode, same TAESD); then the GPU targets",
    }


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
    env["torch_cuda"] = None  # the CUDA version torch runs with; None: no CUDA device for it
    if env["torch"]:
        try:
            import torch

            env["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        except Exception:  # noqa: BLE001 - recorded as no CUDA
            pass
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


def export_full(args, env: dict[str, Any], run: Run) -> tuple[dict[str, Any], dict | None]:
    """The model ``bench`` and ``baseline`` measure: ``{"folder": the export, "pipeline": the
    diffusers folder it was exported from, "taesd": the AutoencoderTiny folder}`` (extra)."""
    if args.full is not None:
        src = {"folder": Path(args.full), "pipeline": args.pipeline, "taesd": args.taesd}
        note = "given with --full" + ("" if args.pipeline else " (no --pipeline: no baseline)")
        return {"note": note, "folder": str(args.full)}, src
    if args.skip_full:
        return skipped("--skip-full"), None
    missing = [m for m in ("diffusers", "transformers", "onnxscript") if not env.get(m)]
    if missing:
        return skipped(f"cannot export here: {', '.join(missing)} not importable"), None
    from .assets import pipeline_dir, taesd_dir

    work = Path(args.out) / "work"
    model, precision, target = "sd15-random", "fp16", "cuda"
    if args.cpu:  # the same steps on the tiny pipeline (seconds, not minutes)
        model, precision, target = "tiny", "fp32", "cpu"
    built = args.pipeline is None
    pipeline = Path(args.pipeline) if args.pipeline else pipeline_dir(model, cache=work)
    taesd = Path(args.taesd) if args.taesd else taesd_dir(model, cache=work)
    name = f"{model}-taesd-{precision}-{target}"
    out = work / "models" / name
    cmd = [sys.executable, "-m", "export", "--model", str(pipeline), "--name", name,
           "--precision", precision, "--target", target, "--tiny-vae", str(taesd),
           "--out", str(out)]  # fmt: skip
    threads = args.threads or (None if args.cpu else os.cpu_count())
    if threads:  # the exporter's default is 2 torch threads: its PyTorch references crawl
        cmd += ["--threads", str(threads)]
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
        "model": f"{model} (random weights, seed 0)" if built else str(pipeline),
        "pipeline": str(pipeline),
        "taesd": str(taesd),
        "precision": precision,
        "target": target,
        "components": sorted(manifest.get("components", {})),
        "verification": checks,
        "notes": manifest.get("notes", []),
    }, {"folder": out, "pipeline": pipeline, "taesd": taesd}


def recipes(args, steps: list[int]) -> list[Recipe]:
    """The default recipe at each of ``steps`` and the fast recipe (LCM, 4 steps, guidance 1,
    TAESD decode), at ``--size``: what ``bench`` and ``baseline`` measure."""
    side = args.size
    return [default(side, side, s) for s in steps] + [fast(side, side)]


def _fields(r: Recipe) -> dict[str, Any]:
    return {
        "recipe": r.name,
        "steps": r.steps,
        "guidance": r.guidance,
        "scheduler": r.scheduler,
        "tiny_vae": r.tiny_vae,
        "size": r.size,
    }


def bench(args, folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from server.models.schedulers import scheduler_names
    from server.models.sd_inpaint import SDInpaintModel

    from .inprocess import instrument, make_row, run_once
    from .inputs import edit_mask, scene

    model = SDInpaintModel.from_folder(
        folder, name="bench", provider=_provider(args), threads=args.threads
    )
    rec = instrument(model)
    img, mask = scene(args.size, args.size), edit_mask(args.size, args.size)  # as the baseline
    has_lcm = "lcm" in scheduler_names()
    todo = [r for r in recipes(args, args.steps) if has_lcm or r.name != "fast"]
    results = []
    for r in todo:
        times, unet = [], []
        for i in range(1 + args.repeats):  # the first image warms up (kernels, allocations)
            row = make_row(img, mask, PROMPT, i, r.steps, r.guidance, r.scheduler, r.tiny_vae)
            out = run_once(model, rec, row)
            if i:
                times.append(out["total"])
                unet.append(out["unet"] / max(1, out["unet_calls"]))
        med = float(np.median(times))
        results.append({
            **_fields(r), "tiny_vae": bool(r.tiny_vae and model.has_tiny_vae),
            "latency_s": med, "runs_s": times, "per_step_s": med / r.steps,
            "unet_call_s": float(np.median(unet)), "unet_batch": r.unet_batch,
        })  # fmt: skip
    out: dict[str, Any] = {"model": model.describe(), "results": results}
    notes = []
    if not has_lcm:
        notes.append("no LCM scheduler in this server: fast recipe not measured")
    elif not model.has_tiny_vae:
        notes.append("no taesd_decoder in the export: the fast rows decoded with the full VAE")
    if notes:
        out["note"] = "; ".join(notes)
    model.close()
    return out, results


def baseline(
    args, env: dict[str, Any], run: Run, source: dict | None, ours: list[dict] | None
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """diffusers on the pipeline folder the export was made from, in its own process
    (``benchmarks.phase`` -> ``baseline.bench_diffusers``: what ``make benchmark`` runs)."""
    if not env.get("diffusers"):
        return skipped("diffusers not importable (carried by benchmarks.gpu_carry)"), None
    if not source or not source.get("pipeline"):
        return skipped(
            "no pipeline folder: export_full did not run (or --full without --pipeline)"
        ), None
    if not args.cpu and not env.get("torch_cuda"):
        return skipped("torch sees no CUDA device: no fp16 CUDA baseline"), None
    device, dtype = ("cpu", "fp32") if args.cpu else ("cuda", "fp16")
    configs = []
    for r in recipes(args, [max(args.steps)]):
        cfg = dataclasses.asdict(r)
        cfg["recipe"] = cfg.pop("name")
        cfg["mode"] = "image"
        configs.append(cfg)
    left = args.budget_s - run.elapsed()
    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "kind": "diffusers",
        "args": {
            "pipeline": str(source["pipeline"]),
            "device": device,
            "dtype": dtype,
            "compile": False,
            "threads": args.threads,
            "configs": configs,
            "guidance": DEFAULT_GUIDANCE,
            "prompt": PROMPT,
            "seed": 0,
            "warmup": 1,
            "repeats": args.repeats,
            # timed images past the first stop here (its clock starts after the imports)
            "deadline_s": max(10.0, left - 20.0),
            "tiny_vae_dir": str(source["taesd"]) if source.get("taesd") else None,
        },
    }
    src, dst = work / "baseline-in.json", work / "baseline-out.json"
    src.write_text(json.dumps(spec))
    dst.unlink(missing_ok=True)
    hard = max(60.0, left) + 30.0  # past the budget by 30 s at most: ~8 minutes in all
    cmd = [sys.executable, "-m", "benchmarks.phase", str(src), str(dst)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=hard)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "note": f"diffusers baseline over {hard:.0f} s"}, None
    (Path(args.out) / "baseline.log").write_text(proc.stdout + proc.stderr)
    res = json.loads(dst.read_text()) if dst.is_file() else {}
    if not res.get("ok"):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "note": res.get("error") or tail[0]}, None
    rows = [_baseline_row(x) for x in res["runs"]]
    by_recipe = {(x["recipe"], x["steps"]): x for x in ours or []}
    vs = []
    for x in rows:
        mine = by_recipe.get((x["recipe"], x["steps"]))
        if mine:
            vs.append(
                {
                    "recipe": x["recipe"],
                    "steps": x["steps"],
                    "ours_s": mine["latency_s"],
                    "diffusers_s": x["latency_s"],
                    "speedup": _ratio(x["latency_s"], mine["latency_s"]),
                }
            )
    return {
        "impl": "diffusers StableDiffusionInpaintPipeline",
        "device": device,
        "dtype": dtype,
        "pipeline": str(source["pipeline"]),
        "taesd": str(source.get("taesd")),
        "results": rows,
        "vs_ours": vs,
        "peak_rss_mb": res.get("peak_rss_mb"),
    }, rows


def _baseline_row(x: dict[str, Any]) -> dict[str, Any]:
    """One bench_diffusers record, with the medians flattened as ``bench``'s rows have them."""

    def med(key: str) -> float | None:
        return (x.get(key) or {}).get("median")

    return {
        "recipe": x["recipe"],
        "steps": x["steps"],
        "guidance": x["guidance"],
        "scheduler": x["scheduler"],
        "tiny_vae": x["tiny_vae"],
        "size": f"{x['width']}x{x['height']}",
        "latency_s": med("latency_s"),
        "timed_images": (x.get("latency_s") or {}).get("n"),
        "latency_summary_s": x["latency_s"],
        "per_step_s": med("per_step_s"),
        "unet_call_s": med("unet_call_s"),
        "unet_calls_per_image": x.get("unet_calls_per_image"),
        "stages_s": x.get("stages_s"),
        "first_call_s": x.get("first_call_s"),
        "load_s": x.get("load_s"),
        "cuda_peak_mb": x.get("cuda_peak_mb"),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    from .stats import ratio

    return ratio(num, den)


def targets(
    ours: list[dict] | None,
    diffusers: list[dict] | None,
    *,
    steps: int,
    device: str,
    precision: str | None,
) -> list[dict[str, Any]]:
    """Issue 12's GPU targets from the ``bench`` and ``baseline`` rows (default recipe at
    ``steps``, the fast recipe): each with the measured value, the target and ``pass`` (None:
    not measured, or not measured as the target is stated; ``note`` says which)."""

    def find(rows, recipe, n=None):
        for r in rows or []:
            if r["recipe"] == recipe and (n is None or r["steps"] == n):
                return r
        return None

    mine, theirs = find(ours, "default", steps), find(diffusers, "default", steps)
    quick = find(ours, "fast")
    side = f"{TARGET_SIZE}x{TARGET_SIZE}"

    def entry(name, what, row, measured, op, target, why_not=None, **extra):
        if measured is None:
            why_not = "not measured"
        elif row["size"] != side and why_not is None:
            why_not = f"measured at {row['size']}; the target is for {side}"
        passed = None
        if measured is not None and why_not is None:
            passed = measured <= target if op == "<=" else measured >= target
        e = {
            "name": name,
            "what": what,
            "measured": measured,
            "op": op,
            "target": target,
            "pass": passed,
            "device": device,
            "precision": precision,
            "size": row["size"] if row else None,
            "steps": row["steps"] if row else None,
            "batch": 1,
            **extra,
        }
        if why_not:
            e["note"] = why_not
        return e

    off_steps = None
    if steps != TARGET_STEPS:
        off_steps = f"measured at {steps} steps; the target is for {TARGET_STEPS}"
    ours_s = mine["latency_s"] if mine else None
    theirs_s = theirs["latency_s"] if theirs else None
    no_taesd = None
    if quick is not None and not quick["tiny_vae"]:
        no_taesd = "decoded with the full VAE (no taesd_decoder): not the fast recipe"
    return [
        entry(
            "default_latency_s",
            "ours, default recipe (guidance 7.5): seconds per image",
            mine,
            ours_s,
            "<=",
            TARGET_DEFAULT_S,
            off_steps,
        ),
        entry(
            "default_vs_diffusers",
            "diffusers' latency / ours, default recipe, same run",
            mine,
            _ratio(theirs_s, ours_s),
            ">=",
            TARGET_SPEEDUP,
            off_steps,
            ours_s=ours_s,
            diffusers_s=theirs_s,
            diffusers_dtype="fp32" if device == "cpu" else "fp16",
        ),
        entry(
            "fast_latency_s",
            "ours, fast recipe (LCM, 4 steps, guidance 1, TAESD decode)",
            quick,
            quick["latency_s"] if quick else None,
            "<=",
            TARGET_FAST_S,
            no_taesd,
        ),
    ]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    if args.dry_run:
        what = plan(args)
        for stage in STAGES:
            run.record(stage, {**skipped("dry run: planned"), "plan": what[stage]})
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
            run.record(
                name,
                skipped(
                    f"over the {args.budget_s:.0f} s budget ({start:.0f} s spent, ~"
                    f"{ESTIMATE_S.get(name, 0)} s needed)"
                ),
            )
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
    source = stage("export_full", export_full, args, env, run)
    if source is None and args.cpu:  # --skip-full / a failed tiny export: the tiny fp32 folder
        source = {"folder": args.tiny_fp32, "pipeline": args.pipeline, "taesd": args.taesd}
    ours = None
    if source is None:
        run.record("bench", skipped("no full-architecture export (see export_full)"))
    else:
        ours = stage("bench", bench, args, source["folder"])
    theirs = stage("baseline", baseline, args, env, run, source, ours)
    precision = (run.doc["stages"]["bench"].get("model") or {}).get("precision")
    device = "cpu" if args.cpu else ((env.get("gpus") or ["cuda"])[0]).split(",")[0]
    run.doc["targets"] = targets(
        ours, theirs, steps=max(args.steps), device=device, precision=precision
    )
    run.write()
    verdicts = {True: "pass", False: "FAIL", None: "not judged"}
    for t in run.doc["targets"]:
        got = f"{t['measured']:.4g}" if t["measured"] is not None else "-"
        print(
            f"[gpu-check] target {t['name']}: {got} {t['op']} {t['target']}: "
            f"{verdicts[t['pass']]} {t.get('note', '')}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
