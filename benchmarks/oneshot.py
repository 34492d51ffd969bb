"""The one-shot preset: a LaMa-style network served by us vs the same network in PyTorch eager.

    python -m benchmarks --preset oneshot        # tiny LaMa-style network: checks the harness
    python -m benchmarks --preset oneshot-full   # big-lama's architecture (~51 M parameters)

The network is ``export.lama_like`` with RANDOM weights (speed does not depend on the weights'
values; the images are noise), saved as TorchScript like IOPaint's big-lama.pt and brought in
with ``python -m export --torch ... --kind one-shot --signature lama`` (cached under
``benchmarks/.cache/oneshot``). What is measured, on the same inputs:

- in-process, per runtime (ONNX Runtime CPU; OpenVINO f32 / bf16 when installed): one 512x512
  row (``OneShotModel.run``: coding, padding, the graph, decoding), and a 2048x1536 photo with a
  small mask (the crop rule + the model + the composite: what serving does around the model);
  4 rows in one call (batching) vs one call per row;
- PyTorch eager (what IOPaint runs): the same network on the same 512x512 input and crop, and
  on 4 rows in one batch;
- over HTTP (the real server, the OpenAI request path): closed loop at each concurrency with
  batching on (``--max-batch-size 4``) and off (1), 512x512 requests, plus 2048x1536 photos.

Results: ``benchmarks/results/<timestamp>-<preset>.json`` and ``.md``. The machine's CPU flags
are recorded with the numbers.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .assets import CACHE, ROOT
from .inputs import png_bytes, scene
from .stats import summarize

RESULTS = ROOT / "benchmarks" / "results"
PRESETS = {
    "oneshot": dict(size="tiny", repeats=10, warmup=2, requests_per_client=4),
    "oneshot-full": dict(size="full", repeats=3, warmup=1, requests_per_client=2),
}
SIDE = 512
PHOTO = (2048, 1536)  # width, height
PHOTO_BOX = (1200, 700, 1280, 760)  # a small object to remove (80 x 60 px)
SIDE_BOX = (192, 208, 320, 304)  # 128 x 96 px in the 512 x 512 image
THREADS = 2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def box_mask(width: int, height: int, box) -> np.ndarray:
    m = np.zeros((height, width), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


# ---------------------------------------------------------------------------- the model
def prepare(size: str, fft: str, threads: int) -> tuple[Path, Path]:
    """(model folder, TorchScript file), built and exported once (re-runs: up to date)."""
    from export import lama_like
    from export.oneshot import OneShotOptions, run

    root = CACHE / "oneshot" / size
    src = root / f"big-lama-{size}-random.pt"
    if not src.is_file():
        log(f"building the {size} LaMa-style network (random weights, seed 0)")
        lama_like.save_torchscript(lama_like.build(size, seed=0), src)
    folder = root / f"lama-{size}-{fft}"
    run(
        OneShotOptions(
            onnx=None,
            torch=src,
            signature="lama",
            signature_file=None,
            name=folder.name,
            out=folder,
            precision="fp32",
            opset=18,
            verify=True,
            tolerance=None,
            force=False,
            fft=fft,
            threads=threads,
        )
    )
    return folder, src


def _timed(fn, repeats: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


def inprocess(folder: Path, provider: str, repeats: int, warmup: int) -> dict[str, Any]:
    """Our model on one runtime: 512 row, 2048x1536 photo (crop rule + composite), batch 4."""
    from server import imaging
    from server.models.base import Row
    from server.models.oneshot import OneShotModel

    model = OneShotModel.from_folder(folder, name=folder.name, provider=provider, threads=THREADS)
    lim = model.capabilities.limits
    img, mask = scene(SIDE, SIDE), box_mask(SIDE, SIDE, SIDE_BOX)
    row = Row(image=img, mask=mask, prompt="", seed=0)
    photo, pmask = scene(*PHOTO, seed=1), box_mask(*PHOTO, PHOTO_BOX)

    def photo_edit() -> None:
        region = imaging.plan_work_region(
            pmask, native_side=lim.native_side, max_work_side=lim.max_work_side, multiple=8
        )
        x0, y0, x1, y1 = region.box
        crop = imaging.resize_image(photo[y0:y1, x0:x1], region.work_width, region.work_height)
        cmask = imaging.resize_mask(pmask[y0:y1, x0:x1], region.work_width, region.work_height)
        (out,) = model.run([Row(image=crop, mask=cmask, prompt="", seed=0)])
        full = photo.copy()
        full[y0:y1, x0:x1] = imaging.resize_image(out, x1 - x0, y1 - y0)
        imaging.composite(photo, full, pmask)
        photo_edit.work = (region.work_width, region.work_height)

    result = {
        "provider": model.provider.describe(),
        "side_512_s": _timed(lambda: model.run([row]), repeats, warmup),
        "photo_2048x1536_s": _timed(photo_edit, repeats, 1),
        "batch4_one_call_s": _timed(lambda: model.run([row] * 4), max(1, repeats // 2), 1),
    }
    result["photo_work_size"] = list(photo_edit.work)
    model.close()
    return result


def torch_eager(src: Path, repeats: int, warmup: int) -> dict[str, Any]:
    """The same network in PyTorch eager (the TorchScript file loaded as IOPaint loads it)."""
    import torch

    torch.set_num_threads(THREADS)
    net = torch.jit.load(str(src)).eval()
    img = torch.from_numpy(scene(SIDE, SIDE)).permute(2, 0, 1)[None].float() / 255
    mask = torch.from_numpy(box_mask(SIDE, SIDE, SIDE_BOX))[None, None]

    def run(batch: int):
        with torch.no_grad():
            net(img.repeat(batch, 1, 1, 1), mask.repeat(batch, 1, 1, 1))

    return {
        "provider": {"name": f"torch {torch.__version__} eager", "threads": THREADS},
        "side_512_s": _timed(lambda: run(1), repeats, warmup),
        "batch4_one_call_s": _timed(lambda: run(4), max(1, repeats // 2), 1),
    }


def http(folder: Path, provider: str, batch: int, concurrency, per_client: int) -> dict:
    """The real server over loopback: closed loop at each concurrency (512x512), + photos."""
    from .loadgen import ModelServer, Payload, closed_loop

    side = Payload(
        png_bytes(scene(SIDE, SIDE)),
        png_bytes((box_mask(SIDE, SIDE, SIDE_BOX) * 255).astype(np.uint8)),
        {"prompt": "remove it", "model": folder.name},
    )
    photo = Payload(
        png_bytes(scene(*PHOTO, seed=1)),
        png_bytes((box_mask(*PHOTO, PHOTO_BOX) * 255).astype(np.uint8)),
        {"prompt": "remove it", "model": folder.name},
    )
    out: dict[str, Any] = {"provider": provider, "max_batch_size": batch, "levels": []}
    with ModelServer(
        folder,
        folder.name,
        provider=provider,
        threads=THREADS,
        max_batch_size=batch,
        request_timeout_s=600,
    ) as srv:
        asyncio.run(closed_loop(srv.base, side, 1, 2, 600))  # warm-up
        for c in concurrency:
            res = asyncio.run(closed_loop(srv.base, side, c, c * per_client, 600))
            res.pop("latencies_s", None)
            out["levels"].append(res)
            log(
                f"  http {provider} batch {batch} c={c}: {res['throughput_img_s']:.2f} img/s, "
                f"p50 {res['latency_s']['p50']:.3f} s"
            )
        if batch > 1:  # the photo once, with the server's default batching
            res = asyncio.run(closed_loop(srv.base, photo, 1, 3, 600))
            res.pop("latencies_s", None)
            out["photo_2048x1536"] = res
    out["peak_rss_mb"] = srv.peak_rss_mb
    return out


# ---------------------------------------------------------------------------- report
def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# one-shot benchmark: {doc['preset']} ({doc['started']})",
        "",
        f"Network: {doc['network']}. CPU: {m.get('cpu_model')} ({m.get('affinity_cores')} "
        f"cores; flags: {', '.join(m.get('cpu_flags', []))}); load at start "
        f"{m.get('load_average_at_start')}. Threads {THREADS} for every runtime.",
        "",
        "| configuration | 512x512 s (median) | 2048x1536 photo s | batch 4 in one call, s/img |"
        " vs PyTorch eager (512) |",
        "|---|---|---|---|---|",
    ]
    base = doc["torch"]["side_512_s"]["median"] if doc.get("torch") else None
    rows = [(f"ours, {r['label']}", r) for r in doc["inprocess"]]
    if doc.get("torch"):
        rows.append(("PyTorch eager (IOPaint's path)", doc["torch"]))
    for label, r in rows:
        med = r["side_512_s"]["median"]
        photo = r.get("photo_2048x1536_s", {}).get("median")
        b4 = r["batch4_one_call_s"]["median"] / 4
        speed = f"{base / med:.2f}x" if base else "-"
        photo_s = f"{photo:.3f}" if photo is not None else "(same crop as 512)"
        lines.append(f"| {label} | {med:.3f} | {photo_s} | {b4:.3f} | {speed} |")
    if doc.get("http"):
        lines += [
            "",
            "Over HTTP (the real server; 512x512 requests; closed loop):",
            "",
            "| provider | --max-batch-size | concurrency | img/s | p50 s | p95 s |",
            "|---|---|---|---|---|---|",
        ]
        for h in doc["http"]:
            for lvl in h["levels"]:
                lat = lvl["latency_s"]
                lines.append(
                    f"| {h['provider']} | {h['max_batch_size']} | {lvl['concurrency']} | "
                    f"{lvl['throughput_img_s']:.2f} | {lat['p50']:.3f} | {lat['p95']:.3f} |"
                )
            if "photo_2048x1536" in h:
                p = h["photo_2048x1536"]["latency_s"]
                lines.append(
                    f"| {h['provider']} | {h['max_batch_size']} | 1 (2048x1536 photo) | - | "
                    f"{p['p50']:.3f} | {p['p95']:.3f} |"
                )
    lines += ["", *[f"- {n}" for n in doc["notes"]], ""]
    return "\n".join(lines)


def run_preset(name: str, *, out: Path = RESULTS, repeats=None, concurrency=None, skip_http=False,
               skip_baseline=False, providers=None, fft: str = "matmul") -> int:  # fmt: skip
    from .machine import machine_info, versions

    p = PRESETS[name]
    repeats = repeats or p["repeats"]
    concurrency = tuple(concurrency or (1, 4))
    machine = machine_info()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    log(f"preset {name}: LaMa-style network, size {p['size']}, RANDOM weights")
    folder, src = prepare(p["size"], fft, THREADS)
    if providers is None:
        from server.models.providers import OpenVINOProvider

        providers = ["cpu"] + (
            ["openvino:f32", "openvino:bf16"] if OpenVINOProvider.available() else []
        )
    doc: dict[str, Any] = {
        "preset": name,
        "started": started,
        "network": f"LaMa-style FFC ResNet ({p['size']}; export.lama_like, RANDOM weights; "
        f"Fourier units exported as {fft})",
        "machine": machine,
        "versions": versions(),
        "inprocess": [],
        "torch": None,
        "http": [],
        "notes": [
            "RANDOM weights: timings hold for the real network of the same architecture; the "
            "images are noise",
            "2048x1536 photo, 80x60 px mask: the crop rule gives the model a 512x512 crop",
        ],
    }
    for prov in providers:
        log(f"in-process: ours on {prov}")
        r = inprocess(folder, prov, repeats, p["warmup"])
        r["label"] = prov
        doc["inprocess"].append(r)
        log(
            f"  512: {r['side_512_s']['median']:.3f} s; photo {r['photo_2048x1536_s']['median']:.3f} s"
        )
    if not skip_baseline:
        log("in-process: PyTorch eager")
        doc["torch"] = torch_eager(src, repeats, p["warmup"])
        log(f"  512: {doc['torch']['side_512_s']['median']:.3f} s")
    if not skip_http:
        for batch in (4, 1):
            log(f"HTTP: cpu, --max-batch-size {batch}")
            doc["http"].append(http(folder, "cpu", batch, concurrency, p["requests_per_client"]))
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}-{name}.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / f"{stamp}-{name}.md").write_text(markdown(doc))
    print(markdown(doc))
    log(f"wrote {out / f'{stamp}-{name}'}.json/.md")
    return 0


def main_from_args(args) -> int:
    """``python -m benchmarks --preset oneshot[-full]``: its common options (``--out``,
    ``--repeats``, ``--concurrency``, ``--skip-http``, ``--skip-baseline``), under the
    benchmarks' lock (one benchmark at a time: 2 cores)."""
    from .lock import BenchmarkLocked, exclusive

    try:
        with exclusive(RESULTS / ".lock", preset=args.preset, started=time.strftime("%H:%M:%S")):
            return run_preset(
                args.preset,
                out=args.out,
                repeats=args.repeats,
                concurrency=args.concurrency,
                skip_http=args.skip_http,
                skip_baseline=args.skip_baseline,
            )
    except BenchmarkLocked as exc:
        print(f"error: {exc}", flush=True)
        return 3
