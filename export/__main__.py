"""``python -m export``: diffusers SD-inpainting pipeline -> ONNX model folder + manifest.json.

Examples::

    python -m export --tiny --out models/tiny-sd-inpaint          # seconds, random weights
    python -m export --model stable-diffusion-v1-5/stable-diffusion-inpainting \\
        --precision fp16 --target cuda                              # a real model (needs the hub)
    python -m export --preset sd15-random --out /tmp/sd15r          # full size, random weights
    python -m export --model stable-diffusion-v1-5/stable-diffusion-inpainting \\
        --tiny-vae madebyollin/taesd                                # + TAESD: fast previews
    python -m export --model runwayml/stable-diffusion-inpainting \\
        --lora latent-consistency/lcm-lora-sdv1-5                   # fused LCM-LoRA: quality=low
                                                                    # runs lcm, 4 steps, no CFG

    python -m export --onnx big-lama.onnx --kind one-shot --signature lama --name lama
                                                                    # a one-shot network (LaMa,
                                                                    # MI-GAN): export/oneshot.py

Exit status: 0 on success (or "up to date"), 1 on a failed verification or a bad argument.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import exporter, oneshot
from .exporter import ExportError, Options
from .lora import fast_preset, parse_fast_preset, parse_lora
from .oneshot import OneShotOptions, add_oneshot_arguments, oneshot_options

DEFAULT_OPSET = 18  # the dynamo exporter's native opset in torch 2.13; ORT >= 1.16 runs it


def parse_args(argv: list[str] | None = None) -> Options | OneShotOptions:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="hub id or local diffusers folder (an inpainting pipeline)")
    src.add_argument("--tiny", action="store_true", help="build the tiny random test pipeline")
    src.add_argument(
        "--preset",
        choices=["tiny", "sd15-random"],
        help="build a random-weight pipeline: tiny, or the full SD 1.5-inpainting architecture",
    )
    add_oneshot_arguments(p, src)  # --onnx / --torch FILE --kind one-shot (export/oneshot.py)
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--name", help="model name (default: last component of --model / the preset)")
    p.add_argument("--out", type=Path, help="output folder (default: models/<name>)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "auto"],
        default="auto",
        help="weights precision; auto = fp16 for --target cuda, fp32 for cpu "
        "(fp16 on ORT's CPU EP is 1.3-1.9x slower than fp32)",
    )
    p.add_argument(
        "--target",
        choices=["cpu", "cuda"],
        default="cpu",
        help="graph optimizations: cpu = none offline (ORT optimizes at load), cuda = ORT "
        "transformer fusions (attention, GroupNorm; CUDA-only ops)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    p.add_argument(
        "--no-verify", action="store_true", help="skip ORT-vs-PyTorch verification (recorded)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        help="relative tolerance replacing the per-precision default "
        "(pass if max|diff| <= tol * max(1, max|reference|)); 0 fails on any difference",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for presets and sample inputs")
    p.add_argument(
        "--tiny-vae",
        metavar="PATH_OR_HUB_ID",
        help="also export a tiny autoencoder (diffusers AutoencoderTiny, e.g. madebyollin/taesd) "
        "as taesd_decoder / taesd_encoder: previews decode with it, and the fast preset's images",
    )
    p.add_argument(
        "--tiny-vae-encode",
        action="store_true",
        help="with --tiny-vae: the fast preset (quality=low) also encodes the image with the "
        "tiny autoencoder, as diffusers with vae=AutoencoderTiny does (faster: the full VAE "
        "encoder is about a quarter of a 4-step edit on a CPU; the conditioning is TAESD's "
        "approximation of the VAE's latents). Default: the full VAE encodes",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH_OR_HUB_ID[:SCALE]",
        help="fuse a LoRA (diffusers/peft format: LCM-LoRA, TCD-LoRA, a style LoRA) into the UNet "
        "(and the text encoder when it has weights for it) before export, scaled by SCALE "
        "(default 1.0); repeatable, fused in order. See export/lora.py",
    )
    p.add_argument(
        "--fast-preset",
        metavar="SCHEDULER:STEPS[:GUIDANCE]",
        help="the few-step recipe the server's quality=low runs, e.g. lcm:4:1.0 (guidance "
        "default 1.0: no classifier-free guidance), or none. Default: lcm:4:1.0 / tcd:4:1.0 "
        "when a --lora's name (its last path component or hub repo name) contains "
        "'lcm' / 'tcd', else none",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="torch / ORT CPU threads (not part of the export arguments)",
    )
    a = p.parse_args(argv)
    if a.kind == "one-shot" or a.onnx or a.torch:
        return oneshot_options(a, p.error)
    preset = "tiny" if a.tiny else a.preset
    if a.tolerance is not None and a.tolerance < 0:
        p.error("--tolerance must be >= 0")
    name = a.name or (preset and f"{preset}-sd-inpaint") or Path(a.model.rstrip("/")).name
    try:
        loras = tuple(parse_lora(x) for x in a.lora)
        if a.fast_preset not in (None, "none"):
            parse_fast_preset(a.fast_preset)
        if a.tiny_vae_encode:
            if not a.tiny_vae:
                raise ValueError("--tiny-vae-encode needs --tiny-vae PATH_OR_HUB_ID")
            fast_preset(a.fast_preset, loras, tiny_vae_encode=True)  # says when there is none
    except ValueError as exc:
        p.error(str(exc))
    precision = a.precision if a.precision != "auto" else ("fp16" if a.target == "cuda" else "fp32")
    return Options(
        model=None if preset else a.model,
        revision=a.revision,
        name=name,
        out=(a.out or Path("models") / name).expanduser().absolute(),
        precision=precision,
        target=a.target,
        opset=a.opset,
        verify=not a.no_verify,
        tolerance=a.tolerance,
        preset=preset,
        seed=a.seed,
        force=a.force,
        threads=a.threads,
        tiny_vae=a.tiny_vae,
        loras=loras,
        fast_preset=a.fast_preset,
        tiny_vae_encode=a.tiny_vae_encode,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    run = oneshot.run if isinstance(opts, OneShotOptions) else exporter.run
    try:
        run(opts)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
