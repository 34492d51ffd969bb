"""Our pipeline in-process (no HTTP): per-image latency, per-step time and a stage breakdown.

Server code is not modified: ``instrument`` swaps each ONNX session in ``model.sessions`` for a
thin ``TimedSession`` that adds the wall time of every ``run`` to a ``Recorder``, and the
benchmark times the ``prepare`` / ``step`` / ``finish`` calls around them. So:

- ``text_encoder``, ``vae_encoder``, ``unet``, ``vae_decoder``: time inside ONNX Runtime;
- ``prepare_other``: tokenizing, image/mask preprocessing, noise (prepare minus its sessions);
- ``scheduler_other``: scheduler maths, concatenation, guidance (step minus the UNet);
- ``finish_other``: uint8 conversion (finish minus the decoder).
The request codec (PNG decode of image + mask, compose, PNG encode, base64) is timed separately
with the server's own ``imaging`` functions, for the HTTP overhead split.

Each config is a recipe (``recipes.Recipe`` as a dict): size, steps, guidance, scheduler, TAESD
decode (``Row.tiny_vae``, what ``quality=low`` sets); a recipe that encodes with TAESD too
(``tiny_vae_encode``) needs a folder whose manifest says so (``assets.tiny_encode_view``), and
the encode stage is then TAESD's encoder. With ``check_error`` the UNet inputs of the
last timed image are kept and run again through ONNX Runtime fp32: the max relative error
(``max|ours - fp32| / max|fp32|``, the measure ``--provider auto`` uses) of the UNet as this
provider runs it, on the real denoising inputs at the measured size.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .recipes import extrapolate, record_fields
from .stats import STAGES, over_deadline, summarize

COMPONENTS = ("text_encoder", "vae_encoder", "unet", "vae_decoder")


class Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class TimedSession:
    """Delegates to a provider session; records the wall time of each ``run``."""

    def __init__(self, inner: Any, name: str, recorder: Recorder):
        self._inner = inner
        self._name = name
        self._rec = recorder
        #: when a list, each call's feeds (copied) and outputs are appended to it
        self.capture: list[tuple[dict, dict]] | None = None

    def run(self, feeds):
        t0 = time.perf_counter()
        try:
            out = self._inner.run(feeds)
        finally:
            self._rec.add(self._name, time.perf_counter() - t0)
        if self.capture is not None:
            copy = {k: np.array(v, copy=True) for k, v in feeds.items()}
            self.capture.append((copy, {k: np.array(v, copy=True) for k, v in out.items()}))
        return out

    def __getattr__(self, item):
        return getattr(self._inner, item)


def instrument(model) -> Recorder:
    rec = Recorder()
    for comp, sess in list(model.sessions.items()):
        model.sessions[comp] = TimedSession(sess, comp, rec)
    return rec


def make_row(
    image: np.ndarray,
    mask: np.ndarray,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    scheduler: str | None = None,
    tiny_vae: bool = False,
):
    from server.models.base import Row

    return Row(
        image=image,
        mask=mask,
        prompt=prompt,
        seed=seed,
        steps=steps,
        guidance_scale=guidance,
        strength=1.0,
        scheduler=scheduler,
        tiny_vae=tiny_vae,
    )


def run_once(model, rec: Recorder, row) -> dict[str, float]:
    """One image through prepare / step* / finish; returns seconds per stage + totals."""
    rec.reset()
    t0 = time.perf_counter()
    model.prepare([row])
    t1 = time.perf_counter()
    n_steps = 0
    while not model.is_done(row):
        model.step([row])
        n_steps += 1
    t2 = time.perf_counter()
    images = model.finish([row])
    t3 = time.perf_counter()
    img = images[0]
    if img.dtype != np.uint8 or img.shape != row.image.shape:
        raise RuntimeError(f"unexpected output {img.dtype} {img.shape}, wanted {row.image.shape}")
    s = rec.seconds
    prepare, step, finish = t1 - t0, t2 - t1, t3 - t2
    # the full VAE's encoder, or TAESD's for fast rows of a --tiny-vae-encode export; the
    # final decode: the full VAE, or TAESD for rows with tiny_vae (the fast recipe)
    encode = s.get("vae_encoder", 0.0) + s.get("taesd_encoder", 0.0)
    decode = s.get("vae_decoder", 0.0) + s.get("taesd_decoder", 0.0)
    return {
        "total": t3 - t0,
        "prepare": prepare,
        "denoise": step,
        "finish": finish,
        "steps": n_steps,
        "unet_calls": rec.calls.get("unet", 0),
        "text_encoder": s.get("text_encoder", 0.0),
        "vae_encoder": encode,
        "prepare_other": prepare - s.get("text_encoder", 0.0) - encode,
        "unet": s.get("unet", 0.0),
        "scheduler_other": step - s.get("unet", 0.0),
        "vae_decoder": decode,
        "finish_other": finish - decode,
        "output_mean": float(img.mean()),
    }


def codec_timings(image: np.ndarray, mask: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Median seconds of the server's request codec at this size (PNG in, compose, PNG out)."""
    from server import imaging

    from .inputs import mask_png, png_bytes

    img_png, m_png = png_bytes(image), mask_png(mask)
    dec, comp, enc = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rgba, _ = imaging.decode(img_png, max_pixels=1 << 26)
        m_rgba, m_alpha = imaging.decode(m_png, max_pixels=1 << 26)
        imaging.edit_mask_from_mask_image(m_rgba, m_alpha)
        t1 = time.perf_counter()
        out = imaging.composite(np.ascontiguousarray(rgba[..., :3]), image, mask)
        t2 = time.perf_counter()
        base64.b64encode(imaging.encode(out, "png"))
        t3 = time.perf_counter()
        dec.append(t1 - t0)
        comp.append(t2 - t1)
        enc.append(t3 - t2)
    return {
        "request_decode": float(np.median(dec)),
        "compose": float(np.median(comp)),
        "response_encode": float(np.median(enc)),
    }


def bench_ours(
    folder: Path,
    *,
    name: str,
    provider: str,
    threads: int | None,
    configs: list[dict[str, int]],
    guidance: float,
    prompt: str,
    seed: int,
    warmup: int,
    repeats: int,
    deadline_s: float | None = None,
    check_error: bool = False,
    static_shapes: int | None = None,
    log=print,
    on_result=None,
) -> list[dict[str, Any]]:
    """Load once, then per config (a recipe dict: width, height, steps[, guidance, scheduler,
    tiny_vae, recipe, extrapolate_to, repeats]): ``warmup`` untimed + up to ``repeats`` timed
    images. Past ``deadline_s`` (seconds since the call) a config stops after its first timed
    run (the caller notes the shortfall). ``on_result(results so far)`` after each config."""
    from server.models.sd_inpaint import SDInpaintModel

    from .inputs import edit_mask, scene

    start = time.perf_counter()
    model = SDInpaintModel.from_folder(
        folder, name=name, provider=provider, threads=threads, static_shapes=static_shapes
    )
    load_s = time.perf_counter() - start
    rec = instrument(model)
    out = []
    try:
        for cfg in configs:
            width, height, n_steps = cfg["width"], cfg["height"], cfg["steps"]
            g = cfg.get("guidance", guidance)
            extra = {"scheduler": cfg.get("scheduler"), "tiny_vae": bool(cfg.get("tiny_vae"))}
            if bool(cfg.get("tiny_vae_encode")) != model.tiny_encode:
                raise ValueError(
                    f"recipe {cfg.get('recipe')!r} encodes with TAESD: "
                    f"{bool(cfg.get('tiny_vae_encode'))}, but {folder} says "
                    f"{model.tiny_encode} (serve assets.tiny_encode_view for it)"
                )
            image, mask = scene(width, height), edit_mask(width, height)
            codec = codec_timings(image, mask)
            t0 = time.perf_counter()
            for i in range(warmup):
                run_once(model, rec, make_row(image, mask, prompt, seed + i, n_steps, g, **extra))
            warm_s = time.perf_counter() - t0
            runs, captured = [], []
            want = cfg.get("repeats") or repeats
            for i in range(want):
                if runs and over_deadline(start, deadline_s, runs[-1]["total"]):
                    break
                captured.clear()
                model.sessions["unet"].capture = captured if check_error else None
                row = make_row(image, mask, prompt, seed + i, n_steps, g, **extra)
                runs.append(run_once(model, rec, row))
                log(
                    f"@@ {provider} {cfg.get('recipe', '')} {width}x{height}/{n_steps} steps "
                    f"run {i + 1}/{want}: {runs[-1]['total']:.3f} s"
                )
            model.sessions["unet"].capture = None
            res = _summarize_runs(runs, n_steps, load_s, warm_s, codec, model, provider)
            res.update(guidance=g, **record_fields(cfg))
            if cfg.get("extrapolate_to"):
                res["extrapolated"] = extrapolate(
                    res["latency_s"]["median"],
                    n_steps,
                    res["unet_calls_per_image"],
                    res["per_step_s"]["median"],
                    cfg["extrapolate_to"],
                )
            if check_error and captured:
                res["unet_error"] = unet_error_vs_fp32(model, folder, captured, threads)
                log(
                    f"@@ UNet max rel err vs ORT fp32: {res['unet_error']['max_rel_err']:.3%} "
                    f"over {res['unet_error']['calls']} calls"
                )
            out.append(res)
            if on_result is not None:
                on_result(out)
    finally:
        model.close()
    return out


def unet_error_vs_fp32(model, folder: Path, captured, threads) -> dict[str, Any]:
    """The UNet calls in ``captured`` ((feeds, outputs) pairs) run again on ONNX Runtime's CPU
    EP in fp32: max relative error over the calls, and the fp32 call time (median) for scale.

    The fp32 session is loaded per check and dropped after it: at 512x512 a second full UNet
    (weights + arena, ~5 GB) beside the measured pipeline is what runs a 24 GB machine out of
    memory on the next recipe."""
    from server.models.providers import CPUProvider
    from server.models.providers.accuracy import max_relative_error

    spec = model.manifest.components["unet"]
    reference = CPUProvider(threads).load(Path(folder) / spec.file, spec)
    errs, times = [], []
    for feeds, outputs in captured:
        t0 = time.perf_counter()
        ref = reference.run(feeds)
        times.append(time.perf_counter() - t0)
        errs.append(max_relative_error(outputs, ref))
    del reference, ref  # before the next recipe loads its arena (see above)
    return {
        "max_rel_err": max(errs),
        "per_call": errs,
        "calls": len(errs),
        "reference": "ONNX Runtime CPU EP, fp32, same export, same inputs",
        "fp32_call_s": float(np.median(times)),
        "timesteps": [float(np.asarray(f["timestep"]).ravel()[0]) for f, _ in captured],
    }


def _summarize_runs(runs, n_steps, load_s, warm_s, codec, model, provider="") -> dict[str, Any]:
    from .attribution import component_precisions

    describe = model.describe()
    totals = [r["total"] for r in runs]
    # per denoising iteration (= UNet call; PNDM makes steps + 1 of them)
    per_step = [r["denoise"] / max(1, r["steps"]) for r in runs]
    unet_call = [r["unet"] / max(1, r["unet_calls"]) for r in runs]
    stages = {k: float(np.median([r[k] for r in runs])) for k in STAGES}
    return {
        "steps": n_steps,
        "latency_s": summarize(totals),
        "per_step_s": summarize(per_step),
        "unet_call_s": summarize(unet_call),
        "unet_calls_per_image": runs[0]["unet_calls"],
        "stages_s": stages,
        "codec_s": codec,
        "load_s": load_s,
        "warmup_s": warm_s,
        "output_mean": runs[-1]["output_mean"],
        "model": {
            **{k: describe.get(k) for k in ("precision", "provider", "tiny_vae", "loras")},
            "native_size": model.capabilities.limits.native_side,
        },
        "precisions": component_precisions(
            "ours",
            {"provider": provider, "precision": model.manifest.precision},
            describe.get("provider"),
            tuple(model.sessions),
        ),
    }
