"""``python -m benchmarks``: our ONNX Runtime server and pipeline vs diffusers/PyTorch.

    python -m benchmarks --preset ci            # tiny model, ~2 min (make benchmark)
    python -m benchmarks --preset cpu           # full SD 1.5 architecture, random weights
    python -m benchmarks --preset cpu-512       # fast paths at 512 px vs the best baselines
    python -m benchmarks --preset cpu-512-smoke # the same code paths on the tiny model
    python -m benchmarks --preset gpu           # 512 px, 20/50 steps, fp16, CUDA + TensorRT
    python -m benchmarks --list                 # what each preset measures

One run measures, on the same inputs and weights: our pipeline in-process per provider, the
diffusers baseline(s), our server over HTTP (closed loop at each concurrency, batching on and
off, then Poisson open loop), FLOPs per component and the machine's matmul peak per precision,
and, for presets that declare them, the Targets table (``targets.py``). Results:
``<out>/<timestamp>-<preset>.json`` + ``.md`` + PNG plots. Only one benchmark runs at a time
(``benchmarks/results/.lock``). Exit status: 0 ok, 1 a measurement failed, 2 bad arguments,
3 another benchmark is running.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import report
from .assets import (
    ROOT,
    AssetError,
    export_dir,
    export_name,
    fast_export_args,
    fused_pipeline_dir,
    lora_dir,
    pipeline_dir,
    taesd_dir,
    tiny_encode_view,
)
from .lock import BenchmarkLocked, exclusive
from .oneshot import PRESETS as ONESHOT_PRESETS
from .presets import PRESETS, BaselineVariant, OursVariant, Preset
from .recipes import Recipe

RESULTS = ROOT / "benchmarks" / "results"
#: torch bf16 autocast vs fp32, per image, on an AVX2-only EPYC (measured): tiny model ~10-15x,
#: full SD 1.5 architecture at 128x128 > 87x (one image did not finish in 578 s vs 6.6 s fp32).
BF16_EMULATION_SLOWDOWN = 90
#: budget shares of a torch.compile baseline (``phase_weight``)
COMPILE_WEIGHT = 2.5
README = ROOT / "benchmarks" / "README.md"
MODEL_TEXT = {
    "tiny": "tiny random-weight SD-inpainting pipeline (export.tiny, seed 0; 64 px native)",
    "sd15-random": "full SD 1.5-inpainting architecture (UNet 860 M, VAE, CLIP-L text encoder) "
    "with RANDOM weights (export.tiny.build_sd15_random_pipeline, seed 0): timings hold for the "
    "real model at the same sizes, images are noise",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS) + sorted(ONESHOT_PRESETS), default="ci")
    p.add_argument("--list", action="store_true", help="describe the presets and exit")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default %(default)s)")
    p.add_argument("--skip-baseline", action="store_true", help="no diffusers/PyTorch runs")
    p.add_argument("--skip-http", action="store_true", help="no server load tests")
    p.add_argument("--skip-inprocess", action="store_true", help="no in-process pipeline runs")
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="presets without a compiled baseline: also measure diffusers with torch.compile "
        "(+ freezing; compile ~75 s per shape on CPU, reported apart)",
    )
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="drop the preset's torch.compile baselines (they cost ~1-2 min of compile each)",
    )
    p.add_argument(
        "--skip-optimum",
        action="store_true",
        help="no optimum-intel baseline (and no venv for it)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for ORT and torch alike (default: the cores this process may use)",
    )
    p.add_argument(
        "--pipeline",
        type=Path,
        help="a local diffusers SD-inpainting folder (real weights) instead of the "
        "preset's random-weight pipeline",
    )
    p.add_argument("--repeats", type=int, help="timed runs per in-process configuration")
    p.add_argument("--warmup", type=int, help="untimed runs per configuration")
    p.add_argument("--budget-s", type=float, help="measurement time budget (exports excluded)")
    p.add_argument(
        "--concurrency",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="closed-loop concurrency levels, e.g. 1,4,8,16",
    )
    p.add_argument(
        "--peak-gflops",
        type=float,
        help="state the machine's peak GFLOP/s instead of the measured matmul probe",
    )
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="build/export the preset's models into benchmarks/.cache and stop",
    )
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="put the table into benchmarks/README.md between the preset's markers",
    )
    return p.parse_args(argv)


def describe_presets() -> str:
    lines = []
    for p in PRESETS.values():
        lines.append(f"{p.name}: {p.description}")
        lines.append(
            f"  model {p.model}; in-process {p.width}x{p.height}, steps {p.steps}, "
            f"guidance {p.guidance}; warm-up {p.warmup}, repeats {p.repeats}"
        )
        lines.append(f"  ours: {', '.join(v.label for v in p.ours)}")
        lines.append(f"  baselines: {', '.join(b.label for b in p.baselines)}")
        lines.append(
            f"  HTTP: {', '.join(v.label for v in p.http)} at {p.http_width}x"
            f"{p.http_height}/{p.http_steps} steps, concurrency {p.concurrency} x "
            f"{p.requests_per_client} requests/client x {p.load_repeats} runs, "
            f"--max-batch-size {p.batch_sizes}; open loop {p.open_loop_requests} "
            f"requests at {p.open_loop_load:.0%} of peak throughput"
        )
        lines.append(f"  expected runtime: {p.expected_runtime}")
    return "\n".join(lines)


def provider_available(provider: str) -> bool:
    from server.models import providers as pv

    cls = {
        "auto": pv.AutoProvider,
        "cpu": pv.CPUProvider,
        "cuda": pv.CUDAProvider,
        "tensorrt": pv.TensorRTProvider,
        "openvino": pv.OpenVINOProvider,
    }[provider.split(":")[0]]
    return cls.available()


class Runner:
    def __init__(self, preset: Preset, args: argparse.Namespace):
        self.p = preset
        self.args = args
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.results: dict[str, Any] = {
            "inprocess": [],
            "http": [],
            "flops": {},
            "peak": {},
            "compute_floor": [],
            "skipped": self.skipped,
        }
        self.t0 = time.perf_counter()
        self.t_measure: float | None = None
        self.failed = False
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{preset.name}-"))

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def skip(self, msg: str) -> None:
        if msg not in self.skipped:
            self.skipped.append(msg)
        self.log(f"SKIP: {msg}")

    def remaining(self) -> float:
        if self.t_measure is None:
            return self.p.budget_s
        return self.p.budget_s - (time.perf_counter() - self.t_measure)

    def run_phase(
        self, kind: str, args: dict[str, Any], timeout_s: float, python: Path | None = None
    ) -> dict[str, Any]:
        """Run one measurement in a fresh interpreter (``python``: another venv's, e.g. the
        optimum-intel one; default: ours)."""
        from .memory import GpuSampler

        tmp = Path(tempfile.mkdtemp(prefix="phase-", dir=self.log_dir))
        src, dst = tmp / "in.json", tmp / "out.json"
        src.write_text(json.dumps({"kind": kind, "args": args}, default=str))
        proc = subprocess.Popen(
            [str(python or sys.executable), "-m", "benchmarks.phase", str(src), str(dst)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tail: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                del tail[:-40]
                if line.startswith("@@ "):
                    self.log("  " + line[3:])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        with GpuSampler([proc.pid]) as gpu:
            try:
                proc.wait(timeout=max(30.0, timeout_s))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                reader.join(5)
                error = f"killed after {timeout_s:.0f} s (time budget)"
                from .phase import partial_path

                kept = partial_path(dst)
                if kept.is_file():  # the configurations that finished before the kill
                    return {**json.loads(kept.read_text()), "ok": True, "partial": error}
                return {"ok": False, "error": error}
        reader.join(5)
        if not dst.is_file():
            return {"ok": False, "error": "phase died without a result:\n" + "\n".join(tail[-15:])}
        out = json.loads(dst.read_text())
        out["gpu_peak_mb"] = gpu.peak_mb
        if not out.get("ok"):
            self.log("phase failed; its last output lines:\n" + "\n".join(tail[-12:]))
        return out

    # ------------------------------------------------------------------ main flow
    def run(self) -> int:
        from .machine import machine_info, versions

        p, a = self.p, self.args
        machine = machine_info()
        self.machine = machine
        threads = a.threads or machine.get("affinity_cores") or machine.get("physical_cores")
        self.threads = threads
        load1 = (machine.get("load_average_at_start") or [0])[0] or 0
        cores = machine.get("affinity_cores") or machine.get("logical_cores") or 1
        if load1 > 0.5 * cores:
            self.notes.append(
                f"the machine was busy at start (load average {load1:.1f} on {cores} cores): "
                "other work shares the cores, so these numbers are noisy and pessimistic"
            )
        if p.random_weights and not a.pipeline:
            self.notes.append(f"RANDOM weights: {MODEL_TEXT[p.model]}")
        self.log(f"preset {p.name}: {p.description}; threads {threads}")

        # ---- what can run here
        ours = self._available(p.ours) if not a.skip_inprocess else []
        http = self._available(p.http) if not a.skip_http else []
        ours, http = self._without_f32_duplicates(ours), self._without_f32_duplicates(http)
        baselines = [] if a.skip_baseline else list(p.baselines)
        has_compile = any(b.compile for b in baselines)
        if a.torch_compile and baselines and not has_compile:
            first = baselines[0]
            baselines.append(BaselineVariant(first.device, first.dtype, compile=True))
        elif baselines and not has_compile:
            self.notes.append("torch.compile baseline not run (opt-in: --torch-compile)")
        if a.no_compile and has_compile:
            self.skip("torch.compile baselines: not run (--no-compile)")
            baselines = [b for b in baselines if not b.compile]
        if a.skip_optimum and any(b.impl == "optimum" for b in baselines):
            self.skip("optimum-intel baseline: not run (--skip-optimum)")
        if a.skip_optimum:
            baselines = [b for b in baselines if b.impl != "optimum"]

        # ---- models (excluded from the time budget)
        try:
            source = a.pipeline or pipeline_dir(p.model, log=self.log)
            model = p.model if not a.pipeline else a.pipeline.name
            extra: list[str] = []
            self.baseline_source, self.tiny_vae = source, None
            if p.fast_model:
                lora = lora_dir(source, model, log=self.log)
                self.tiny_vae = taesd_dir(p.model, log=self.log)
                extra = fast_export_args(lora, self.tiny_vae)
                # the baselines compute with the weights our export fused (same fuse code)
                self.baseline_source = fused_pipeline_dir(source, lora, model, log=self.log)
                self.notes.append(
                    "fast model: a random LCM-style LoRA (UNet attention projections) fused at "
                    "export (--lora) and into the baselines' pipeline by the same code; a "
                    "random-weight TAESD (--tiny-vae; full TAESD architecture unless the tiny "
                    "model)"
                )
            exports: dict[tuple[str, str], Path] = {}
            for v in ours + http:
                key = (v.precision, v.target)
                if key not in exports:
                    name = export_name(model, *key, fast=p.fast_model)
                    self.log(f"export {name} (cached when up to date) ...")
                    exports[key] = export_dir(
                        source, name, *key, threads=threads, log=self.log, extra=extra
                    )
            # variants that encode with TAESD serve the export as --tiny-vae-encode writes it
            self.views = {
                (v.precision, v.target): tiny_encode_view(exports[(v.precision, v.target)])
                for v in ours + http
                if v.tiny_vae_encode
            }
        except (AssetError, OSError) as exc:
            print(f"error: preparing the models failed: {exc}", file=sys.stderr)
            return 1
        self.exports = exports
        baselines = self._prepare_optimum(baselines, model)
        if a.prepare_only:
            self.log(
                f"models ready: pipeline {source}; exports "
                + ", ".join(str(v) for v in exports.values())
            )
            return 0

        self.t_measure = time.perf_counter()
        self._flops(exports, ours + http)
        self._probe(machine)

        inproc_budget = p.budget_s * ((1 - p.http_share) if http else 0.95)
        weights = [phase_weight(x) for x in [*ours, *baselines]]
        for i, v in enumerate(ours):
            soft = self._soft_deadline(inproc_budget, weights[i], sum(weights[i:]))
            self._ours(v, self._folder(v), soft, with_http_shape=any(h == v for h in http))
        for i, b in enumerate(baselines, start=len(ours)):
            soft = self._soft_deadline(inproc_budget, weights[i], sum(weights[i:]))
            if b.impl == "optimum":
                self._optimum(b, soft)
            else:
                self._baseline(b, soft)
        modes = [(v, mbs) for v in http for mbs in p.batch_sizes]
        for i, (v, mbs) in enumerate(modes):
            self._http(v, self._folder(v), mbs, len(modes) - i, first=i == 0)

        self._probe(machine, again=True)  # a probe that other work disturbed measures low
        self._compute_floor(a.peak_gflops)
        if p.targets:
            from .targets import evaluate

            self.results["targets"] = evaluate(p, self.results, machine)
        settings = self._settings(source, exports, ours, http, baselines)
        self._note_steal(machine)
        doc = report.document(machine, versions(), settings, self.results, self.notes)
        return self._write(doc)

    def _folder(self, v: OursVariant) -> Path:
        """The model folder variant ``v`` serves: its export, or that export's
        ``--tiny-vae-encode`` view."""
        key = (v.precision, v.target)
        return self.views[key] if v.tiny_vae_encode else self.exports[key]

    def _prepare_optimum(self, baselines: list[BaselineVariant], model: str):
        """The optimum-intel venv and export (once, outside the time budget); on failure the
        baseline is dropped with the reason."""
        from . import optimum_venv

        self.optimum_dir: Path | None = None
        self.optimum_python: Path | None = None
        if not any(b.impl == "optimum" for b in baselines):
            return baselines
        try:
            self.optimum_python = optimum_venv.ensure_venv(log=self.log)
            self.optimum_dir = optimum_venv.export_dir(
                self.optimum_python,
                self.baseline_source,
                f"{model}{'-lcm-taesd' if self.p.fast_model else ''}",
                tiny_vae=self.tiny_vae,
                log=self.log,
            )
        except (AssetError, OSError) as exc:
            self.skip(f"optimum-intel baseline: not run: {exc}")
            return [b for b in baselines if b.impl != "optimum"]
        return baselines

    def _available(self, variants) -> list[OursVariant]:
        out = []
        for v in variants:
            if provider_available(v.provider):
                out.append(v)
            else:
                self.skip(
                    f"{v.label}: execution provider {v.provider!r} is not available in "
                    "this installation (install it to measure: see benchmarks/README.md)"
                )
        return out

    # ------------------------------------------------------------------ phases
    def _flops(self, exports, variants) -> None:
        """FLOPs per component at each recipe's shapes (UNet at the recipe's batch), counted
        from the exported graphs: ``results.flops.by_recipe["<name>@<WxH>"][component]``.

        Counted in a phase subprocess: shape inference on the full UNet holds GBs, which the
        parent must not keep while the pipelines it measures load theirs."""
        if not variants:
            return
        v = variants[0]
        folder = exports[(v.precision, v.target)]
        manifest = json.loads((folder / "manifest.json").read_text())
        hidden = manifest["text_hidden_size"]
        scale = manifest["vae_scale_factor"]
        has_tiny = (folder / "taesd_decoder" / "model.onnx").is_file()
        has_tiny_encoder = (folder / "taesd_encoder" / "model.onnx").is_file()
        wanted: dict[str, dict[str, dict[str, list[int]]]] = {}
        for r in self._flop_recipes():
            w, h, b = r.width, r.height, r.unet_batch
            lh, lw = h // scale, w // scale
            shapes = {
                "unet": {
                    "sample": [b, 9, lh, lw],
                    "timestep": [b],
                    "encoder_hidden_states": [b, 77, hidden],
                },
                "text_encoder": {"input_ids": [b, 77]},
                "vae_encoder": {"sample": [1, 3, h, w]},
                "vae_decoder": {"latent_sample": [1, 4, lh, lw]},
            }
            if has_tiny:
                shapes["taesd_decoder"] = {"latent_sample": [1, 4, lh, lw]}
            if has_tiny_encoder and r.tiny_vae_encode:
                shapes["taesd_encoder"] = {"sample": [1, 3, h, w]}
            wanted[_flop_key(r.name, w, h)] = shapes
        out = self.run_phase("flops", {"folder": str(folder), "shapes": wanted}, 1800)
        if not out.get("ok"):
            self.skip(f"FLOP count: {out.get('error', 'failed')}")
            return
        for msg in out.get("errors", []):
            self.skip(f"FLOP count of {msg}")
        by_recipe = out["by_recipe"]
        self.results["flops"] = {"by_recipe": by_recipe, "graph": str(folder.name)}
        first = self.p.all_recipes[0]
        main = by_recipe.get(_flop_key(first.name, first.width, first.height), {})
        if "unet" in main:
            self.results["flops"]["unet"] = main["unet"]
            self.results["flops"]["unet_batch"] = first.unet_batch
            self.results["flops"]["per_image_steps"] = first.steps
            decoder = "taesd_decoder" if first.tiny_vae and has_tiny else "vae_decoder"
            self.results["flops"]["per_image_gflops"] = (
                sum(
                    main[k]["gflops"] for k in ("text_encoder", "vae_encoder", decoder) if k in main
                )
                + first.steps * main["unet"]["gflops"]
            )

    def _flop_recipes(self) -> list[Recipe]:
        out = list(self.p.all_recipes)
        http = self._http_recipe()
        if http is not None and all(
            (r.name, r.width, r.height) != (http.name, http.width, http.height) for r in out
        ):
            out.append(http)
        for b in self.p.baselines:  # older presets: baselines at their own sizes
            for w, h, n in b.configs:
                if all((r.width, r.height) != (w, h) for r in out):
                    out.append(Recipe("default", w, h, n, guidance=self.p.guidance))
        return out

    def _http_recipe(self) -> Recipe | None:
        p = self.p
        if not p.http or p.http_quality:
            return None
        return Recipe("default", p.http_width, p.http_height, p.http_steps, guidance=p.guidance)

    def _note_steal(self, machine: dict[str, Any]) -> None:
        """Record the hypervisor's CPU steal over the run, with a note when it disturbed it."""
        from .machine import STEAL_NOTE_FRACTION, cpu_times, steal_fraction

        steal = steal_fraction(machine.get("cpu_times_at_start"), cpu_times())
        machine["cpu_steal_during_run"] = steal
        if steal is not None and steal > STEAL_NOTE_FRACTION:
            self.notes.append(
                f"the hypervisor took {steal:.0%} of this VM's CPU time during the run (steal): "
                "the same configuration can measure far apart between runs; compare only ratios "
                "of configurations measured close together, and rerun on a quieter machine"
            )

    def _probe(self, machine, again: bool = False) -> None:
        """The matmul peaks; ``again``: a second probe after the measurements, keeping the
        higher figure of each (a probe that other work disturbed measures low, never high)."""
        gpu = self.p.device_class == "gpu"
        self.log("matmul peak probe" + (" again, after the measurements" if again else "") + " ...")
        res = self.run_phase("probe", {"threads": self.threads, "gpu": gpu}, timeout_s=300)
        if not res.get("ok"):
            self.skip(f"matmul probe failed: {res.get('error')}")
            return
        res["source"] = "measured (matmul probe)"
        if again and self.results.get("peak", {}).get("peaks"):
            res = best_of_probes(self.results["peak"], res)
        self.results["peak"] = res
        for name, pr in res.get("probes", {}).items():
            self.log(f"  probe {name}: {pr['gflops']:.1f} GFLOP/s (computes {pr['precision']})")
        self.log(
            "peaks: "
            + ", ".join(
                f"{k} {v['gflops']:.1f} GFLOP/s ({v['source']})"
                for k, v in res.get("peaks", {}).items()
            )
        )

    def _soft_deadline(self, inproc_budget: float, weight: float, weights_left: float) -> float:
        """A phase's share of what is left of the in-process budget, in proportion to its
        weight (``phase_weight``) among the phases still to run."""
        used = time.perf_counter() - self.t_measure
        share = (inproc_budget - used) * weight / max(weights_left, 1e-9)
        return max(share, 0.0)

    def _configs_for(self, with_http_shape: bool, v: OursVariant) -> list[dict[str, Any]]:
        """Recipe dicts for a phase: the preset's recipes that ``v`` runs (``OursVariant.runs``),
        plus the HTTP shape when that variant is also served (older presets: its own size)."""
        out = [_cfg(r) for r in self.p.all_recipes if v.runs(r)]
        http = self._http_recipe()
        if with_http_shape and http is not None:
            key = (http.width, http.height, http.steps)
            if all((c["width"], c["height"], c["steps"]) != key for c in out):
                out.append(_cfg(http))
        return out

    def _common(self) -> dict[str, Any]:
        p, a = self.p, self.args
        return {
            "threads": self.threads,
            "guidance": p.guidance,
            "prompt": p.prompt,
            "seed": p.seed,
            "warmup": a.warmup if a.warmup is not None else p.warmup,
            "repeats": a.repeats or p.repeats,
        }

    def _ours(self, v: OursVariant, folder: Path, soft: float, with_http_shape: bool) -> None:
        self.log(f"in-process {v.label} (soft budget {soft:.0f} s) ...")
        args = {
            "folder": str(folder),
            "name": folder.name,
            "provider": v.provider,
            "configs": self._configs_for(with_http_shape, v),
            "deadline_s": soft,
            "check_error": v.check_error,
            "static_shapes": v.static_shapes,
            **self._common(),
        }
        res = self.run_phase("ours", args, timeout_s=max(self.remaining(), 0) + 120)
        if res.get("partial"):
            self.skip(f"{v.label}: only some configurations finished: {res['partial']}")
        self._record_inprocess(res, "ours", v.label, v.device_class, dataclasses.asdict(v))

    def _baseline(self, b: BaselineVariant, soft: float) -> None:
        common = self._common()
        if b.dtype == "bf16" and b.device == "cpu" and not self.machine.get("cpu_native_bf16"):
            b = self._fp32_instead(b)
            if b is None:
                return
        if b.dtype == "bf16-autocast" and not self.machine.get("cpu_native_bf16"):
            common = self._fit_emulated_bf16(b, common, soft)
            if common.pop("skip", False):
                return
        self.log(f"baseline {b.label} (soft budget {soft:.0f} s) ...")
        args = {
            "pipeline": str(self.baseline_source),
            "device": b.device,
            "dtype": b.dtype,
            "compile": b.compile,
            "configs": self._baseline_configs(b),
            "deadline_s": soft,
            "tiny_vae_dir": str(self.tiny_vae) if self.tiny_vae else None,
            **common,
        }
        hard = min(max(self.remaining(), 0) + 180, 1.5 * soft + 120)
        res = self.run_phase("diffusers", args, timeout_s=hard)
        if res.get("partial"):
            done = len(res.get("runs", []))
            self.skip(
                f"{b.label}: {done} of {len(args['configs'])} configurations finished; the rest "
                f"was {res['partial']} (the finished ones are reported)"
            )
        if not res.get("ok") and "killed after" in str(res.get("error")):
            res["error"] = (
                f"did not finish within {hard:.0f} s (warm-up {common['warmup']} + 1 image; "
                "killed to keep the time budget): slower than that per image on this machine"
            )
        self._record_inprocess(
            res, "diffusers", b.label, b.device_class, dataclasses.asdict(b), want=common["repeats"]
        )

    def _baseline_configs(self, b: BaselineVariant) -> list[dict[str, Any]]:
        if b.configs:
            return [
                _cfg(Recipe("default", w, h, n, guidance=self.p.guidance)) for w, h, n in b.configs
            ]
        images = [
            _cfg(r)
            for r in self.p.all_recipes
            if (r.name in b.recipes if b.recipes else r.name not in b.unet_step)
        ]
        steps = [_cfg(r, "unet_step") for r in self.p.all_recipes if r.name in b.unet_step]
        return images + steps

    def _optimum(self, b: BaselineVariant, soft: float) -> None:
        """optimum-intel's pipeline, in its own venv's interpreter (``optimum_pipe.py``)."""
        self.log(f"baseline {b.label} (soft budget {soft:.0f} s) ...")
        args = {
            "model_dir": str(self.optimum_dir),
            "configs": self._baseline_configs(b),
            "deadline_s": soft,
            "precision": b.dtype,
            **self._common(),
        }
        hard = min(max(self.remaining(), 0) + 180, 1.5 * soft + 120)
        res = self.run_phase("optimum", args, timeout_s=hard, python=self.optimum_python)
        if res.get("ok"):
            self.results.setdefault("baseline_versions", {})["optimum"] = res.get("versions")
        self._record_inprocess(res, "optimum", b.label, b.device_class, dataclasses.asdict(b))

    def _without_f32_duplicates(self, variants: list[OursVariant]) -> list[OursVariant]:
        """On a CPU without native bf16, OpenVINO runs the bf16 hint in f32 and ``auto`` keeps
        f32 everywhere, so an ``openvino:bf16`` variant measures what the ``auto`` variant with
        the same graphs (static shapes, TAESD encoding) measures. It is not run, and its share
        of the budget goes to the baselines: on an AVX2-only Zen 2, cpu-512's budget otherwise
        starved the compiled baseline and optimum-intel."""
        if self.machine.get("cpu_native_bf16", True):
            return variants
        autos = {
            (v.static_shapes or 0, v.tiny_vae_encode) for v in variants if v.provider == "auto"
        }
        out = []
        for v in variants:
            if v.provider == "openvino:bf16" and (v.static_shapes or 0, v.tiny_vae_encode) in autos:
                self.skip(
                    f"{v.label}: not run: this CPU has no native bf16 (AVX512-BF16/AMX), so "
                    "OpenVINO computes it in f32, as ours auto (measured) does here"
                )
            else:
                out.append(v)
        return out

    def _fp32_instead(self, b: BaselineVariant) -> BaselineVariant | None:
        """A bf16-weights baseline on a CPU without native bf16: torch would emulate every
        matmul (1.4 GFLOP/s against 144 in fp32 on an AVX2-only Zen 2), so PyTorch's best path
        there is fp32. The compiled baseline runs in fp32 (still the best PyTorch path a user
        could pick); the eager one is not run (the fp32 baseline is that path)."""
        why = "this CPU has no native bf16 (AVX512-BF16/AMX): torch would emulate it"
        if not b.compile:
            self.skip(f"{b.label}: not run: {why}; the fp32 baseline is PyTorch's eager path here")
            return None
        fp32 = dataclasses.replace(b, dtype="fp32")
        self.notes.append(f"{b.label} runs as {fp32.label}: {why}, fp32 is PyTorch's best here")
        return fp32

    def _fit_emulated_bf16(self, b: BaselineVariant, common: dict, soft: float) -> dict:
        """bf16 without AVX512-BF16/AMX is emulated by torch: many times slower than fp32.
        Shrink repeats (then drop the warm-up) so one measured image fits the soft budget."""
        self.notes.append(
            "bf16 autocast: this CPU has no native bf16 (no AVX512-BF16/AMX), torch emulates it "
            "(its bf16 matmul is not probed: 1.4 GFLOP/s at n=512 on an AVX2-only Zen 2); "
            "measured as a user would get it when one image fits the time budget"
        )
        fp32 = {
            (r["width"], r["height"], r["steps"]): r["latency_s"]["median"]
            for r in self.results["inprocess"]
            if r["impl"] == "diffusers"
            and r["variant"]["dtype"] == "fp32"
            and r["device_class"] == b.device_class
        }
        if not fp32:
            return common
        est = BF16_EMULATION_SLOWDOWN * sum(
            fp32.get((c["width"], c["height"], c["steps"]), max(fp32.values()))
            for c in self._baseline_configs(b)
        )
        common = dict(common)
        if est > soft:
            # Not even one cold image fits: running it would only burn the budget and be killed.
            self.skip(
                f"{b.label}: not run: expected ~{est:.0f} s per image (~{BF16_EMULATION_SLOWDOWN}x "
                f"fp32, emulated bf16) exceeds the {soft:.0f} s budget; on a 2-core AVX2 "
                "EPYC one 128x128 image did not finish in 578 s"
            )
            common.update(skip=True)
            return common
        warm, reps = common["warmup"], common["repeats"]
        while (warm + reps) * est > soft and reps > 1:
            reps -= 1
        if (warm + reps) * est > soft and warm > 0:
            warm = 0
        if (warm, reps) != (common["warmup"], common["repeats"]):
            self.skip(
                f"{b.label}: expected ~{est:.0f} s per image (~{BF16_EMULATION_SLOWDOWN}x "
                f"fp32, emulated bf16): {warm} warm-up + {reps} timed run(s) to fit "
                f"{soft:.0f} s" + (" (cold: no warm-up run)" if warm == 0 else "")
            )
        common.update(warmup=warm, repeats=reps)
        return common

    def _record_inprocess(
        self, res, impl, label, device_class, variant, want: int | None = None
    ) -> None:
        if not res.get("ok"):
            self.failed = self.failed or impl == "ours"
            self.skip(f"{label}: {res.get('error')}")
            return
        from .attribution import component_precisions

        for r in res["runs"]:
            r.update(
                impl=impl,
                label=label,
                device_class=device_class,
                variant=variant,
                peak_rss_mb=res.get("peak_rss_mb"),
                gpu_peak_mb=res.get("gpu_peak_mb"),
            )
            if impl == "diffusers":
                r["precisions"] = component_precisions("diffusers", variant)
            recipe = self.p.recipe(r.get("recipe", "default"))
            want = (
                (recipe.repeats if recipe is not None and r.get("mode") != "unet_step" else None)
                or want
                or self._common()["repeats"]
            )
            if r["latency_s"]["n"] < want:
                self.skip(
                    f"{label} {r['width']}x{r['height']}/{r['steps']}: {r['latency_s']['n']}"
                    f" of {want} timed runs (time budget)"
                )
            self.results["inprocess"].append(r)
            what = "UNet step" if r.get("mode") == "unet_step" else "image"
            self.log(
                f"  {label} {r.get('recipe', 'default')} {r['width']}x{r['height']}/{r['steps']}"
                f" steps, {what}: median {r['latency_s']['median']:.3f} s, per step "
                f"{r['per_step_s']['median']:.4f} s, peak RSS {res.get('peak_rss_mb', 0):.0f} MB"
                + (
                    f"; {r['extrapolated']['steps']} steps extrapolated "
                    f"{r['extrapolated']['latency_s']:.2f} s"
                    if r.get("extrapolated")
                    else ""
                )
            )

    # ------------------------------------------------------------------ HTTP
    def _http(self, v: OursVariant, folder: Path, mbs: int, modes_left: int, first: bool) -> None:
        """One HTTP mode (``http_phase.measure``); the first one also checks the OpenAI SDK."""
        from . import http_phase

        if self.remaining() <= 0:
            self.skip(
                f"HTTP {v.label} batching {http_phase.batching(mbs)}: no time left in the budget"
            )
            return
        served = http_phase.Served(
            threads=self.threads,
            log_dir=self.log_dir,
            warmup=self._common()["warmup"],
            concurrency=tuple(self.args.concurrency or ()),
        )
        rec, failed = http_phase.measure(
            self.p,
            v,
            folder,
            mbs,
            served,
            available_s=lambda: self.remaining() / max(1, modes_left),
            sdk_check=first,
            log=self.log,
            skip=self.skip,
        )
        self.failed = self.failed or failed
        if rec["closed_loop"]:
            self.results["http"].append(rec)

    # ------------------------------------------------------------------ compute floor
    def _compute_floor(self, stated: float | None) -> None:
        """Each configuration against the peak of the precision it computes in, per component
        (``attribution.compute_floor``)."""
        from .attribution import compute_floor

        fl = self.results.get("flops", {}).get("by_recipe", {})
        peaks = self.results.get("peak", {}).get("peaks", {})
        if stated:
            self.results.setdefault("peak", {})["source"] = f"stated (--peak-gflops {stated:g})"
        for r in self.results["inprocess"]:
            comps = fl.get(_flop_key(r.get("recipe", "default"), r["width"], r["height"]))
            if not comps or "unet" not in comps:
                continue
            flops = {k: v["gflops"] for k, v in comps.items()}
            row = compute_floor(r, flops, peaks, stated)
            row["label"] = (
                f"{r['label']} {r.get('recipe', 'default')} {r['width']}x{r['height']}/"
                f"{r['steps']}" + (" (UNet step)" if r.get("mode") == "unet_step" else "")
            )
            row["precisions"] = r.get("precisions")
            row.update(impl=r.get("impl"), recipe=r.get("recipe", "default"), mode=r.get("mode"))
            self.results["compute_floor"].append(row)

    # ------------------------------------------------------------------ output
    def _settings(self, source, exports, ours, http, baselines) -> dict[str, Any]:
        p, a = self.p, self.args
        return {
            "preset": p.name,
            "started": self.started,
            "preset_config": dataclasses.asdict(p),
            "model_description": (
                f"local pipeline {a.pipeline}" if a.pipeline else MODEL_TEXT[p.model]
            ),
            "pipeline_dir": str(source),
            "exports": {f"{k[0]}-{k[1]}": str(v) for k, v in exports.items()},
            "threads": self.threads,
            "measured": {
                "ours": [v.label for v in ours],
                "http": [v.label for v in http],
                "baselines": [b.label for b in baselines],
            },
            "timing": "time.perf_counter; warm-up runs excluded; in-process latency = one image "
            "from prepare to finish (or the diffusers call); HTTP latency = request "
            "sent to response body read",
            "measurement_s": time.perf_counter() - (self.t_measure or self.t0),
            "budget_s": p.budget_s,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "logs": str(self.log_dir),
        }

    def _write(self, doc: dict[str, Any]) -> int:
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{self.stamp}-{self.p.name}"
        pngs = {}
        try:
            pngs = report.plots(doc, stem)
        except Exception as exc:  # noqa: BLE001 - plots are not worth losing the numbers
            self.skip(f"plots failed: {type(exc).__name__}: {exc}")
        json_path = report.write_json(doc, stem.with_suffix(".json"))
        md = report.markdown(doc, pngs)
        stem.with_suffix(".md").write_text(md + "\n")
        print("\n" + md, flush=True)
        self.log(
            f"wrote {json_path}, {stem.with_suffix('.md')}"
            + (", " + ", ".join(Path(v).name for v in pngs.values()) if pngs else "")
        )
        if self.args.update_readme:
            if report.update_readme(README, self.p.name, md, json_path.name):
                self.log(f"updated {README}")
            else:
                self.log(f"{README} has no <!-- latest:{self.p.name} --> markers; not updated")
        summary = doc["summary"]["speedup_vs_diffusers"]
        for k, val in summary.items():
            self.log(f"speedup {k}: {val:.2f}x" if val else f"speedup {k}: -")
        return 1 if self.failed else 0


def phase_weight(x: OursVariant | BaselineVariant) -> float:
    """A measuring phase's weight in the split of the in-process budget: a ``torch.compile``
    baseline compiles every shape in its warm-up (minutes each on 2 cores: 200 s for the fast
    recipe's and 126 s for the batch-2 step's on a Zen 4) before it times anything, so it gets
    COMPILE_WEIGHT shares; every other phase one."""
    return COMPILE_WEIGHT if getattr(x, "compile", False) else 1.0


def _cfg(r: Recipe, mode: str = "image") -> dict[str, Any]:
    """A recipe as the measuring phase takes it."""
    d = dataclasses.asdict(r)
    d["recipe"] = d.pop("name")
    d["mode"] = mode
    return d


def best_of_probes(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two probe results merged: per precision (``peaks``), per probe (``probes``) and per
    ``*_gflops`` figure, the higher of the two; ``runs`` keeps both runs' peaks."""
    out = {**first, **second}

    def best(a, b, value):
        if a is None or b is None:
            return b if a is None else a
        return a if value(a) >= value(b) else b

    for field in ("peaks", "probes"):
        one, two = first.get(field, {}), second.get(field, {})
        out[field] = {k: best(one.get(k), two.get(k), lambda e: e["gflops"]) for k in {*one, *two}}
    for key in {*first, *second}:
        if key.endswith("_gflops"):
            out[key] = best(first.get(key), second.get(key), float)
    out["runs"] = [first.get("peaks", {}), second.get("peaks", {})]
    out["source"] = "measured (matmul probe: the best of a run before and one after)"
    return out


def _flop_key(recipe: str, width: int, height: int) -> str:
    return f"{recipe}@{width}x{height}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(describe_presets())
        return 0
    if args.preset in ONESHOT_PRESETS:  # LaMa-style one-shot networks: benchmarks/oneshot.py
        from .oneshot import main_from_args

        return main_from_args(args)
    preset = PRESETS[args.preset].with_overrides(budget_s=args.budget_s)
    if args.concurrency and any(c < 1 for c in args.concurrency):
        print("error: --concurrency levels must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.pipeline and not (args.pipeline / "model_index.json").is_file():
        print(
            f"error: --pipeline {args.pipeline} is not a diffusers folder (no model_index.json)",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with exclusive(RESULTS / ".lock", preset=preset.name, started=time.strftime("%H:%M:%S")):
            return Runner(preset, args).run()
    except BenchmarkLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
