"""Per component of an exported model: every CPU runtime x precision this machine offers, timed
at a real size and compared with ONNX Runtime fp32; then what ``--provider auto`` picks here.

    python -m benchmarks.precision_check models/tiny-sd-inpaint            # tiny: seconds
    python -m benchmarks.precision_check benchmarks/.cache/sd15-random --latent 64 --repeats 3

Columns: runtime/precision, median seconds per call (after one warm-up call), speed vs ORT
fp32, max relative error vs ORT fp32 (max|diff| / max|ref|, the measure auto uses) at this
size, and the precision the compiled graph really computes in. Rows: ORT fp32, OpenVINO f32,
OpenVINO bf16 / f16 where the CPU has the units (``cpu_features``), and OpenVINO static-shape
graphs of the fastest precision (``--static``). One runtime is loaded at a time, so peak memory
is one session of the component plus the outputs. Writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.models.cpu_features import native_unit, read_cpu_flags, reported_flags
from server.models.manifest import Manifest
from server.models.providers import AutoProvider, CPUProvider, OpenVINOProvider
from server.models.providers.accuracy import max_relative_error, sample_feeds


def _time(session, feeds, repeats: int) -> tuple[float, dict[str, np.ndarray]]:
    out = session.run(feeds)  # warm-up: kernels and buffers for this shape
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = session.run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def variants(flags) -> list[tuple[str, Any]]:
    """(label, provider factory) for this machine."""
    out: list[tuple[str, Any]] = [("onnxruntime fp32", lambda t: CPUProvider(t))]
    if OpenVINOProvider.available():
        out.append(("openvino f32", lambda t: OpenVINOProvider("f32", t, cache=False)))
        for p in ("bf16", "f16"):
            if native_unit(flags, p):
                out.append((f"openvino {p}", lambda t, p=p: OpenVINOProvider(p, t, cache=False)))
    return out


def check_component(folder, spec, flags, *, threads, batch, latent, repeats, static) -> list[dict]:
    feeds = sample_feeds(spec, batch=batch, latent=latent)
    rows, ref = [], None
    todo = variants(flags)
    for label, make in todo:
        provider = make(threads)
        session = provider.load(folder / spec.file, spec)
        sec, out = _time(session, feeds, repeats)
        if ref is None:
            ref = (sec, out)
        rows.append({
            "variant": label, "seconds": sec, "speedup_vs_ort_fp32": ref[0] / sec,
            "max_rel_err": max_relative_error(out, ref[1]),
            "effective_precision": getattr(session, "effective_precision", "f32"),
        })  # fmt: skip
        del session, provider
        gc.collect()
    if static and OpenVINOProvider.available():
        best = min(
            (r for r in rows if r["variant"].startswith("openvino")), key=lambda r: r["seconds"]
        )
        precision = best["variant"].split()[1]
        provider = OpenVINOProvider(precision, threads, cache=False, static_shapes=1)
        session = provider.load(folder / spec.file, spec)
        sec, out = _time(session, feeds, repeats)
        rows.append({
            "variant": f"openvino {precision} static", "seconds": sec,
            "speedup_vs_ort_fp32": ref[0] / sec, "max_rel_err": max_relative_error(out, ref[1]),
            "effective_precision": session.effective_precision,
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.precision_check", description=__doc__)
    ap.add_argument("folder", type=Path, help="an exported model folder")
    ap.add_argument("--latent", type=int, default=32, help="latent side (px / 8); 64 = 512 px")
    ap.add_argument("--batch", type=int, default=2, help="rows per call (2 = one guided image)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--components", default=None, help="comma-separated; default: all")
    ap.add_argument("--static", action="store_true", help="also time OpenVINO static shapes")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    flags = read_cpu_flags()
    manifest = Manifest.read(args.folder)
    wanted = args.components.split(",") if args.components else list(manifest.components)
    doc: dict[str, Any] = {
        "folder": str(args.folder), "cpu_flags": reported_flags(flags),
        "batch": args.batch, "latent": args.latent, "components": {},
    }  # fmt: skip
    print(f"CPU flags: {' '.join(reported_flags(flags))}; batch {args.batch}, "
          f"{args.latent * 8}x{args.latent * 8} px")  # fmt: skip
    print("| component | variant | s/call | vs ORT fp32 | max rel err | computes in |")
    print("|---|---|---|---|---|---|")
    for comp in wanted:
        spec = manifest.components[comp]
        rows = check_component(
            args.folder, spec, flags, threads=args.threads, batch=args.batch,
            latent=args.latent, repeats=args.repeats, static=args.static,
        )  # fmt: skip
        doc["components"][comp] = rows
        for r in rows:
            print(f"| {comp} | {r['variant']} | {r['seconds']:.4f} | "
                  f"{r['speedup_vs_ort_fp32']:.2f}x | {r['max_rel_err']:.2%} | "
                  f"{r['effective_precision']} |")  # fmt: skip
    auto = AutoProvider(args.threads, cache=False)
    for comp in wanted:
        spec = manifest.components[comp]
        auto.load(args.folder / spec.file, spec)
    doc["auto"] = auto.describe()
    print("\n--provider auto picks here:")
    for comp, c in doc["auto"]["components"].items():
        print(f"  {comp}: {c['runtime']} {c['precision']} ({c['why']})")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
