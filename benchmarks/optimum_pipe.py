"""Runs INSIDE the optimum-intel venv (``optimum_venv.py``): never imports ``server`` or this
project's torch code, only optimum-intel, OpenVINO, diffusers and the pure helpers
(``inputs``, ``stats``, ``recipes``).

    <venv>/bin/python -m benchmarks.optimum_pipe export --pipeline DIR --out DIR [--tiny-vae DIR]
    <venv>/bin/python -m benchmarks.phase IN.json OUT.json     # kind "optimum": bench_optimum

Export: ``OVStableDiffusionInpaintPipeline.from_pretrained(DIR, export=True,
load_in_8bit=False)`` (optimum's own exporter, no weight quantization: the weights the other
configurations use) + ``save_pretrained``; with ``--tiny-vae`` the TAESD decoder too, converted
by ``openvino.convert_model`` (dynamic batch and size) into ``taesd_decoder/``, because
optimum's pipeline has no tiny-VAE option.

Bench: the pipeline with ``ov_config`` INFERENCE_PRECISION_HINT = bf16 where the CPU computes
it natively (AVX512-BF16/AMX; what OpenVINO's CPU plugin picks by default there), else f32,
PERFORMANCE_HINT LATENCY and the benchmark's threads; per recipe the same inputs, prompt, seeds,
scheduler (LCM via diffusers' ``LCMScheduler`` from the pipeline's config) and decode rule as
the diffusers baseline (``baseline.py``). Each part's compiled ``INFERENCE_PRECISION_HINT`` is
reported as the precision it computes in.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .recipes import extrapolate
from .stats import image_summary, timed_images

PARTS = {
    "text_encoder": "text_encoder",
    "unet": "unet",
    "vae_encoder": "vae_encoder",
    "vae_decoder": "vae_decoder",
}


def native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def export(pipeline: Path, out: Path, tiny_vae: Path | None = None) -> None:
    from optimum.intel import OVStableDiffusionInpaintPipeline

    pipe = OVStableDiffusionInpaintPipeline.from_pretrained(
        str(pipeline), export=True, compile=False, load_in_8bit=False
    )
    pipe.save_pretrained(str(out))
    if tiny_vae is not None:
        import openvino as ov
        import torch
        from diffusers import AutoencoderTiny

        tiny = AutoencoderTiny.from_pretrained(str(tiny_vae), torch_dtype=torch.float32).eval()
        tiny.requires_grad_(False)

        class Decode(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.tiny = tiny  # a submodule: its weights are parameters, not trace constants

            def forward(self, latent_sample):
                return self.tiny.decode(latent_sample, return_dict=False)[0]

        c = tiny.config.latent_channels
        with torch.no_grad():
            model = ov.convert_model(
                Decode().eval(),
                example_input=torch.randn(1, c, 8, 8),
                input=[ov.PartialShape([-1, c, -1, -1])],
            )
        (out / "taesd_decoder").mkdir(parents=True, exist_ok=True)
        # full-precision weights on disk, as the optimum export above
        ov.save_model(model, str(out / "taesd_decoder" / "openvino_model.xml"), False)
        (out / "taesd_decoder" / "scaling_factor.txt").write_text(
            repr(float(tiny.config.scaling_factor))
        )


def _precision(compiled) -> str:
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    except Exception:  # noqa: BLE001 - property missing on some devices
        return "unknown"


def bench_optimum(
    model_dir: str,
    *,
    threads: int | None,
    configs: list[dict[str, Any]],
    guidance: float,
    prompt: str,
    seed: int,
    warmup: int,
    repeats: int,
    deadline_s: float | None = None,
    precision: str = "auto",
    log=print,
) -> dict[str, Any]:
    import openvino as ov
    import torch
    from diffusers import LCMScheduler, TCDScheduler
    from optimum.intel import OVStableDiffusionInpaintPipeline
    from PIL import Image

    from .inputs import edit_mask, scene

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    hint = ("bf16" if native_bf16() else "f32") if precision == "auto" else precision
    ov_config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        ov_config["INFERENCE_NUM_THREADS"] = str(int(threads))
    t0 = time.perf_counter()
    pipe = OVStableDiffusionInpaintPipeline.from_pretrained(
        model_dir, ov_config=dict(ov_config), compile=True
    )
    pipe.set_progress_bar_config(disable=True)
    precisions = {
        name: _precision(getattr(pipe, attr).request)
        for name, attr in PARTS.items()
        if getattr(pipe, attr, None) is not None
    }
    tiny_request = None
    tiny_dir = Path(model_dir) / "taesd_decoder"
    if (tiny_dir / "openvino_model.xml").is_file():
        tiny_compiled = ov.Core().compile_model(
            str(tiny_dir / "openvino_model.xml"), "CPU", ov_config
        )
        tiny_request = tiny_compiled.create_infer_request()
        tiny_factor = float((tiny_dir / "scaling_factor.txt").read_text())
        precisions["taesd_decoder"] = _precision(tiny_compiled)
    load_s = time.perf_counter() - t0

    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    marks: dict[str, float] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            marks.setdefault(f"{name}_first_start", t)
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - t
                calls[name] += 1

        return wrapper

    pipe.unet.forward = timed("unet", pipe.unet.forward)
    pipe.text_encoder.forward = timed("text_encoder", pipe.text_encoder.forward)
    pipe.vae_encoder.forward = timed("vae_encoder", pipe.vae_encoder.forward)
    full_decode = timed("vae_decoder", pipe.vae.decode)
    kl_factor = pipe.vae.config.scaling_factor

    def tiny_decode(z, return_dict=False, generator=None, **_):
        # latents / the full VAE's factor came in; TAESD decodes latents / its own factor
        x = np.ascontiguousarray((z * (kl_factor / tiny_factor)).float().numpy())
        return (torch.from_numpy(tiny_request.infer({0: x})[0].copy()),)

    tiny_timed = timed("vae_decoder", tiny_decode) if tiny_request is not None else None
    default_scheduler = pipe.scheduler
    made = {None: default_scheduler}

    def on_step_end(_pipe, i, t, kwargs):
        marks["last_step_end"] = time.perf_counter()
        return kwargs

    results = []
    for cfg in configs:
        width, height, n_steps = cfg["width"], cfg["height"], cfg["steps"]
        g = cfg.get("guidance", guidance)
        name = cfg.get("scheduler")
        if name not in made:
            made[name] = {"lcm": LCMScheduler, "tcd": TCDScheduler}[name].from_config(
                default_scheduler.config
            )
        pipe.scheduler = made[name]
        use_tiny = bool(cfg.get("tiny_vae")) and tiny_timed is not None
        pipe.vae.decode = tiny_timed if use_tiny else full_decode
        mask_np = edit_mask(width, height)
        image = Image.fromarray(scene(width, height))
        mask = Image.fromarray((mask_np > 0.5).astype(np.uint8) * 255)

        kw = dict(
            prompt=prompt, image=image, mask_image=mask, height=height, width=width,
            num_inference_steps=n_steps, guidance_scale=g, strength=1.0, output_type="np",
            callback_on_step_end=on_step_end,
        )  # fmt: skip

        def one(s: int, kw=kw) -> dict[str, float]:
            seconds.clear()
            calls.clear()
            marks.clear()
            gen = torch.Generator(device="cpu").manual_seed(s)
            t0 = time.perf_counter()
            out = pipe(generator=gen, **kw).images
            total = time.perf_counter() - t0
            loop = marks.get("last_step_end", t0) - marks.get("unet_first_start", t0)
            before = marks.get("unet_first_start", t0) - t0
            after = t0 + total - marks.get("last_step_end", t0 + total)
            if out.shape[1:3] != (kw["height"], kw["width"]):
                raise RuntimeError(f"optimum output {out.shape}, wanted {kw['height']}x"
                                   f"{kw['width']}")  # fmt: skip
            return {
                "total": total, "denoise": loop, "unet_calls": calls.get("unet", 0),
                "text_encoder": seconds["text_encoder"], "vae_encoder": seconds["vae_encoder"],
                "prepare_other": before - seconds["text_encoder"] - seconds["vae_encoder"],
                "unet": seconds["unet"], "scheduler_other": loop - seconds["unet"],
                "vae_decoder": seconds["vae_decoder"],
                "finish_other": after - seconds["vae_decoder"],
                "output_mean": float(np.asarray(out, dtype=np.float32).mean() * 255),
            }  # fmt: skip

        want = cfg.get("repeats") or repeats
        label = f"@@ optimum {cfg.get('recipe', '')} {width}x{height}/{n_steps} steps run"
        runs, warm_s, first = timed_images(
            one, seed=seed, warmup=warmup, repeats=want, start=start, deadline_s=deadline_s,
            on_run=lambda i, run, label=label, want=want: log(
                f"{label} {i + 1}/{want}: {run['total']:.3f} s"
            ),
        )  # fmt: skip
        med = float(np.median([r["total"] for r in runs]))
        res = {
            "recipe": cfg.get("recipe", "default"), "scheduler": name,
            "tiny_vae": use_tiny, "mode": "image", "width": width, "height": height,
            "steps": n_steps, "guidance": g,
            **image_summary(runs),
            "load_s": load_s, "warmup_s": warm_s, "first_call_s": first,
            "precisions": {k: _normalize(v) for k, v in precisions.items()},
            "ov_config": ov_config, "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        if cfg.get("tiny_vae") and not use_tiny:
            res["note"] = "no TAESD decoder in the optimum export: full VAE decode"
        if cfg.get("extrapolate_to"):
            res["extrapolated"] = extrapolate(
                med, n_steps, res["unet_calls_per_image"], res["per_step_s"]["median"],
                cfg["extrapolate_to"],
            )  # fmt: skip
        results.append(res)
    return {"runs": results, "versions": _versions()}


def _normalize(p: str) -> str:
    return {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}.get(
        p, {"f16": "fp16", "float16": "fp16"}.get(p, p)
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("optimum-intel", "optimum", "openvino", "diffusers", "transformers", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optimum_pipe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--pipeline", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--tiny-vae", type=Path)
    a = ap.parse_args(argv)
    export(a.pipeline, a.out, a.tiny_vae)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
