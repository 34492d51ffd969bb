"""The results document (JSON), its Markdown tables and matplotlib plots.

JSON top level: ``machine``, ``versions``, ``settings``, ``results``, ``summary``;
``summary.speedup_vs_diffusers`` maps "<ours> vs <baseline> @ <size>/<steps> steps[ <recipe>]
[<path>]" to ours' speed / the baseline's speed (= baseline median latency / ours), > 1 = we are
faster; ``summary.vs_best_baseline`` gives, per recipe, the ratio against the FASTEST baseline
measured for it (the one that counts), ``summary.unet_step`` the per-UNet-call comparison, and
``results.targets`` the Targets table (``targets.py``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .recipes import recipe_key
from .stats import ratio

REQUIRED_KEYS = ("machine", "versions", "settings", "results", "summary")
STAGE_LABELS = {
    "request_decode": "request decode",
    "text_encoder": "text encoder",
    "vae_encoder": "VAE encode",
    "prepare_other": "prepare other",
    "unet": "UNet steps",
    "scheduler_other": "scheduler/glue",
    "vae_decoder": "VAE decode",
    "finish_other": "finish other",
    "compose": "compose",
    "response_encode": "response encode",
    "http_other": "HTTP/other",
}


# ----------------------------------------------------------------------------- summary


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours vs each baseline (diffusers, optimum-intel) on the same device class and recipe
    (size, steps, guidance, scheduler, decoder), whole images.

    In-process: ours' median latency vs the baseline's; with ``extrapolated`` on both sides also
    the extrapolated latencies (path "... extrapolated"). HTTP: the server's c=1 median latency
    (full request path: codec + HTTP included) vs the same baseline, when the shapes match.
    ``best`` marks the fastest baseline of the recipe."""
    rows = [r for r in results.get("inprocess", []) if r.get("mode", "image") == "image"]
    ours = [r for r in rows if r["impl"] == "ours"]
    base = [r for r in rows if r["impl"] != "ours"]
    out = []
    for b in base:
        key = (b["device_class"], recipe_key(b))
        same = [x for x in base if (x["device_class"], recipe_key(x)) == key]
        best = min(same, key=lambda x: x["latency_s"]["median"]) is b
        for o in ours:
            if (o["device_class"], recipe_key(o)) != key:
                continue
            out.append(_cmp(o["label"], b, o["latency_s"]["median"], "in-process", best))
            eo, eb = o.get("extrapolated"), b.get("extrapolated")
            if eo and eb and eo["steps"] == eb["steps"]:
                c = _cmp(o["label"], b, eo["latency_s"], f"{eo['steps']} steps extrapolated", best)
                c.update(
                    baseline_median_s=eb["latency_s"],
                    speedup=ratio(eb["latency_s"], eo["latency_s"]),
                )
                out.append(c)
        for h in results.get("http", []):
            if h.get("batching") != "on" or h["device_class"] != b["device_class"]:
                continue
            if not _http_matches(h, b):
                continue
            c1 = next((c for c in h.get("closed_loop", []) if c["concurrency"] == 1), None)
            if c1 is not None:
                out.append(_cmp(h["label"], b, c1["latency_s"]["median"], "http c=1", best))
    return out


def _http_matches(h: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether an HTTP run made the images ``b`` made: with ``quality`` the preset's recipe
    (recorded as ``recipe``) at the same size, else the default recipe at its size/steps."""
    if h.get("quality"):
        return (h.get("recipe"), h["width"], h["height"]) == (
            b.get("recipe", "default"),
            b["width"],
            b["height"],
        )
    return recipe_key({**h, "recipe": "default"}) == recipe_key(b)


def _cmp(
    ours_label: str, b: dict[str, Any], ours_s: float, path: str, best: bool = False
) -> dict[str, Any]:
    base_s = b["latency_s"]["median"]
    return {
        "ours": ours_label,
        "baseline": b["label"],
        "recipe": b.get("recipe", "default"),
        "size": f"{b['width']}x{b['height']}",
        "steps": b["steps"],
        "path": path,
        "ours_median_s": ours_s,
        "baseline_median_s": base_s,
        "speedup": ratio(base_s, ours_s),
        "best_baseline": best,
    }


def speedup_key(c: dict[str, Any]) -> str:
    recipe = "" if c.get("recipe", "default") == "default" else f" {c['recipe']}"
    return f"{c['ours']} vs {c['baseline']} @ {c['size']}/{c['steps']} steps{recipe} [{c['path']}]"


def vs_best(comps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (ours, recipe, path): the ratio against the fastest baseline, and every ratio."""
    out: dict[str, Any] = {}
    for c in comps:
        k = f"{c['ours']} @ {c['size']}/{c['steps']} steps {c['recipe']} [{c['path']}]"
        e = out.setdefault(k, {"best_baseline": None, "speedup_vs_best": None, "all": {}})
        e["all"][c["baseline"]] = c["speedup"]
        if c["best_baseline"]:
            e.update(best_baseline=c["baseline"], speedup_vs_best=c["speedup"])
    return out


def unet_steps(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One UNet call, ours vs each baseline at the same recipe shape (image runs' median call,
    or the baseline's ``unet_step`` measurement), with ours' error vs fp32 when measured."""
    rows = results.get("inprocess", [])
    ours = [r for r in rows if r["impl"] == "ours" and r.get("mode", "image") == "image"]
    out = []
    for o in ours:
        for b in rows:
            if b["impl"] == "ours" or recipe_key(b) != recipe_key(o):
                continue
            if b["device_class"] != o["device_class"]:
                continue
            a, c = o["unet_call_s"]["median"], b["unet_call_s"]["median"]
            out.append(
                {
                    "ours": o["label"],
                    "baseline": b["label"],
                    "recipe": o.get("recipe", "default"),
                    "size": f"{o['width']}x{o['height']}",
                    "unet_batch": 2 if float(o.get("guidance") or 7.5) > 1 else 1,
                    "ours_call_s": a,
                    "baseline_call_s": c,
                    "baseline_mode": b.get("mode", "image"),
                    "speedup": ratio(c, a),
                    "ours_unet_precision": (o.get("precisions") or {}).get("unet"),
                    "ours_max_rel_err": (o.get("unet_error") or {}).get("max_rel_err"),
                    "baseline_compile_s": b.get("compile_s")
                    if b["variant"].get("compile")
                    else None,
                }
            )
    return out


def batching_gain(results: dict[str, Any]) -> dict[str, float | None]:
    """Throughput with batching on / off, per served variant and concurrency (median)."""
    out: dict[str, float | None] = {}
    by = {(h["label"], h["batching"]): h for h in results.get("http", [])}
    for (label, mode), h in by.items():
        if mode != "on" or (label, "off") not in by:
            continue
        off = {c["concurrency"]: c for c in by[(label, "off")].get("closed_loop", [])}
        for c in h.get("closed_loop", []):
            o = off.get(c["concurrency"])
            if o is not None:
                out[f"{label} c={c['concurrency']}"] = ratio(
                    c["throughput_img_s"]["median"], o["throughput_img_s"]["median"]
                )
    return out


def build_summary(results: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    comps = comparisons(results)
    return {
        "speedup_vs_diffusers": {speedup_key(c): c["speedup"] for c in comps},
        "comparisons": comps,
        "vs_best_baseline": vs_best(comps),
        "unet_step": unet_steps(results),
        "batching_throughput_gain": batching_gain(results),
        "targets": {t["key"]: t["verdict"] for t in results.get("targets", [])},
        "notes": list(notes),
    }


def document(machine, versions, settings, results, notes) -> dict[str, Any]:
    return {
        "machine": machine,
        "versions": versions,
        "settings": settings,
        "results": results,
        "summary": build_summary(results, notes),
    }


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(doc: dict[str, Any], path: Path) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"results document lacks {missing}")
    path.write_text(json.dumps(_clean(doc), indent=2, default=float) + "\n")
    return path


# ----------------------------------------------------------------------------- markdown


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if abs(x) < 0.01 else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def stage_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, {stage: median seconds}) for each in-process config, plus the HTTP path at c=1:
    in-process stages + request codec + the unexplained rest (HTTP, batcher, base64, JSON)."""
    out = []
    for r in results.get("inprocess", []):
        if r.get("mode") == "unet_step":
            continue
        recipe = "" if r.get("recipe", "default") == "default" else f" {r['recipe']}"
        out.append(
            (f"{r['label']}{recipe} {r['width']}x{r['height']}/{r['steps']}", dict(r["stages_s"]))
        )
    for h in results.get("http", []):
        if h.get("batching") != "on":
            continue
        c1 = next((c for c in h.get("closed_loop", []) if c["concurrency"] == 1), None)
        ref = next(
            (
                r
                for r in results.get("inprocess", [])
                if r["impl"] == "ours"
                and r["label"] == h["label"]
                and r["width"] == h["width"]
                and r["height"] == h["height"]
                and r["steps"] == h["steps"]
            ),
            None,
        )
        if c1 is None or ref is None:
            continue
        stages = dict(ref["stages_s"])
        codec = ref.get("codec_s") or {}
        stages.update(
            {k: codec.get(k, 0.0) for k in ("request_decode", "compose", "response_encode")}
        )
        stages["http_other"] = max(0.0, c1["latency_s"]["median"] - sum(stages.values()))
        out.append((f"{h['label']} over HTTP c=1 {h['width']}x{h['height']}/{h['steps']}", stages))
    return out


def markdown(doc: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    m, s, res, summ = doc["machine"], doc["settings"], doc["results"], doc["summary"]
    lines = [f"## Benchmark `{s['preset']}` ({s['started']})", ""]
    gpus = ", ".join(g["name"] for g in m.get("gpus") or []) or "no GPU"
    steal = m.get("cpu_steal_during_run")
    steal = f", CPU steal during the run {steal:.1%}" if steal is not None else ""
    lines.append(
        f"Machine: {m.get('cpu_model')} ({m.get('physical_cores')} cores, flags "
        f"{' '.join(m.get('cpu_flags') or []) or '-'}), {m.get('memory_gb')} GB, {gpus}; "
        f"load average at start {_f((m.get('load_average_at_start') or [None])[0], 2)}{steal}. "
        f"Threads: {s.get('threads')}. Versions: "
        + ", ".join(
            f"{k} {v}"
            for k, v in doc["versions"].items()
            if k in ("onnxruntime", "onnxruntime-gpu", "torch", "diffusers") and v
        )
        + "."
    )
    lines += ["", f"Model: {s['model_description']}.", ""]
    for note in summ.get("notes", []):
        lines.append(f"- {note}")
    if summ.get("notes"):
        lines.append("")

    lines += targets_md(res.get("targets", []), m)
    rows = []
    for r in res.get("inprocess", []):
        lat = r["latency_s"]
        step_only = r.get("mode") == "unet_step"
        ext = r.get("extrapolated")
        rows.append(
            [
                r["label"],
                r.get("recipe", "default") + (" (UNet step only)" if step_only else ""),
                f"{r['width']}x{r['height']}",
                str(r["steps"]),
                _precision_label(r.get("precisions")),
                _f(lat["p50"]),
                _f(lat["p95"]),
                f"{_f(lat['min'])} / {_f(lat['median'])} / {_f(lat['max'])}",
                str(lat["n"]),
                _f(r["per_step_s"]["median"]),
                _f(r["unet_call_s"]["median"]),
                f"{_f(ext['latency_s'])} ({ext['steps']})" if ext else "-",
                _f(r.get("compile_s")) if (r.get("variant") or {}).get("compile") else "-",
                _f(r.get("peak_rss_mb"), 4),
                _f(r.get("gpu_peak_mb"), 4),
            ]
        )
    if rows:
        lines += ["### Per-image latency, one request at a time (warm; seconds)", ""]
        lines += _table(
            [
                "configuration",
                "recipe",
                "size",
                "steps",
                "computes in",
                "p50",
                "p95",
                "min / median / max",
                "n",
                "per step",
                "UNet call",
                "extrapolated (steps)",
                "compile s",
                "peak RSS MB",
                "GPU MB",
            ],
            rows,
        )
        lines.append("")
        if any(r.get("extrapolated") for r in res.get("inprocess", [])):
            lines.append(
                "Extrapolated: EXTRAPOLATED, not measured: the measured image + (N - measured "
                "steps) x the measured time per denoising iteration (fixed stages stay)."
            )
            lines.append("")

    comps = summ.get("comparisons", [])
    if comps:
        lines += [
            "### Speed vs the baselines (ours / baseline per-image speed; > 1 = we are faster; "
            "* = the fastest baseline of that recipe)",
            "",
        ]
        lines += _table(
            [
                "ours",
                "baseline",
                "recipe",
                "size/steps",
                "path",
                "ours median s",
                "baseline median s",
                "speedup",
            ],
            [
                [
                    c["ours"],
                    c["baseline"] + (" *" if c.get("best_baseline") else ""),
                    c.get("recipe", "default"),
                    f"{c['size']}/{c['steps']}",
                    c["path"],
                    _f(c["ours_median_s"]),
                    _f(c["baseline_median_s"]),
                    f"**{_f(c['speedup'], 2)}x**" if c["speedup"] else "-",
                ]
                for c in comps
            ],
        )
        lines.append("")
    lines += unet_step_md(summ.get("unet_step", []))

    http_rows = []
    for h in res.get("http", []):
        for c in h.get("closed_loop", []):
            t, lat = c["throughput_img_s"], c["latency_s"]
            http_rows.append(
                [
                    h["label"],
                    _batching(h),
                    f"{h['width']}x{h['height']}/{h['steps']}",
                    str(c["concurrency"]),
                    f"{c['requests']} x {c['repeats_done']}",
                    f"{_f(t['median'])} [{_f(t['min'])}-{_f(t['max'])}]",
                    _f(lat["p50"]),
                    _f(lat["p95"]),
                    _f(lat["p99"]),
                    str(sum(v for v in c.get("errors", {}).values())),
                    _f(h.get("peak_rss_mb"), 4),
                ]
            )
    if http_rows:
        lines += ["### HTTP server, closed loop (images/s; latency s per request)", ""]
        lines += _table(
            [
                "server",
                "batching",
                "size/steps",
                "concurrency",
                "requests x runs",
                "throughput median [min-max]",
                "p50",
                "p95",
                "p99",
                "errors",
                "server peak RSS MB",
            ],
            http_rows,
        )
        lines.append("")
    ol_rows = []
    for h in res.get("http", []):
        o = h.get("open_loop")
        if o:
            lat = o["latency_s"]
            ol_rows.append(
                [
                    h["label"],
                    _batching(h),
                    _f(o["offered_rps"]),
                    _f(o["throughput_img_s"]),
                    f"{o['ok']}/{o['requests']}",
                    _f(lat["p50"]),
                    _f(lat["p95"]),
                    _f(lat["p99"]),
                    str(sum(o.get("errors", {}).values())),
                    str(o.get("shed", 0)),
                ]
            )
    if ol_rows:
        lines += ["### HTTP server, open loop (Poisson arrivals)", ""]
        lines += _table(
            [
                "server",
                "batching",
                "offered req/s",
                "achieved img/s",
                "ok/sent",
                "p50 s",
                "p95 s",
                "p99 s",
                "errors",
                "shed",
            ],
            ol_rows,
        )
        lines.append("")
    gain = summ.get("batching_throughput_gain") or {}
    if gain:
        lines.append(
            "Batching on / off throughput: "
            + ", ".join(f"{k} {_f(v, 2)}x" for k, v in gain.items())
            + ". Batching off = one request at a time (``--max-batch-size 1 --instances 1``)."
        )
        lines.append("")
    for h in res.get("http", []):
        inst = h.get("instances")
        if inst and h["batching"] == "on":
            lines += [
                f"Model instances, {h['label']} batching on: {inst['count']} x "
                f"{inst['threads']} thread(s): {inst['reason']}.",
                "",
            ]

    srows = stage_rows(res)
    if srows:
        keys = [k for k in STAGE_LABELS if any(k in st for _, st in srows)]
        lines += ["### Stage breakdown (median seconds per image)", ""]
        lines += _table(
            ["configuration", *[STAGE_LABELS[k] for k in keys], "sum"],
            [[lab, *[_f(st.get(k)) for k in keys], _f(sum(st.values()))] for lab, st in srows],
        )
        lines.append("")

    lines += peaks_md(res.get("peak", {}))
    floor = res.get("compute_floor", [])
    if floor:
        lines += [
            "### Compute floor (each run against the peak of the precision it computes in)",
            "",
        ]
        lines.append(
            "FLOPs: MatMul/Gemm/Conv counted from each exported ONNX graph at the recipe's "
            "shapes (UNet at the recipe's batch). Fraction of peak: the UNet's GFLOP/s over "
            "the peak of the UNet's precision. Image floor: the sum over components of their "
            "FLOPs over the peak of each component's precision (the UNet once per call)."
        )
        lines.append("")
        lines += _table(
            [
                "configuration",
                "UNet computes in",
                "UNet GFLOP/call",
                "UNet call s",
                "achieved GFLOP/s",
                "peak GFLOP/s (which)",
                "fraction of peak",
                "image floor s",
                "image median s",
            ],
            [
                [
                    f["label"],
                    f.get("unet_precision") or "-",
                    _f(f.get("unet_gflop_per_call")),
                    _f(f["unet_call_s"]),
                    _f(f["achieved_gflops"]),
                    f"{_f(f['peak_gflops'])} ({f.get('peak_key')})",
                    _f(f["fraction_of_peak"], 2),
                    _f(f.get("image_floor_s")),
                    _f(f.get("image_median_s")),
                ]
                for f in floor
            ],
        )
        lines.append("")
        above = sorted({f["label"] for f in floor if (f.get("fraction_of_peak") or 0) > 1.0})
        if above:
            lines += [
                f"**Above 100% of the measured peak: {', '.join(above)}.** No run can beat the "
                "peak of its precision, so the matmul probe was disturbed (something else ran "
                "on the cores while it measured) or underestimates this CPU: the fractions and "
                "image floors above are not meaningful. Re-measure the peaks alone "
                "(`python -m benchmarks --preset ci` prints them) or state them with "
                "`--peak-gflops`.",
                "",
            ]
    skipped = res.get("skipped", [])
    if skipped:
        lines += ["Skipped or reduced:", ""] + [f"- {x}" for x in skipped] + [""]
    if plots:
        lines.append("Plots: " + ", ".join(f"[{k}]({Path(v).name})" for k, v in plots.items()))
        lines.append("")
    return "\n".join(lines)


def _precision_label(precs: dict[str, str] | None) -> str:
    if not precs:
        return "-"
    values = set(precs.values())
    if len(values) == 1:
        return next(iter(values))
    short = {"text_encoder": "text", "vae_encoder": "vae enc", "vae_decoder": "vae dec",
             "taesd_decoder": "taesd dec", "taesd_encoder": "taesd enc"}  # fmt: skip
    return ", ".join(f"{short.get(k, k)} {v}" for k, v in precs.items())


def targets_md(targets: list[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    if not targets:
        return []
    flags = " ".join(machine.get("cpu_flags") or []) or "-"
    cores = machine.get("affinity_cores") or machine.get("logical_cores")
    lines = [
        "### Targets (checked on this machine: "
        f"{machine.get('cpu_model')}, {cores} cores, CPU flags {flags})",
        "",
    ]
    rows = []
    for t in targets:
        unit = t["unit"]
        val = t["measured"]
        shown = "-" if val is None else (f"{val:.2f}{unit}" if unit != "s" else f"{val:.2f} s")
        goal = f"{t['op']} {t['threshold']:g}{'' if unit == 's' else unit}" + (
            " s" if unit == "s" else ""
        )
        why = t.get("not_applicable") or t.get("out_of_reach")
        verdict = t["verdict"] + (f" ({why})" if why else "")
        rows.append([t["target"], goal, shown, f"**{verdict}**", t.get("how") or "-"])
    lines += _table(["target", "goal", "measured", "verdict", "how"], rows)
    lines.append("")
    return lines


def _batching(h: dict[str, Any]) -> str:
    """ "on (max 4, 2 instances x 1 thread)": the server's batching and its model instances."""
    inst = h.get("instances") or {}
    extra = ""
    if inst.get("count", 1) > 1:
        extra = f", {inst['count']} instances x {inst['threads']} thread(s)"
    return f"{h['batching']} (max {h['max_batch_size']}{extra})"


def unet_step_md(steps: list[dict[str, Any]]) -> list[str]:
    if not steps:
        return []
    lines = ["### One UNet call (median seconds; > 1 = ours faster)", ""]
    lines += _table(
        ["ours", "baseline", "recipe", "size", "batch", "ours s", "baseline s", "speedup",
         "ours UNet computes in", "ours max rel err vs fp32", "baseline compile s"],
        [
            [
                x["ours"], x["baseline"] + (" (UNet alone)" if x["baseline_mode"] == "unet_step"
                                            else ""),
                x["recipe"], x["size"], str(x["unet_batch"]), _f(x["ours_call_s"]),
                _f(x["baseline_call_s"]),
                f"**{_f(x['speedup'], 2)}x**" if x["speedup"] else "-",
                x.get("ours_unet_precision") or "-",
                "-" if x.get("ours_max_rel_err") is None else f"{x['ours_max_rel_err']:.2%}",
                _f(x.get("baseline_compile_s")),
            ]
            for x in steps
        ],
    )  # fmt: skip
    lines.append("")
    return lines


def peaks_md(peak: dict[str, Any]) -> list[str]:
    probes, peaks = peak.get("probes") or {}, peak.get("peaks") or {}
    if not probes:
        return []
    lines = ["### Matmul peak per precision (measured: the best probe of each)", ""]
    rows = []
    for key, e in peaks.items():
        others = ", ".join(f"{n} {_f(g)}" for n, g in e["probes"].items())
        rows.append([key, f"**{_f(e['gflops'])}**", e["source"], others])
    lines += _table(["precision", "peak GFLOP/s", "best probe", "all probes (GFLOP/s)"], rows)
    lines.append("")
    lines.append(f"Method: {peak.get('method', '-')}. Source: {peak.get('source', 'measured')}.")
    lines.append("")
    for name, why in (peak.get("skipped") or {}).items():
        lines += [f"Not probed: {name} ({why}).", ""]
    return lines


# ----------------------------------------------------------------------------- plots


def plots(doc: dict[str, Any], stem: Path) -> dict[str, str]:
    """latency vs concurrency, throughput vs concurrency, stage breakdown -> PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    out: dict[str, str] = {}
    http = [h for h in res.get("http", []) if h.get("closed_loop")]
    if http:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for h in http:
            cs = [c["concurrency"] for c in h["closed_loop"]]
            lab = f"{h['label']} batching {h['batching']}"
            p50 = ax.plot(
                cs, [c["latency_s"]["p50"] for c in h["closed_loop"]], "o-", label=f"{lab} p50"
            )
            ax.plot(
                cs,
                [c["latency_s"]["p95"] for c in h["closed_loop"]],
                "s--",
                color=p50[0].get_color(),
                label=f"{lab} p95",
            )
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("latency per request (s)")
        _concurrency_axis(ax, http)
        ax.set_ylim(bottom=0)
        ax.set_title(f"Latency vs concurrency ({doc['settings']['preset']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out["latency vs concurrency"] = str(path)

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for h in http:
            cs = [c["concurrency"] for c in h["closed_loop"]]
            med = [c["throughput_img_s"]["median"] for c in h["closed_loop"]]
            lo = [
                m - c["throughput_img_s"]["min"] for m, c in zip(med, h["closed_loop"], strict=True)
            ]
            hi = [
                c["throughput_img_s"]["max"] - m for m, c in zip(med, h["closed_loop"], strict=True)
            ]
            ax.errorbar(
                cs,
                med,
                yerr=[lo, hi],
                fmt="o-",
                capsize=3,
                label=f"{h['label']} batching {h['batching']}",
            )
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("throughput (images/s, median [min, max])")
        _concurrency_axis(ax, http)
        ax.set_ylim(bottom=0)
        ax.set_title(f"Throughput vs concurrency ({doc['settings']['preset']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = stem.with_name(stem.name + "-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out["throughput vs concurrency"] = str(path)

    srows = stage_rows(res)
    if srows:
        keys = [k for k in STAGE_LABELS if any(k in st for _, st in srows)]
        fig, ax = plt.subplots(figsize=(9, 0.6 * len(srows) + 1.8))
        left = [0.0] * len(srows)
        cmap = plt.get_cmap("tab20")
        for i, k in enumerate(keys):
            vals = [max(0.0, st.get(k, 0.0)) for _, st in srows]
            ax.barh(range(len(srows)), vals, left=left, color=cmap(i), label=STAGE_LABELS[k])
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_yticks(range(len(srows)))
        ax.set_yticklabels([lab for lab, _ in srows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds per image (median)")
        ax.set_title(f"Stage breakdown ({doc['settings']['preset']})")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
        fig.tight_layout()
        path = stem.with_name(stem.name + "-stages.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out["stage breakdown"] = str(path)
    return out


def _concurrency_axis(ax, http) -> None:
    levels = sorted({c["concurrency"] for h in http for c in h["closed_loop"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.minorticks_off()


# ----------------------------------------------------------------------------- README


def update_readme(readme: Path, preset: str, table_md: str, json_name: str) -> bool:
    """Replace the block between ``<!-- latest:<preset> -->`` and ``<!-- /latest:<preset> -->``
    in ``readme`` with ``table_md``. Returns False when the markers are absent."""
    text = readme.read_text()
    begin, end = f"<!-- latest:{preset} -->", f"<!-- /latest:{preset} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    lines = table_md.strip().splitlines()
    if lines and lines[0].startswith("## "):  # the README gives its own heading
        lines[0] = f"_{lines[0][3:].strip()}, from `results/{json_name}`._"
    else:
        lines.insert(0, f"_From `results/{json_name}`._\n")
    body = begin + "\n" + "\n".join(lines) + "\n" + end
    readme.write_text(pattern.sub(lambda _m: body, text))
    return True
