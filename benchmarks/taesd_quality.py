"""``python -m benchmarks.taesd_quality``: what the tiny autoencoder (TAESD) trades for speed.

    # real weights (needs the model hub, or local folders): quality and decode times
    python -m benchmarks.taesd_quality \\
        --model stable-diffusion-v1-5/stable-diffusion-inpainting --tiny-vae madebyollin/taesd
    # an export made with ``python -m export ... --tiny-vae ...``, on the provider it serves with
    python -m benchmarks.taesd_quality --folder models/sd15-inpaint --provider cuda
    # no downloads: both decoders at full architecture size with RANDOM weights (times only)
    python -m benchmarks.taesd_quality --random

On the same latents, through ONNX Runtime sessions loaded by the server's own providers, and
with the server's decode conventions (each decoder gets latents / its VAE's scaling factor;
images (x / 2 + 0.5) clipped to [0, 1], as ``SDInpaintModel._decode``):

- quality: PSNR (dB, peak 1.0) and max |diff| (in [0, 1] and in uint8 levels) of the TAESD
  decode against the full VAE decode; with image latents also each decoder's PSNR against the
  input image (how well it reconstructs);
- speed: decode time of each at ``--size`` (512 by default), batch ``--batch``, ``--repeats``
  timed runs after ``--warmup``.

Latents: ``images`` (default with real weights) = the full VAE encoder's mean of each input
image (``--images`` files, else deterministic synthetic scenes), times the scaling factor: the
UNet's latent space. ``noise`` (default with ``--random``) = N(0, 1) latents: with random
weights only the times mean anything, PSNR does not.

``--model``/``--random`` export the VAE encoder, VAE decoder and TAESD decoder alone (never the
UNet) into a temporary folder with ``export.onnx_export``; full-size fp32: ~1-3 min and ~2-4 GB
RAM on 2 cores. Writes ``<out>/<timestamp>-taesd.json`` and prints a Markdown table. Holds the
benchmark lock (``benchmarks/results/.lock``). Exit status: 0 ok, 2 bad arguments, 3 another
benchmark is running.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .assets import ROOT
from .inputs import scene
from .lock import BenchmarkLocked, exclusive
from .machine import machine_info, versions
from .stats import summarize

RESULTS = ROOT / "benchmarks" / "results"
#: the VAE parts this benchmark needs (the UNet and text encoder are never built or loaded)
PARTS = ("vae_encoder", "vae_decoder", "taesd_decoder")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.taesd_quality", description=__doc__.split("\n\n")[0]
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers pipeline (hub id or folder) whose vae/ to use")
    src.add_argument("--folder", type=Path, help="exported model folder with taesd_decoder")
    src.add_argument(
        "--random",
        nargs="?",
        const="full",
        choices=["full", "tiny"],
        help="random weights: full = SD VAE + TAESD architectures (times only); tiny = the "
        "test-sized ones (checks the harness in seconds)",
    )
    p.add_argument("--tiny-vae", help="AutoencoderTiny (hub id or folder), with --model")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (multiple of 8)")
    p.add_argument("--batch", type=int, default=1, help="images per timed decode call")
    p.add_argument("--repeats", type=int, default=5, help="timed decode calls per decoder")
    p.add_argument("--warmup", type=int, default=1, help="untimed decode calls first")
    p.add_argument(
        "--latents",
        choices=["images", "noise"],
        help="what to decode (default: images with real weights, noise with --random)",
    )
    p.add_argument("--images", type=Path, nargs="*", help="image files for --latents images")
    p.add_argument("--n-images", type=int, default=4, help="synthetic scenes when no --images")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--provider", default="cpu", help="cpu | cuda | openvino | auto")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    a = p.parse_args(argv)
    if a.model and not a.tiny_vae:
        p.error("--model needs --tiny-vae (e.g. madebyollin/taesd)")
    if a.tiny_vae and not a.model:
        p.error("--tiny-vae goes with --model (an exported --folder has its own)")
    if a.size % 8 or a.size < 8:
        p.error("--size must be a positive multiple of 8")
    if min(a.batch, a.repeats) < 1 or a.warmup < 0:
        p.error("--batch and --repeats must be >= 1, --warmup >= 0")
    if a.latents is None:
        a.latents = "noise" if a.random else "images"
    return a


# ---------------------------------------------------------------------------- sources


class Decoders:
    """ONNX Runtime sessions for PARTS and the two scaling factors (float32 NCHW I/O)."""

    def __init__(
        self,
        sessions: dict[str, Any],
        files: dict[str, Path],
        vae_scaling: float,
        tiny_scaling: float,
    ):
        self.sessions = sessions
        self.files = files  # the .onnx file of each session (for the FLOP count)
        self.vae_scaling = vae_scaling
        self.tiny_scaling = tiny_scaling

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 (B, 3, H, W) in [-1, 1] -> UNet latents (B, 4, h, w): the VAE mean, scaled."""
        out = self.sessions["vae_encoder"].run({"sample": images})
        return out["latent_mean"].astype(np.float32) * np.float32(self.vae_scaling)

    def decode(self, latents: np.ndarray, tiny: bool) -> np.ndarray:
        """UNet latents (B, 4, h, w) -> float32 (B, H, W, 3) in [0, 1], as the server decodes."""
        comp, factor = (
            ("taesd_decoder", self.tiny_scaling) if tiny else ("vae_decoder", self.vae_scaling)
        )
        out = self.sessions[comp].run({"latent_sample": latents / np.float32(factor)})["sample"]
        return np.clip(out.astype(np.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


def from_folder(folder: Path, provider) -> tuple[Decoders, dict[str, Any]]:
    from server.models.manifest import Manifest

    m = Manifest.read(folder)
    if m.tiny_vae is None or "taesd_decoder" not in m.components:
        raise SystemExit(f"{folder} has no taesd_decoder: export it with --tiny-vae")
    files = {c: folder / m.components[c].file for c in PARTS}
    sessions = {c: provider.load(files[c], m.components[c]) for c in PARTS}
    about = {
        "source": f"exported folder {folder} ({m.source.model}, {m.precision}, {m.target})",
        "tiny_vae": m.tiny_vae.source.model,
        "precision": m.precision,
    }
    return Decoders(sessions, files, m.latent_scaling_factor, m.tiny_vae.scaling_factor), about


def from_torch(args: argparse.Namespace, work: Path, provider, log) -> tuple[Decoders, dict]:
    """Load (or build) the two autoencoders in PyTorch, export PARTS, load them in ORT."""
    import torch
    from diffusers import AutoencoderKL

    from export import optimize
    from export.components import Dims, io_specs
    from export.onnx_export import export_component
    from export.taesd import build_random_tiny_vae, check_compatible, load_tiny_vae
    from export.tiny import SD15_VAE, tiny_vae_config
    from server.models.manifest import ComponentSpec

    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.random:
        torch.manual_seed(args.seed)
        vae = AutoencoderKL(**(SD15_VAE if args.random == "full" else tiny_vae_config())).eval()
        where = build_random_tiny_vae(
            work / "taesd", seed=args.seed, full_size=args.random == "full"
        )
        tiny = load_tiny_vae(str(where))
        about = {"source": f"RANDOM weights ({args.random} architectures, seed {args.seed})"}
        about["tiny_vae"] = "random " + ("TAESD architecture" if args.random == "full" else "tiny")
    else:
        log(f"loading {args.model} vae/ and {args.tiny_vae}")
        vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae").to(torch.float32).eval()
        tiny = load_tiny_vae(args.tiny_vae)
        about = {"source": args.model, "tiny_vae": args.tiny_vae}
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    c = int(vae.config.latent_channels)
    # the exporter's Dims; the text fields are unused (no text encoder or UNet is exported)
    dims = Dims(
        text_len=1, hidden=1, vocab_size=1, bos_id=None, eos_id=0, pad_id=0,
        latent_channels=c, unet_in_channels=2 * c + 1, scale=scale,
        sample_size=int(vae.config.sample_size) // scale, num_train_timesteps=1000,
    )  # fmt: skip
    check_compatible(tiny, dims)
    holder = argparse.Namespace(vae=vae, tiny_vae=tiny, unet=None)
    sessions, files = {}, {}
    for comp in PARTS:
        if comp == "vae_encoder" and args.latents != "images":
            continue
        t0 = time.perf_counter()
        path = work / comp / "model.onnx"
        optimize.save(export_component(comp, holder, dims, args.opset), path)
        if args.precision == "fp16":
            optimize.to_fp16(path, work / comp / "fp16" / "model.onnx")
            path = work / comp / "fp16" / "model.onnx"
        inputs, outputs = io_specs(comp, dims)
        rel = str(path.relative_to(work))  # specs name files relative to the model folder
        spec = ComponentSpec(file=rel, inputs=inputs, outputs=outputs, precision=args.precision)
        sessions[comp], files[comp] = provider.load(path, spec), path
        log(f"  {comp}: exported and loaded in {time.perf_counter() - t0:.0f} s")
    about["precision"] = args.precision
    about["parameters"] = {
        "vae_decoder": sum(p.numel() for p in vae.decoder.parameters())
        + sum(p.numel() for p in vae.post_quant_conv.parameters()),
        "taesd_decoder": sum(p.numel() for p in tiny.decoder.parameters()),
    }
    factors = float(vae.config.scaling_factor), float(tiny.config.scaling_factor)
    return Decoders(sessions, files, *factors), about


# ---------------------------------------------------------------------------- measurements


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (peak 1); inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def load_images(args: argparse.Namespace) -> list[np.ndarray]:
    """uint8 HxWx3 RGB at --size x --size: the --images files (resized), else synthetic scenes."""
    if not args.images:
        return [scene(args.size, args.size, seed=args.seed + i) for i in range(args.n_images)]
    from PIL import Image

    out = []
    for path in args.images:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((args.size, args.size), Image.Resampling.LANCZOS)
            out.append(np.asarray(im, dtype=np.uint8))
    return out


def quality(dec: Decoders, args: argparse.Namespace, log) -> dict[str, Any]:
    """Per latent: TAESD decode vs full VAE decode (and vs the input image, if any)."""
    rows = []
    side = args.size // 8
    if args.latents == "images":
        images = load_images(args)
        sources = []
        for img in images:
            x = (img.astype(np.float32) / 255 * 2 - 1).transpose(2, 0, 1)[None]
            sources.append((dec.encode(np.ascontiguousarray(x)), img.astype(np.float32) / 255))
    else:
        rng = np.random.default_rng(args.seed)
        shape = (1, 4, side, side)
        sources = [(rng.standard_normal(shape, dtype=np.float32), None) for _ in range(2)]
    for i, (lat, original) in enumerate(sources):
        full, tiny = dec.decode(lat, tiny=False)[0], dec.decode(lat, tiny=True)[0]
        diff = np.abs(full - tiny)
        row = {
            "latent": i,
            "psnr_tiny_vs_full_db": psnr(tiny, full),
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff_uint8": int(
                np.abs(np.round(full * 255).astype(int) - np.round(tiny * 255).astype(int)).max()
            ),
        }
        if original is not None:
            row["psnr_full_vs_input_db"] = psnr(full, original)
            row["psnr_tiny_vs_input_db"] = psnr(tiny, original)
        rows.append(row)
        log(f"  latent {i}: PSNR tiny vs full {row['psnr_tiny_vs_full_db']:.2f} dB")
    keys = [k for k in rows[0] if k.endswith("_db") or k.startswith(("max_", "mean_"))]
    return {"per_latent": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


def timing(dec: Decoders, args: argparse.Namespace, log) -> dict[str, Any]:
    """Seconds per decode call of each decoder on the same (batch, 4, size/8, size/8) latents,
    and the arithmetic of each call counted from its graph (independent of the machine's load)."""
    from .flops import count_flops

    rng = np.random.default_rng(args.seed + 1)
    side = args.size // 8
    lat = rng.standard_normal((args.batch, 4, side, side), dtype=np.float32)
    out: dict[str, Any] = {}
    for name, tiny in (("taesd_decoder", True), ("vae_decoder", False)):
        flops = count_flops(dec.files[name], {"latent_sample": list(lat.shape)})
        for _ in range(args.warmup):
            dec.decode(lat, tiny)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            dec.decode(lat, tiny)
            times.append(time.perf_counter() - t0)
        out[name] = {**summarize(times), "gflops_per_call": flops.total / 1e9}
        out[name]["achieved_gflops_per_s"] = flops.total / 1e9 / out[name]["median"]
        log(f"  {name}: median {out[name]['median'] * 1e3:.1f} ms over {args.repeats}")
    full, small = out["vae_decoder"], out["taesd_decoder"]
    out["speedup_median"] = full["median"] / small["median"] if small["median"] > 0 else None
    out["flops_ratio"] = full["gflops_per_call"] / max(small["gflops_per_call"], 1e-9)
    return out


def table(doc: dict[str, Any]) -> str:
    s, q, t = doc["settings"], doc["quality"]["mean"], doc["timing"]
    flags = ", ".join(doc["machine"].get("cpu_flags", [])) or "?"
    lines = [
        f"TAESD vs full VAE decode — {s['source']}; {s['precision']}, provider {s['provider']['name']}, "
        f"{s['size']}x{s['size']}, batch {s['batch']}; CPU flags: {flags}",
        "",
        "| decoder | median ms | min ms | n | GFLOP per call | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("taesd_decoder", "vae_decoder"):
        r = t[name]
        lines.append(
            f"| {name} | {r['median'] * 1e3:.1f} | {r['min'] * 1e3:.1f} | {r['n']} | "
            f"{r['gflops_per_call']:.1f} | {r['achieved_gflops_per_s']:.0f} |"
        )
    lines += [
        "",
        f"speedup (median): {t['speedup_median']:.1f}x; arithmetic ratio {t['flops_ratio']:.1f}x",
        "",
    ]
    lines += [f"- mean {k}: {v:.4g}" for k, v in q.items()]
    if s["random_weights"]:
        lines.append("- RANDOM weights: the quality numbers are meaningless, only the times hold")
    return "\n".join(lines)


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    from server.models.providers import select_provider

    provider = select_provider(args.provider, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="taesd-quality.") as tmp:
        if args.folder:
            dec, about = from_folder(args.folder, provider)
        else:
            dec, about = from_torch(args, Path(tmp), provider, log)
        log("quality")
        q = quality(dec, args, log)
        log(f"timing at {args.size}x{args.size}, batch {args.batch}")
        t = timing(dec, args, log)
    settings = {
        **about,
        "provider": provider.describe(),
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "random_weights": bool(args.random),
        "latents": args.latents,
        "images": [str(p) for p in args.images or []] or f"{args.n_images} synthetic scenes",
        "seed": args.seed,
    }
    return {
        "kind": "taesd_quality",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": settings,
        "machine": machine_info(),
        "versions": versions(),
        "quality": q,
        "timing": t,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with exclusive(RESULTS / ".lock", preset="taesd_quality"):
            doc = run(args)
    except BenchmarkLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(table(doc))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}-taesd.json"
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
