"""The HTTP phase of a benchmark run: one served variant of ours, in a server subprocess, under
closed-loop load at each concurrency level and then Poisson open-loop load.

``measure`` returns the phase's record (one entry of ``results.http`` in the run's JSON); the
runner owns the time budget (``available_s``), the notes (``skip``) and the run's exit status.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .presets import OursVariant, Preset
from .stats import summarize


@dataclasses.dataclass(frozen=True)
class Served:
    """How the variant is served: threads per server, the server's log folder, untimed
    sequential requests first, and the closed-loop concurrency levels (``()``: the preset's)."""

    threads: int
    log_dir: Path
    warmup: int
    concurrency: tuple[int, ...] = ()


def batching(mbs: int) -> str:
    """ "on" when the server may batch requests (``--max-batch-size`` > 1), else "off"."""
    return "on" if mbs > 1 else "off"


def recipe_name(p: Preset, v: OursVariant) -> str:
    """The recipe an HTTP run of ``v`` makes: ``quality=low`` on the fast model is the fast
    recipe (with TAESD encoding on a ``--tiny-vae-encode`` view), else the default one."""
    if p.http_quality != "low" or not p.fast_model:
        return "default"
    return "fast-tiny-encode" if v.tiny_vae_encode else "fast"


def payload(p: Preset, model_name: str):
    """The request every client sends: the preset's scene and mask as PNGs, its size and seed,
    and either ``quality`` (the model's preset for that tier) or steps + guidance."""
    from .inputs import edit_mask, mask_png, png_bytes, scene
    from .loadgen import Payload

    w, h = p.http_width, p.http_height
    fields = {
        "model": model_name,
        "prompt": p.prompt,
        "n": "1",
        "size": f"{w}x{h}",
        "seed": str(p.seed),
        "response_format": "b64_json",
        "output_format": "png",
    }
    if p.http_quality:  # the model's preset for that tier (low: the fast recipe)
        fields["quality"] = p.http_quality
    else:
        fields.update(steps=str(p.http_steps), guidance_scale=str(p.guidance))
    return Payload(png_bytes(scene(w, h)), mask_png(edit_mask(w, h)), fields)


def plan(
    p: Preset, levels: list[int], l1: float, available_s: float
) -> tuple[list[int], int, int, int, str | None]:
    """(levels, requests per client, repeats, open-loop requests) that fit ``available_s`` at
    ``l1`` seconds per sequential request, and a note when the preset's sweep was reduced."""
    levels = list(levels)
    rpc, reps, n_open = p.requests_per_client, p.load_repeats, p.open_loop_requests

    def est() -> float:
        sweep = reps * sum(c * rpc for c in levels) * l1
        return sweep + n_open * l1 / max(p.open_loop_load, 0.1)

    original = (list(levels), rpc, reps, n_open)
    while est() > available_s:
        if reps > 1:
            reps -= 1
        elif rpc > 1:
            rpc -= 1
        elif n_open > 8:
            n_open = max(8, n_open // 2)
        elif n_open > 0:
            n_open = 0
        elif len(levels) > 1:
            levels.pop()  # the last resort: it loses the most loaded point
        else:
            break
    note = None
    if (levels, rpc, reps, n_open) != original:
        note = (
            f"HTTP sweep reduced to fit the time budget ({available_s:.0f} s left for "
            f"it; ~{l1:.2f} s per request): levels {levels}, {rpc} request(s) per "
            f"client, {reps} run(s), open loop {n_open} requests"
        )
    return levels, rpc, reps, n_open, note


def merge_errors(runs) -> dict[str, int]:
    """Error counts by kind, summed over closed-loop runs."""
    out: dict[str, int] = {}
    for r in runs:
        for k, v in r.get("errors", {}).items():
            out[k] = out.get(k, 0) + v
    return out


def measure(
    p: Preset,
    v: OursVariant,
    folder: Path,
    mbs: int,
    served: Served,
    *,
    available_s: Callable[[], float],
    sdk_check: bool,
    log: Callable[[str], None],
    skip: Callable[[str], None],
) -> tuple[dict[str, Any], bool]:
    """Serve ``folder`` with ``--max-batch-size mbs`` and load it: warm-up, one request through
    the OpenAI SDK (``sdk_check``), the closed-loop sweep (reduced to fit ``available_s()``,
    read after the warm-up) and, with batching on, the open loop. Returns the record and
    whether something failed (the failure is noted through ``skip``)."""
    from .loadgen import ModelServer, closed_loop, open_loop, sdk_edit
    from .memory import GpuSampler

    mode = batching(mbs)
    failed = False
    rec: dict[str, Any] = {
        "label": v.label,
        "variant": dataclasses.asdict(v),
        "device_class": v.device_class,
        "max_batch_size": mbs,
        "batching": mode,
        "width": p.http_width,
        "height": p.http_height,
        "steps": p.http_steps,
        "quality": p.http_quality,
        "recipe": recipe_name(p, v),
        "closed_loop": [],
        "open_loop": None,
    }
    log(f"HTTP {v.label}, --max-batch-size {mbs} (batching {mode}) ...")
    body = payload(p, folder.name)
    timeout = p.request_timeout_s
    gpu = GpuSampler()
    srv = ModelServer(
        folder,
        folder.name,
        provider=v.provider,  # "openvino:bf16" carries its precision hint
        threads=served.threads,
        max_batch_size=mbs,
        request_timeout_s=timeout,
        log_dir=served.log_dir,
        # batching off is sequential: one request at a time, so one instance too
        instances=None if mbs > 1 else 1,
        static_shapes=v.static_shapes,
    )
    try:
        with gpu, srv:
            gpu.add(srv.proc.pid)
            rec["startup_s"] = srv.startup_s
            rec["instances"] = srv.card().get("instances")
            log(
                f"  server ready in {srv.startup_s:.1f} s ({srv.base}); instances {rec['instances']}"
            )
            warm = [
                asyncio.run(closed_loop(srv.base, body, 1, 1, timeout))
                for _ in range(max(1, served.warmup))
            ]
            if mbs > 1:  # warm the batched shapes too
                warm.append(asyncio.run(closed_loop(srv.base, body, mbs, mbs, timeout)))
            if any(w["errors"] for w in warm):
                raise RuntimeError(f"warm-up requests failed: {warm[-1].get('last_error')}")
            l1 = min(w["latency_s"]["min"] for w in warm[: max(1, len(warm) - 1)])
            rec["warmup"] = {
                "requests": sum(w["requests"] for w in warm),
                "sequential_latency_s": l1,
            }
            if sdk_check:
                try:
                    rec["sdk_check"] = sdk_edit(
                        srv.base, body, folder.name, p.http_width, p.http_height, timeout
                    )
                    log(
                        f"  OpenAI SDK request ok: {rec['sdk_check']['latency_s']:.3f} s,"
                        f" image {rec['sdk_check']['size']}"
                    )
                except Exception as exc:  # noqa: BLE001
                    failed = True
                    rec["sdk_check"] = {"error": f"{type(exc).__name__}: {exc}"}
                    skip(f"OpenAI SDK request failed: {exc}")
            levels, rpc, reps, n_open, note = plan(
                p, list(served.concurrency or p.concurrency), l1, available_s()
            )
            if note:
                skip(note)
            for c in levels:
                runs = [
                    asyncio.run(closed_loop(srv.base, body, c, c * rpc, timeout))
                    for _ in range(reps)
                ]
                lat = [x for r in runs for x in r.pop("latencies_s")]
                entry = {
                    "concurrency": c,
                    "requests": c * rpc,
                    "repeats_done": len(runs),
                    "throughput_img_s": summarize([r["throughput_img_s"] or 0 for r in runs]),
                    "latency_s": summarize(lat),
                    "errors": merge_errors(runs),
                    "runs": runs,
                }
                rec["closed_loop"].append(entry)
                log(
                    f"  c={c:>2}: {entry['throughput_img_s']['median']:.3f} img/s, p50 "
                    f"{entry['latency_s']['p50']:.3f} s, p95 "
                    f"{entry['latency_s']['p95']:.3f} s, errors {entry['errors'] or 0}"
                )
            if n_open and mode == "on" and rec["closed_loop"]:
                best = max(c["throughput_img_s"]["median"] for c in rec["closed_loop"])
                rate = p.open_loop_load * best
                deadline = max(30.0, 3 * n_open / rate + 10 * l1)
                o = asyncio.run(
                    open_loop(
                        srv.base, body, rate, n_open, timeout, deadline_s=deadline, seed=p.seed
                    )
                )
                o.pop("latencies_s", None)
                rec["open_loop"] = o
                log(
                    f"  open loop {rate:.3f} req/s: {o['ok']}/{n_open} ok, p50 "
                    f"{o['latency_s']['p50']:.3f} s, p95 {o['latency_s']['p95']:.3f} s"
                )
    except Exception as exc:  # noqa: BLE001 - note the failure, keep the rest of the run
        failed = True
        skip(f"HTTP {v.label} batching {mode}: {type(exc).__name__}: {exc}")
    rec["peak_rss_mb"] = srv.peak_rss_mb
    rec["gpu_peak_mb"] = gpu.peak_mb
    return rec, failed
