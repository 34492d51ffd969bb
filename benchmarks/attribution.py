"""Which precision each measured configuration computes in, and its compute floor against the
peak of THAT precision (never a bf16 run against the fp32 peak).

Precision per component:
- ours: what the provider reports (``model.describe()["provider"]``): ``auto`` lists each
  component's choice (``components[c]["precision"]``), OpenVINO its compiled graphs'
  ``effective_precision`` (a bf16 hint runs f32 on CPUs without the units), ONNX Runtime CPU is
  fp32, CUDA / TensorRT compute in the export's precision;
- diffusers: the torch dtype (bf16 weights and bf16 autocast both compute matmuls/convs in bf16);
- optimum-intel: each compiled part's ``INFERENCE_PRECISION_HINT`` as its runner reads it.

Attribution (a run may be mixed, e.g. auto with a bf16 UNet and an fp32 VAE):
- the UNet's fraction of peak = (UNet FLOPs per call / median UNet call time) / the peak of the
  UNet's precision; the UNet is 80-95% of an image's FLOPs at 4+ steps, so this is the number
  that says how close to the hardware a configuration runs;
- the image floor = sum over components of (its FLOPs / the peak of its precision), the UNet
  counted once per call the image made: the time the image would take if every component ran
  at its precision's peak. FLOPs are split per component (counted from each ONNX graph), so a
  mixed run is compared component by component, never against one blended peak.
"""

from __future__ import annotations

from typing import Any

PRECISION_NAMES = {
    "f32": "fp32",
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
    "i8": "int8",
    "int8": "int8",
}
#: diffusers variant dtype -> the precision its matmuls/convolutions compute in
TORCH_DTYPE_PRECISION = {"fp32": "fp32", "bf16": "bf16", "bf16-autocast": "bf16", "fp16": "fp16"}
IMAGE_COMPONENTS = (
    "text_encoder",
    "vae_encoder",
    "unet",
    "vae_decoder",
    "taesd_decoder",
    "taesd_encoder",
)


def normalize_precision(p: Any) -> str:
    return PRECISION_NAMES.get(str(p).lower(), str(p).lower())


def peak_key(device_class: str, precision: str) -> str:
    """The key of a peak: "cpu fp32", "cpu bf16", "gpu fp16"..."""
    return f"{device_class} {normalize_precision(precision)}"


def peaks_by_precision(probes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"<device> <precision>": {"gflops": best probe, "source": its name, "probes": {name:
    gflops}}} from probes {name: {"gflops", "precision", "device"}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, p in probes.items():
        if not p.get("gflops"):
            continue
        e = out.setdefault(
            peak_key(p.get("device", "cpu"), p["precision"]),
            {"gflops": 0.0, "source": None, "probes": {}},
        )
        e["probes"][name] = p["gflops"]
        if p["gflops"] > e["gflops"]:
            e.update(gflops=p["gflops"], source=name)
    return out


def component_precisions(
    impl: str,
    variant: dict[str, Any],
    provider: dict[str, Any] | None = None,
    components: tuple[str, ...] = IMAGE_COMPONENTS,
) -> dict[str, str]:
    """{component: "fp32" | "bf16" | "fp16"} for a measured configuration (see the module doc).

    impl: "ours" | "diffusers" | "optimum"; variant: the preset variant as a dict
    (``provider``/``precision`` for ours, ``dtype`` for diffusers); provider: ours'
    ``describe()["provider"]``."""
    if impl == "diffusers":
        p = TORCH_DTYPE_PRECISION.get(variant.get("dtype", "fp32"), "fp32")
        return {c: p for c in components}
    if impl != "ours":
        raise ValueError(f"no precision rule for {impl!r}: its runner reports them")
    provider = provider or {}
    name = provider.get("name", str(variant.get("provider", "cpu")).split(":")[0])
    chosen = provider.get("components") or {}
    if chosen:  # every provider reports what each component computes in
        return {c: normalize_precision(v["precision"]) for c, v in chosen.items()}
    if name == "openvino":
        p = provider.get("effective_precision") or provider.get("precision_hint") or "f32"
    elif name in ("cuda", "tensorrt"):
        p = "fp16" if name == "tensorrt" else variant.get("precision", "fp32")
    else:
        p = "fp32"
    return {c: normalize_precision(p) for c in components}


def compute_floor(
    record: dict[str, Any],
    flops: dict[str, float],
    peaks: dict[str, dict[str, Any]],
    stated_gflops: float | None = None,
) -> dict[str, Any]:
    """The compute-floor row of one measured configuration.

    record: an in-process result (``precisions``, ``device_class``, ``unet_call_s``,
    ``unet_calls_per_image``, ``tiny_vae``, ``tiny_vae_encode``, ``latency_s``); flops: GFLOP
    per call of each component at the record's shapes (``unet`` at the record's UNet batch);
    peaks: ``peaks_by_precision``; stated_gflops: ``--peak-gflops`` (one peak for everything)."""
    precs = record.get("precisions") or {}
    dev = record.get("device_class", "cpu")
    default = next(iter(precs.values()), "fp32")

    def peak_of(comp: str) -> tuple[float | None, str]:
        p = precs.get(comp, precs.get("unet", default))
        if stated_gflops:
            return stated_gflops, p
        return (peaks.get(peak_key(dev, p)) or {}).get("gflops"), p

    unet_gflop = flops.get("unet")
    unet_peak, unet_prec = peak_of("unet")
    call = (record.get("unet_call_s") or {}).get("median")
    achieved = unet_gflop / call if (unet_gflop and call) else None
    decoder = "taesd_decoder" if record.get("tiny_vae") else "vae_decoder"
    encoder = "taesd_encoder" if record.get("tiny_vae_encode") else "vae_encoder"
    parts: dict[str, float] = {}
    missing: list[str] = []
    calls = record.get("unet_calls_per_image") or 0
    for comp, n in (("text_encoder", 1), (encoder, 1), ("unet", calls), (decoder, 1)):
        if comp not in flops or not n:
            continue
        pk, p = peak_of(comp)
        if not pk:
            missing.append(f"{comp} ({p}: no peak measured)")
            continue
        parts[comp] = n * flops[comp] / pk
    mode = record.get("mode", "image")
    return {
        "unet_precision": unet_prec,
        "unet_gflop_per_call": unet_gflop,
        "unet_call_s": call,
        "achieved_gflops": achieved,
        "peak_gflops": unet_peak,
        "peak_key": "stated" if stated_gflops else peak_key(dev, unet_prec),
        "fraction_of_peak": (achieved / unet_peak) if (achieved and unet_peak) else None,
        "image_floor_s": sum(parts.values()) if (parts and mode == "image") else None,
        "image_floor_parts_s": parts if mode == "image" else {},
        "missing_peaks": missing,
        "image_median_s": (record.get("latency_s") or {}).get("median"),
    }
