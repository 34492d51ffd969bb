"""The baseline a user would otherwise pick: diffusers ``StableDiffusionInpaintPipeline`` in
PyTorch, on the very pipeline folder our export was made from (same weights, same inputs).

Variants: fp32; bf16 autocast on CPU (``torch.autocast("cpu", torch.bfloat16)``: native only
with AVX512-BF16/AMX, emulated and slow on AVX2-only CPUs: measured anyway and reported as is);
fp16 on CUDA; ``torch.compile`` of the UNet when asked (its compile time is warm-up, reported).

Stage timings wrap the component entry points the pipeline calls (``text_encoder.forward``,
``vae.encode``, ``unet.forward``, ``vae.decode``) with timers (CUDA-synchronized on GPU);
``callback_on_step_end`` timestamps give the denoising loop time.
"""

from __future__ import annotations

import functools
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .stats import summarize

STAGES = (
    "text_encoder",
    "vae_encoder",
    "prepare_other",
    "unet",
    "scheduler_other",
    "vae_decoder",
    "finish_other",
)


def bench_diffusers(
    pipeline: Path,
    *,
    device: str,
    dtype: str,
    compile: bool,
    threads: int | None,
    configs: list[dict[str, int]],
    guidance: float,
    prompt: str,
    seed: int,
    warmup: int,
    repeats: int,
    deadline_s: float | None = None,
    log=print,
) -> list[dict[str, Any]]:
    if compile:
        # no background compile-worker pool left busy on our cores while we measure
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        warmup = max(warmup, 2)  # the first call compiles; the second checks it is steady
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from .inprocess import over_deadline
    from .inputs import edit_mask, scene

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device (a CPU build of torch, or no GPU)")
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    t0 = time.perf_counter()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(pipeline), torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    marks: dict[str, float] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            sync()
            t = time.perf_counter()
            marks.setdefault(f"{name}_first_start", t)
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                seconds[name] += time.perf_counter() - t
                calls[name] += 1

        return wrapper

    unet_forward = pipe.unet.forward
    if compile:
        unet_forward = torch.compile(unet_forward)
    pipe.unet.forward = timed("unet", unet_forward)
    pipe.text_encoder.forward = timed("text_encoder", pipe.text_encoder.forward)
    pipe.vae.encode = timed("vae_encoder", pipe.vae.encode)
    pipe.vae.decode = timed("vae_decoder", pipe.vae.decode)

    def on_step_end(_pipe, i, t, kwargs):
        sync()
        marks["last_step_end"] = time.perf_counter()
        return kwargs

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16-autocast" else None

    def one(image, mask, width: int, height: int, n_steps: int, s: int) -> dict[str, float]:
        seconds.clear()
        calls.clear()
        marks.clear()
        gen = torch.Generator(device="cpu").manual_seed(s)
        kwargs = dict(
            prompt=prompt,
            image=image,
            mask_image=mask,
            height=height,
            width=width,
            num_inference_steps=n_steps,
            guidance_scale=guidance,
            strength=1.0,
            generator=gen,
            output_type="np",
            callback_on_step_end=on_step_end,
        )
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if autocast is not None:
                with autocast:
                    out = pipe(**kwargs).images
            else:
                out = pipe(**kwargs).images
        sync()
        total = time.perf_counter() - t0
        loop = marks.get("last_step_end", t0) - marks.get("unet_first_start", t0)
        before = marks.get("unet_first_start", t0) - t0
        after = t0 + total - marks.get("last_step_end", t0 + total)
        if out.shape[1:3] != (height, width):
            raise RuntimeError(f"diffusers output {out.shape}, wanted {height}x{width}")
        return {
            "total": total,
            "denoise": loop,
            "steps": n_steps,
            "unet_calls": calls.get("unet", 0),
            "text_encoder": seconds["text_encoder"],
            "vae_encoder": seconds["vae_encoder"],
            "prepare_other": before - seconds["text_encoder"] - seconds["vae_encoder"],
            "unet": seconds["unet"],
            "scheduler_other": loop - seconds["unet"],
            "vae_decoder": seconds["vae_decoder"],
            "finish_other": after - seconds["vae_decoder"],
            "output_mean": float(np.asarray(out, dtype=np.float32).mean() * 255),
        }

    results = []
    for cfg in configs:
        width, height, n_steps = cfg["width"], cfg["height"], cfg["steps"]
        mask_np = edit_mask(width, height)
        image = Image.fromarray(scene(width, height))
        mask = Image.fromarray((mask_np > 0.5).astype(np.uint8) * 255)
        t0 = time.perf_counter()
        for i in range(warmup):
            one(image, mask, width, height, n_steps, seed + i)
        warm_s = time.perf_counter() - t0
        runs = []
        for i in range(repeats):
            if runs and over_deadline(start, deadline_s, runs[-1]["total"]):
                break
            runs.append(one(image, mask, width, height, n_steps, seed + i))
            log(
                f"@@ torch {device} {dtype} {width}x{height}/{n_steps} steps run "
                f"{i + 1}/{repeats}: {runs[-1]['total']:.3f} s"
            )
        totals = [r["total"] for r in runs]
        results.append(
            {
                "steps": n_steps,
                "width": width,
                "height": height,
                "latency_s": summarize(totals),
                # per denoising iteration (= UNet call; PNDM makes steps + 1 of them), as for ours
                "per_step_s": summarize([r["denoise"] / max(1, r["unet_calls"]) for r in runs]),
                "unet_call_s": summarize([r["unet"] / max(1, r["unet_calls"]) for r in runs]),
                "unet_calls_per_image": runs[0]["unet_calls"],
                "stages_s": {k: float(np.median([r[k] for r in runs])) for k in STAGES},
                "load_s": load_s,
                "warmup_s": warm_s,
                "output_mean": runs[-1]["output_mean"],
                "torch_threads": torch.get_num_threads(),
                "cuda_peak_mb": (
                    torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
                ),
            }
        )
    return results
