"""The baseline a user would otherwise pick: diffusers ``StableDiffusionInpaintPipeline`` in
PyTorch, on the very pipeline folder our export was made from (same weights, same inputs).

Variants (``dtype``): fp32; bf16 = the pipeline loaded in bf16 with the UNet and VAEs in
channels_last (the fastest eager PyTorch path on CPUs with native bf16); bf16 autocast on CPU
(``torch.autocast("cpu", torch.bfloat16)``: native only with AVX512-BF16/AMX, emulated and slow
on AVX2-only CPUs: measured anyway and reported as is); fp16 on CUDA. ``compile``:
``torch.compile`` (mode default, ``dynamic=False``: one static graph per shape) of the UNet and
of the VAE encoder and the decoder the recipe uses, with inductor's ``freezing`` (weights folded
in as constants: the best CPU inference setting); the compile happens in the warm-up images and
is reported apart (``first_call_s``, ``compile_s``), never in the latency.

Recipes (``recipes.Recipe`` dicts): scheduler ``lcm`` / ``tcd`` swap in diffusers'
``LCMScheduler`` / ``TCDScheduler`` built from the pipeline's scheduler config; ``tiny_vae``
decodes the final latents with ``AutoencoderTiny`` (``tiny_vae_dir``) while the full VAE still
encodes the masked image, exactly what our server does (``SDInpaintModel``): the latents the
pipeline divides by the full VAE's scaling factor are multiplied back and divided by TAESD's
(1.0). ``tiny_vae_encode`` runs the pipeline built with ``vae=AutoencoderTiny`` (the same other
components), which encodes the masked image with TAESD too, as our ``--tiny-vae-encode`` export
does. Mode ``unet_step``: the UNet alone, one call at the recipe's batch (2 under guidance) and
latent size, random inputs (speed does not depend on them), instead of whole images.

Stage timings wrap the component entry points the pipeline calls (``text_encoder.forward``,
``vae.encode``, ``unet.forward``, ``vae.decode``; TAESD's ``encode`` / ``decode``) with timers
(CUDA-synchronized on GPU); ``callback_on_step_end`` timestamps give the denoising loop time.
"""

from __future__ import annotations

import functools
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .recipes import extrapolate, record_fields
from .stats import image_summary, summarize, timed_images


def bench_diffusers(
    pipeline: Path,
    *,
    device: str,
    dtype: str,
    compile: bool,
    threads: int | None,
    configs: list[dict[str, Any]],
    guidance: float,
    prompt: str,
    seed: int,
    warmup: int,
    repeats: int,
    deadline_s: float | None = None,
    tiny_vae_dir: str | None = None,
    log=print,
    on_result=None,
) -> list[dict[str, Any]]:
    """``on_result(results so far)`` after each configuration (the phase keeps them, so a
    phase killed for time still reports what finished)."""
    if compile:
        # no background compile-worker pool left busy on our cores while we measure
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        warmup = max(warmup, 2)  # the first call compiles; the second checks it is steady
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device (a CPU build of torch, or no GPU)")
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)
    t0 = time.perf_counter()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(pipeline), torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    tiny = None
    if tiny_vae_dir and any(c.get("tiny_vae") for c in configs):
        from diffusers import AutoencoderTiny

        tiny = AutoencoderTiny.from_pretrained(tiny_vae_dir, torch_dtype=torch_dtype).to(device)
        tiny.eval()
    if dtype == "bf16":
        for m in (pipe.unet, pipe.vae, tiny):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = [pipe.unet, pipe.vae.encoder, pipe.vae.decoder]
        if tiny is not None:  # compiled at first use: an unused one costs nothing
            compiled += [tiny.decoder, tiny.encoder]
        for m in compiled:
            m.forward = torch.compile(m.forward, dynamic=False)
    load_s = time.perf_counter() - t0

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer = _Timers(sync)
    pipe.unet.forward = timer.wrap("unet", pipe.unet.forward)
    pipe.text_encoder.forward = timer.wrap("text_encoder", pipe.text_encoder.forward)
    pipe.vae.encode = timer.wrap("vae_encoder", pipe.vae.encode)
    decoders = {False: timer.wrap("vae_decoder", pipe.vae.decode)}
    pipes = {False: pipe}  # by whether TAESD encodes
    if tiny is not None:
        ratio = pipe.vae.config.scaling_factor / tiny.config.scaling_factor
        tiny_decode_raw = tiny.decode

        def tiny_decode(z, return_dict=False, generator=None):
            # the pipeline passed latents / the full VAE's factor; TAESD wants latents / its own
            return (tiny_decode_raw(z * ratio, return_dict=False)[0],)

        decoders[True] = timer.wrap("vae_decoder", tiny_decode)
        if any(c.get("tiny_vae_encode") for c in configs):
            # diffusers with vae=AutoencoderTiny: TAESD encodes and decodes (its own factor)
            tiny.encode = timer.wrap("vae_encoder", tiny.encode)
            tiny.decode = timer.wrap("vae_decoder", tiny_decode_raw)
            parts = {k: v for k, v in pipe.components.items() if k != "vae"}
            pipes[True] = StableDiffusionInpaintPipeline(
                vae=tiny, **parts, requires_safety_checker=False
            )
            pipes[True].set_progress_bar_config(disable=True)
    schedulers = _schedulers(pipe)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16-autocast" else None
    # freezing folds weights into the compiled graph: it needs no_grad, not inference_mode
    grad_off = torch.no_grad if compile else torch.inference_mode

    results = []
    for cfg in configs:
        g = cfg.get("guidance", guidance)
        if cfg.get("mode") == "unet_step":
            with grad_off():
                res = _unet_step(pipe, cfg, g, torch_dtype, dtype, warmup, repeats, timer, sync)
        else:
            if cfg.get("tiny_vae_encode") and True not in pipes:
                raise ValueError(f"recipe {cfg.get('recipe')!r} encodes with TAESD: no tiny VAE")
            run = pipes[bool(cfg.get("tiny_vae_encode"))]
            run.scheduler = schedulers(cfg.get("scheduler"))
            if run is pipe:
                pipe.vae.decode = decoders[bool(cfg.get("tiny_vae")) and tiny is not None]
            with grad_off():
                res = _images(run, cfg, g, prompt, seed, warmup, repeats, timer, sync,
                              autocast, start, deadline_s, log, f"torch {device} {dtype}")  # fmt: skip
        res.update(
            load_s=load_s,
            torch_threads=torch.get_num_threads(),
            cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        )
        results.append(res)
        if on_result is not None:
            on_result(results)
    return results


class _Timers:
    """Wall time per stage name over one image (CUDA-synchronized) and first-start marks."""

    def __init__(self, sync):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.marks: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.marks.clear()

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            self.marks.setdefault(f"{name}_first_start", t)
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[name] += time.perf_counter() - t
                self.calls[name] += 1

        return wrapper


def _schedulers(pipe):
    """name -> the pipeline's scheduler for it (None: the pipeline's own), built once each."""
    from diffusers import LCMScheduler, TCDScheduler

    classes = {"lcm": LCMScheduler, "tcd": TCDScheduler}
    made = {None: pipe.scheduler}

    def get(name: str | None):
        if name not in made:
            if name not in classes:
                raise ValueError(f"no diffusers scheduler mapped for recipe scheduler {name!r}")
            made[name] = classes[name].from_config(made[None].config)
        return made[name]

    return get


def _unet_step(pipe, cfg, guidance, torch_dtype, dtype, warmup, repeats, timer, sync):
    """One UNet call at the recipe's shape, ``warmup`` untimed (the compile) + ``repeats``."""
    import torch

    b = 2 if guidance > 1 else 1
    scale = pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    c = pipe.unet.config
    sample = torch.randn(b, c.in_channels, cfg["height"] // scale, cfg["width"] // scale,
                         generator=gen).to(torch_dtype)  # fmt: skip
    if dtype == "bf16":
        sample = sample.to(memory_format=torch.channels_last)
    length = pipe.tokenizer.model_max_length
    states = torch.randn(b, length, c.cross_attention_dim, generator=gen).to(torch_dtype)
    t = torch.tensor(999.0)
    device = pipe.unet.device
    sample, states, t = sample.to(device), states.to(device), t.to(device)

    def call() -> float:
        timer.reset()
        pipe.unet(sample, t, encoder_hidden_states=states, return_dict=False)
        return timer.seconds["unet"]

    first = call()
    for _ in range(max(0, warmup - 1)):
        call()
    times = [call() for _ in range(repeats)]
    med = float(np.median(times))
    return {
        **record_fields(cfg, "unet_step"),
        "guidance": guidance,
        "unet_batch": b,
        "latency_s": summarize(times),
        "per_step_s": summarize(times),
        "unet_call_s": summarize(times),
        "unet_calls_per_image": None,
        "stages_s": {"unet": med},
        "first_call_s": first,
        "compile_s": max(0.0, first - med),
        "warmup_s": None,
    }


def _images(pipe, cfg, guidance, prompt, seed, warmup, repeats, timer, sync, autocast,
            start, deadline_s, log, tag):  # fmt: skip
    """``warmup`` + up to the recipe's repeats whole images; summary with stage medians."""
    from PIL import Image

    from .inputs import edit_mask, scene

    width, height, n_steps = cfg["width"], cfg["height"], cfg["steps"]
    mask_np = edit_mask(width, height)
    image = Image.fromarray(scene(width, height))
    mask = Image.fromarray((mask_np > 0.5).astype(np.uint8) * 255)

    def on_step_end(_pipe, i, t, kwargs):
        sync()
        timer.marks["last_step_end"] = time.perf_counter()
        return kwargs

    def one(s: int) -> dict[str, float]:
        import torch

        timer.reset()
        marks, seconds, calls = timer.marks, timer.seconds, timer.calls
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

    want = cfg.get("repeats") or repeats

    def on_run(i: int, run: dict[str, float]) -> None:
        log(f"@@ {tag} {cfg.get('recipe', '')} {width}x{height}/{n_steps} steps run "
            f"{i + 1}/{want}: {run['total']:.3f} s")  # fmt: skip

    runs, warm_s, first = timed_images(
        one, seed=seed, warmup=warmup, repeats=want, start=start, deadline_s=deadline_s,
        on_run=on_run,
    )  # fmt: skip
    med = float(np.median([r["total"] for r in runs]))
    res = {
        **record_fields(cfg, "image"),
        "guidance": guidance,
        **image_summary(runs),
        "warmup_s": warm_s,
        "first_call_s": first,
        "compile_s": max(0.0, first - med) if first is not None else None,
    }
    if cfg.get("extrapolate_to"):
        res["extrapolated"] = extrapolate(
            med, n_steps, res["unet_calls_per_image"], res["per_step_s"]["median"],
            cfg["extrapolate_to"],
        )  # fmt: skip
    return res
