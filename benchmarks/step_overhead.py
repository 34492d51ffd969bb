"""``python -m benchmarks.step_overhead``: what one denoising step costs besides the UNet.

    python -m benchmarks.step_overhead --model-dir models/tiny-sd-inpaint --rows 1,2,4,8
    python -m benchmarks.step_overhead --model-dir models/sd15-random --rows 1,2,4,8 \\
        --size 512x512 --steps-timed 3 --warmup 1          # full size: ~2-3 s per UNet row

For each row count R, R rows are prepared together (one batch, as the step-level batcher runs
them), stepped ``--warmup`` times, then ``--steps-timed`` times with each ``model.step(rows)``
timed and split, through ``benchmarks.inprocess.instrument``, into the time inside the UNet's
ONNX Runtime session and everything else (scheduler maths, UNet input assembly, guidance,
Python). Reported: the median per step of each, and the marginal cost of one more row (the
least-squares slope over R) of the UNet and of the rest. The rest should be a small constant
plus a per-row slope far below the UNet's.

``--mixed`` gives the rows different schedulers and guidance (with and without classifier-free
guidance) in one batch, the case where rows cannot all be stepped as one array operation.
``--stub-unet`` replaces the UNet session by one that returns zeros: the step then times only
our code around the UNet, steady even on a loaded machine (a real UNet call also evicts the
caches, which the real run includes). ``--json PATH`` also writes the numbers. Holds the
benchmark lock (``benchmarks/results/.lock``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .assets import ROOT
from .inprocess import instrument
from .lock import BenchmarkLocked, exclusive
from .machine import machine_info

MIXED = (("euler_a", 7.5), ("ddim", 1.0), ("dpmpp_2m", 3.0), ("pndm", 1.0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.step_overhead",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", type=Path, required=True, help="an exported model folder")
    p.add_argument("--rows", default="1,2,4,8", help="comma-separated row counts")
    p.add_argument("--size", default=None, help="WxH work size (default: native square)")
    p.add_argument("--scheduler", default=None, help="scheduler for every row (default: model's)")
    p.add_argument("--guidance", type=float, default=7.5, help="> 1: two UNet rows per image")
    p.add_argument("--mixed", action="store_true", help="rows cycle through " + str(MIXED))
    p.add_argument(
        "--stub-unet", action="store_true", help="UNet returns zeros: time our code only"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps-timed", type=int, default=20)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--provider", default="cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    a.rows = [int(r) for r in a.rows.split(",") if r.strip()]
    if not a.rows or min(a.rows) < 1:
        p.error("--rows needs positive integers")
    if a.warmup < 0 or a.steps_timed < 2:
        p.error("--warmup >= 0 and --steps-timed >= 2")
    return a


class StubUNet:
    """``--stub-unet``: the UNet's place, answering zeros (float32, latent channels)."""

    def __init__(self, inner: Any, channels: int):
        self._inner, self._channels = inner, channels

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        n, _, h, w = feeds["sample"].shape
        return {"out_sample": np.zeros((n, self._channels, h, w), np.float32)}

    def to_device(self, array: np.ndarray) -> Any:
        return self._inner.to_device(array)


def make_rows(model, n: int, args: argparse.Namespace) -> list:
    from server.models.base import Row

    from .inputs import edit_mask, scene

    if args.size:
        w, h = (int(v) for v in args.size.lower().split("x"))
    else:
        w = h = model.capabilities.limits.native_side
    image, mask = scene(w, h), edit_mask(w, h)
    steps = args.warmup + args.steps_timed + 1
    rows = []
    for i in range(n):
        sched, g = MIXED[i % len(MIXED)] if args.mixed else (args.scheduler, args.guidance)
        rows.append(
            Row(image=image, mask=mask, prompt=f"a photo number {i}", seed=i, steps=steps,
                guidance_scale=g, scheduler=sched)
        )  # fmt: skip
    return rows


def measure(model, rec, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per step (total, UNet, rest) with ``n`` rows in the batch."""
    rows = make_rows(model, n, args)
    model.prepare(rows)
    for _ in range(args.warmup):
        model.step(rows)
    totals, unets = [], []
    for _ in range(args.steps_timed):
        if any(model.is_done(r) for r in rows):
            raise RuntimeError("rows finished before the timed steps ended; raise their steps")
        rec.reset()
        t0 = time.perf_counter()
        model.step(rows)
        totals.append(time.perf_counter() - t0)
        unets.append(rec.seconds.get("unet", 0.0))
    others = [t - u for t, u in zip(totals, unets, strict=True)]
    unet_rows = sum(2 if r.state.cfg else 1 for r in rows)
    return {
        "rows": n,
        "unet_rows": unet_rows,
        "step_s": statistics.median(totals),
        "unet_s": statistics.median(unets),
        "other_s": statistics.median(others),
    }


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None for fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| rows | UNet rows | step ms | UNet ms | other ms | other ms / row |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']} | {r['unet_rows']} | {r['step_s'] * 1e3:.2f} | "
            f"{r['unet_s'] * 1e3:.2f} | {r['other_s'] * 1e3:.3f} | "
            f"{r['other_s'] * 1e3 / r['rows']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from server.models.sd_inpaint import SDInpaintModel

    try:
        with exclusive(ROOT / "benchmarks" / "results" / ".lock", what="step_overhead"):
            model = SDInpaintModel.from_folder(
                args.model_dir, name=args.model_dir.name, provider=args.provider,
                threads=args.threads,
            )  # fmt: skip
            if args.stub_unet:
                channels = model.manifest.latent_channels
                model.sessions["unet"] = StubUNet(model.sessions["unet"], channels)
            rec = instrument(model)
            measure(model, rec, max(args.rows), args)  # warm ORT's buffers for the largest batch
            results = [measure(model, rec, n, args) for n in args.rows]
    except BenchmarkLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    xs = [float(r["rows"]) for r in results]
    marginal = {
        "unet_ms_per_row": _ms(slope(xs, [r["unet_s"] for r in results])),
        "other_ms_per_row": _ms(slope(xs, [r["other_s"] for r in results])),
    }
    info = machine_info()
    print(f"model {args.model_dir} | cpu {info['cpu_model']} flags {','.join(info['cpu_flags'])}")
    print(
        f"scheduler {'mixed ' + str(MIXED) if args.mixed else args.scheduler or 'default'}, "
        f"guidance {'mixed' if args.mixed else args.guidance}, threads {args.threads}, "
        f"median of {args.steps_timed} steps{', UNet stubbed' if args.stub_unet else ''}"
    )
    print(table(results))
    print(
        f"marginal cost of one more row: UNet {marginal['unet_ms_per_row']} ms, "
        f"everything else {marginal['other_ms_per_row']} ms"
    )
    if args.json:
        doc = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": info,
               "results": results, "marginal": marginal}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 4)


if __name__ == "__main__":
    sys.exit(main())
