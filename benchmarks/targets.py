"""The Targets table: the fast-paths issue's goals, checked on the machine the benchmark ran on,
every ratio from measurements of the same run.

Each target says what it applies to (``applies``). When this run does not match (another
model, size, core count, no native bf16), its verdict is ``n/a`` with the reason, and the
measured value is still shown; a target whose inputs were not measured says ``not measured``.

How the numbers are taken:
- ours = ``--provider auto`` (``AUTO_LABEL``), the default a user gets, wherever the run
  measured it (else the best of our configurations); the ``fast_auto_vs_best`` row checks that
  it is the fast path: its end-to-end time within 5% of the fastest configuration of ours;
- ours, fast recipe: in-process for ratios (diffusers is measured in-process too); "end to
  end" = the HTTP request at concurrency 1 (``quality=low``: the request path, codec included)
  when measured, else in-process;
- diffusers' default recipe in fp32: 25 steps at guidance 7.5, extrapolated from the measured
  steps (``recipes.extrapolate``, labelled so in the report);
- the compiled baselines: warm calls only (compile time is reported apart);
- default-recipe UNet step: our UNet call at batch 2 (median, from the default-recipe images)
  vs PyTorch's compiled bf16 UNet call at the same shape; the error is ours vs ONNX Runtime fp32
  on the same denoising inputs (``inprocess.unet_error_vs_fp32``);
- the latency goal against the CPU: the row names the fast recipe's compute floor (the lowest
  of our configurations in the compute-floor table) and, when the floor is above the goal,
  says it is out of reach on this CPU (the verdict stays FAIL);
- the fast recipe with TAESD encoding too (``fast-tiny-encode``: ours served as
  ``--tiny-vae-encode`` writes the model, diffusers built with ``vae=AutoencoderTiny``): the
  same two ratios as the fast recipe's against PyTorch, like for like; supplementary rows, not
  goals of the issue (which names the fast recipe with the full VAE encoder);
- batching: closed-loop throughput with batching on (the server's defaults: step-level
  batching, and the model instances it measures at load) over batching off (one request at a
  time: ``--max-batch-size 1 --instances 1``), at concurrency 12, on the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAST_CONDITIONS = "full SD 1.5 architecture, 512x512, 2-core CPU with native bf16"
#: the label of ``--provider auto`` over the plain export (presets.OursVariant.label)
AUTO_LABEL = "ours auto"


@dataclass(frozen=True)
class Target:
    key: str
    group: str  # the preset's ``targets`` entry that enables it
    text: str
    op: str  # "<=" | ">="
    threshold: float
    unit: str  # "s" | "x" | "%"
    applies: str


TARGETS: tuple[Target, ...] = (
    Target("fast_auto_vs_best", "fast", "Fast recipe end to end: --provider auto (the default) "
           "over the fastest configuration of ours in this run", "<=", 1.05, "x",
           FAST_CONDITIONS),
    Target("fast_latency", "fast", "Fast recipe (4 steps, no guidance, TAESD decode): seconds "
           "per image end to end", "<=", 6.0, "s", FAST_CONDITIONS),
    Target("fast_vs_diffusers_default_fp32", "fast", "Fast recipe vs diffusers' default recipe "
           "(25 steps, guidance 7.5) in fp32", ">=", 30.0, "x", FAST_CONDITIONS),
    Target("fast_vs_diffusers_bf16_eager", "fast", "Fast recipe vs diffusers eager, bf16 "
           "weights (+ channels_last), same recipe", ">=", 1.5, "x", FAST_CONDITIONS),
    Target("fast_vs_diffusers_bf16_compiled", "fast", "Fast recipe vs diffusers torch.compile "
           "with freezing (bf16), same recipe, compile time apart", ">=", 1.2, "x",
           FAST_CONDITIONS),
    Target("fast_tiny_encode_vs_diffusers_bf16_eager", "fast", "Supplementary, like for like: "
           "fast recipe with TAESD encoding too (--tiny-vae-encode) vs diffusers eager bf16 with "
           "vae=AutoencoderTiny", ">=", 1.5, "x", FAST_CONDITIONS),
    Target("fast_tiny_encode_vs_diffusers_bf16_compiled", "fast", "Supplementary, like for "
           "like: the same vs diffusers torch.compile with freezing (bf16) with "
           "vae=AutoencoderTiny, compile time apart", ">=", 1.2, "x", FAST_CONDITIONS),
    Target("default_step_vs_compiled", "default_step", "Default recipe, one batch-2 UNet step: "
           "vs PyTorch bf16 compiled with freezing", ">=", 1.3, "x",
           "full SD 1.5 architecture, 512x512, CPU with native bf16"),
    Target("default_step_error", "default_step", "Default recipe UNet step: max relative error "
           "of ours vs fp32", "<=", 1.5, "%", "the same run as the step above"),
    Target("batching_c12", "batching", "Batching on the tiny model at concurrency 12: "
           "throughput over sequential (batching off)", ">=", 1.5, "x", "tiny model"),
)  # fmt: skip


def _med(rec: dict[str, Any] | None, field: str = "latency_s") -> float | None:
    if not rec:
        return None
    return (rec.get(field) or {}).get("median")


def _pick(rows, best_field: str = "latency_s", **match) -> dict[str, Any] | None:
    """The lowest-median record among ``rows`` whose fields (``variant.*`` too) match."""

    def ok(r) -> bool:
        for k, want in match.items():
            got = r.get("variant", {}).get(k[8:]) if k.startswith("variant_") else r.get(k)
            if got != want:
                return False
        return True

    found = [r for r in rows if ok(r) and _med(r, best_field) is not None]
    return min(found, key=lambda r: _med(r, best_field)) if found else None


def _ours(rows, best_field: str = "latency_s", **match) -> dict[str, Any] | None:
    """auto's record among ``rows`` matching ``match``, else the best of ours."""
    return _pick(rows, best_field, impl="ours", label=AUTO_LABEL, **match) or _pick(
        rows, best_field, impl="ours", **match
    )


def _c1(h: dict[str, Any]) -> float | None:
    """An HTTP record's median latency at concurrency 1 with batching on (fast recipe)."""
    if h.get("recipe") != "fast" or h.get("batching") != "on":
        return None
    c1 = next((c for c in h.get("closed_loop", []) if c["concurrency"] == 1), None)
    return c1["latency_s"]["median"] if c1 else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if (num and den) else None


def conditions(preset, machine: dict[str, Any]) -> dict[str, str | None]:
    """Per group, None when this run matches the targets' conditions, else why not."""
    cores = machine.get("affinity_cores") or machine.get("logical_cores")
    bf16 = bool(machine.get("cpu_native_bf16"))
    full = preset.model == "sd15-random"
    size = any((r.width, r.height) == (512, 512) for r in preset.all_recipes)
    why = []
    if not full:
        why.append(f"model is {preset.model!r}, not the full architecture")
    if not size:
        why.append("not 512x512")
    if not bf16:
        why.append("this CPU has no native bf16 (AVX512-BF16/AMX)")
    step_why = list(why)
    if cores != 2:
        why.append(f"{cores} cores, not 2")
    return {
        "fast": "; ".join(why) or None,
        "default_step": "; ".join(step_why) or None,
        "batching": None if preset.model == "tiny" else f"model is {preset.model!r}, not tiny",
    }


def measure(results: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """{target key: (measured value, how)} from a run's results."""
    rows = results.get("inprocess", [])
    fast = dict(recipe="fast", mode="image")
    ours = _ours(rows, **fast)
    ours_s = _med(ours)
    served = [(_c1(h), h["label"]) for h in results.get("http", []) if _c1(h) is not None]
    best = min(served) if served else None
    e2e = next((x for x in served if x[1] == AUTO_LABEL), best)
    out: dict[str, tuple[float | None, str]] = {}
    if e2e and best:
        out["fast_auto_vs_best"] = (
            _ratio(e2e[0], best[0]),
            f"{e2e[1]} {e2e[0]:.3g} s / {best[1]} {best[0]:.3g} s, HTTP c=1 medians",
        )
    else:
        fastest = _pick(rows, impl="ours", **fast)
        out["fast_auto_vs_best"] = (
            _ratio(ours_s, _med(fastest)),
            f"{ours and ours['label']} / {fastest and fastest['label']}, in-process medians",
        )
    if e2e:
        out["fast_latency"] = (e2e[0], f"{e2e[1]}, HTTP c=1 median (quality=low)")
    else:
        out["fast_latency"] = (ours_s, f"{ours and ours['label']}, in-process median")
    floor = fast_floor(results)
    if floor is not None:
        value, how = out["fast_latency"]
        out["fast_latency"] = (value, f"{how}; compute floor {floor:.2f} s (see below)")
    d32 = _pick(rows, impl="diffusers", recipe="default", mode="image", variant_dtype="fp32")
    d32_s = (d32 or {}).get("extrapolated", {}).get("latency_s")
    out["fast_vs_diffusers_default_fp32"] = (
        _ratio(d32_s, ours_s),
        f"{d32 and d32['label']} {d32 and d32.get('extrapolated', {}).get('steps')} steps "
        f"(extrapolated) {d32_s and round(d32_s, 2)} s / ours {ours_s and round(ours_s, 3)} s",
    )
    out.update(_vs_pytorch(rows, "fast", "fast"))
    out.update(_vs_pytorch(rows, "fast-tiny-encode", "fast_tiny_encode"))
    step = dict(recipe="default")
    ours_d = _ours(rows, "unet_call_s", mode="image", **step)
    comp = _pick(rows, "unet_call_s", impl="diffusers", variant_dtype="bf16",
                 variant_compile=True, mode="unet_step", **step)  # fmt: skip
    a, b = _med(ours_d, "unet_call_s"), _med(comp, "unet_call_s")
    out["default_step_vs_compiled"] = (
        _ratio(b, a),
        f"{comp and comp['label']} {b and round(b, 3)} s / ours {a and round(a, 3)} s per "
        "batch-2 UNet call",
    )
    err = (ours_d or {}).get("unet_error", {}).get("max_rel_err")
    unet_prec = (ours_d or {}).get("precisions", {}).get("unet")
    out["default_step_error"] = (
        err * 100 if err is not None else None,
        f"UNet computes {unet_prec}; vs ONNX Runtime fp32 on the run's denoising inputs",
    )
    gain = None
    for h in results.get("http", []):
        if h.get("batching") != "on":
            continue
        off = next(
            (x for x in results["http"] if x["label"] == h["label"] and x["batching"] == "off"),
            None,
        )
        on12 = next((c for c in h.get("closed_loop", []) if c["concurrency"] == 12), None)
        off12 = next(
            (c for c in (off or {}).get("closed_loop", []) if c["concurrency"] == 12), None
        )
        if on12 and off12:
            gain = _ratio(on12["throughput_img_s"]["median"], off12["throughput_img_s"]["median"])
    out["batching_c12"] = (gain, "closed loop, c=12, throughput median on / off")
    return out


def _vs_pytorch(rows, recipe: str, key: str) -> dict[str, tuple[float | None, str]]:
    """``<key>_vs_diffusers_bf16_eager`` / ``_compiled``: PyTorch's image time over our best one
    for ``recipe``."""
    match = dict(recipe=recipe, mode="image")
    ours = _ours(rows, **match)
    ours_s = _med(ours)
    out = {}
    for kind, compiled in (("eager", False), ("compiled", True)):
        b = _pick(rows, impl="diffusers", variant_dtype="bf16", variant_compile=compiled, **match)
        theirs = f"{b['label']} {round(_med(b), 3)} s" if b else f"no diffusers bf16 {kind} run"
        mine = f"{ours['label']} {round(ours_s, 3)} s" if ours else f"no run of ours on {recipe}"
        out[f"{key}_vs_diffusers_bf16_{kind}"] = (_ratio(_med(b), ours_s), f"{theirs} / {mine}")
    return out


def fast_floor(results: dict[str, Any]) -> float | None:
    """The lowest image floor of our fast-recipe configurations: the seconds one image takes
    when every component runs at the measured peak of its precision on this CPU (no
    implementation can go below it at those precisions); None when not computed."""
    floors = [
        f["image_floor_s"]
        for f in results.get("compute_floor", [])
        if f.get("impl") == "ours" and f.get("recipe") == "fast" and f.get("image_floor_s")
    ]
    return min(floors) if floors else None


def out_of_reach(t: Target, verdict: str, floor: float | None) -> str | None:
    """Why a failed latency goal cannot be met on this machine at all (the fast recipe's
    compute ``floor`` is above the goal), else None. The verdict stays FAIL; this says it is
    the CPU's bound."""
    if t.key != "fast_latency" or verdict != "FAIL" or floor is None or floor <= t.threshold:
        return None
    return f"out of reach on this CPU: compute floor {floor:.2f} s > {t.threshold:g} s"


def verdict(t: Target, value: float | None, not_applicable: str | None) -> str:
    if value is None:
        return "not measured"
    ok = value <= t.threshold if t.op == "<=" else value >= t.threshold
    if not_applicable:
        return "n/a"
    return "PASS" if ok else "FAIL"


def evaluate(preset, results: dict[str, Any], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """The Targets rows for ``preset``'s groups (``preset.targets``)."""
    cond = conditions(preset, machine)
    measured = measure(results)
    floor = fast_floor(results)
    flags = " ".join(machine.get("cpu_flags") or []) or "-"
    rows = []
    for t in TARGETS:
        if t.group not in preset.targets:
            continue
        value, how = measured.get(t.key, (None, ""))
        na = cond.get(t.group)
        decided = verdict(t, value, na)
        rows.append(
            {
                "key": t.key,
                "target": t.text,
                "op": t.op,
                "threshold": t.threshold,
                "unit": t.unit,
                "measured": value,
                "how": how,
                "verdict": decided,
                "not_applicable": na,
                "out_of_reach": out_of_reach(t, decided, floor),
                "applies": t.applies,
                "cpu_flags": flags,
                "cores": machine.get("affinity_cores") or machine.get("logical_cores"),
            }
        )
    return rows
