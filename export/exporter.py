"""Orchestration: load the pipeline, export the four components, optimize, verify, write manifest.

The output folder is built in ``.<name>.partial`` beside it and moved into place only when every
component exported (and verified, unless ``--no-verify``), so a crash never leaves a folder that
looks complete. torch/diffusers are imported lazily: the "up to date" check stays fast.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from server.models.manifest import (
    MANIFEST_FILE,
    ComponentSpec,
    FastPreset,
    Manifest,
    Source,
    Verification,
)

from . import lora
from .hashing import files_match, sha256
from .lora import LoraArg
from .tokenizer_files import save_tokenizer

if TYPE_CHECKING:
    from .components import Dims

#: bump when the exporter's output changes for the same arguments (invalidates "up to date").
EXPORTER_VERSION = 1
#: export_args keys that only affect verification: changing them re-verifies, never re-exports.
VERIFY_KEYS = ("verify", "tolerance")
#: export_args keys that only affect manifest.json: changing them rewrites it, nothing else.
MANIFEST_KEYS = ("fast_preset", "tiny_vae_encode")
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "tokenizers",
)


#: In-process memo of serialized fp32 graphs for the deterministic tiny preset, keyed by
#: (preset, seed, opset, component): exporting tiny fp32 and fp16 in one process (the test
#: session) traces each component once. Real models are never cached (their weights can change).
_TINY_FP32: dict[tuple, bytes] = {}

M = TypeVar("M")  # a manifest class: read_existing returns what its reader returns


class ExportError(RuntimeError):
    """A clear, user-facing failure (the CLI prints it and exits non-zero)."""


@dataclass
class Options:
    model: str | None
    revision: str | None
    name: str
    out: Path
    precision: str  # fp32 | fp16 (resolved from auto)
    target: str  # cpu | cuda
    opset: int
    verify: bool
    tolerance: float | None
    preset: str | None  # "tiny" | "sd15-random" | None
    seed: int
    force: bool
    threads: int = 2  # torch / ORT CPU threads; not an export argument
    tiny_vae: str | None = None  # AutoencoderTiny folder or hub id (export/taesd.py)
    loras: tuple[LoraArg, ...] = ()  # fused in order before export (export/lora.py)
    fast_preset: str | None = None  # --fast-preset as given; None = automatic from the LoRAs
    tiny_vae_encode: bool = False  # --tiny-vae-encode: the fast preset encodes with the tiny VAE

    def fast_preset_entry(self) -> FastPreset | None:
        """The manifest's ``fast_preset`` for these arguments (export/lora.py)."""
        return lora.fast_preset(self.fast_preset, self.loras, self.tiny_vae_encode)

    def export_args(self) -> dict:
        # "tiny_vae" only when given: folders exported before the option stay "up to date"
        extra = {"tiny_vae": self.tiny_vae} if self.tiny_vae else {}
        # likewise the LoRAs (source as given + scale) and an explicit fast preset
        if self.loras:
            extra["loras"] = [[lora.source, lora.scale] for lora in self.loras]
        if self.fast_preset is not None:
            extra["fast_preset"] = self.fast_preset
        if self.tiny_vae_encode:
            extra["tiny_vae_encode"] = True
        return {
            "model": self.model,
            "revision": self.revision,
            "preset": self.preset,
            "seed": self.seed if self.preset else None,
            "name": self.name,
            "precision": self.precision,
            "target": self.target,
            "opset": self.opset,
            "verify": self.verify,
            "tolerance": self.tolerance,
            "exporter_version": EXPORTER_VERSION,
            **extra,
        }


class Clock:
    """Progress lines with elapsed seconds since the export started."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def publish(partial: Path, out: Path, log: Clock) -> None:
    """Put the finished ``partial`` folder in place of ``out`` (only now: a crash before this
    never leaves a folder that looks complete) and log its size and the peak RSS."""
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    log(f"wrote {out} ({size:.1f} MB, peak RSS {peak_rss_gb():.2f} GB)")


# ---------------------------------------------------------------------------------------------
def run(opts: Options) -> Manifest:
    """Export (or confirm up to date / re-verify) and return the manifest. Raises ExportError."""
    log = Clock()
    args = opts.export_args()
    existing = read_existing(opts.out, Manifest.read, "exporting again")
    if existing is not None and not opts.force:
        old = dict(existing.export_args)
        same_graphs = {k: v for k, v in old.items() if k not in VERIFY_KEYS + MANIFEST_KEYS} == {
            k: v for k, v in args.items() if k not in VERIFY_KEYS + MANIFEST_KEYS
        }
        # a LoRA file changed in place (same path and scale) means new weights: export again
        if same_graphs and files_match(opts.out, existing) and not lora.changed(existing.loras):
            if old == args:
                print(f"{opts.out}: up to date", flush=True)
                return existing
            if all(old.get(k) == args.get(k) for k in VERIFY_KEYS):
                return _rewrite_manifest(opts, existing, log)
            if existing.target == "cpu":
                return _reverify(opts, existing, log)
        if not same_graphs:
            diff = sorted(k for k in set(old) | set(args) if old.get(k) != args.get(k))
            raise ExportError(
                f"{opts.out} holds an export made with different arguments ({', '.join(diff)}); "
                "pass --force to overwrite it or choose another --out"
            )
        # same arguments but files changed or missing: export again
    return _export(opts, log)


def read_existing(out: Path, read: Callable[[Path], M], again: str) -> M | None:
    """The manifest an earlier run left in ``out`` (``read(out)``), or None: no folder, an empty
    one, or an unreadable manifest (then ``again`` says what happens instead, e.g. "exporting
    again"). ExportError for a folder with files but no manifest: it is not ours to overwrite."""
    if not (out / MANIFEST_FILE).is_file():
        if out.exists() and any(out.iterdir()):
            raise ExportError(f"{out} exists and has no {MANIFEST_FILE}; pass --force or --out")
        return None
    try:
        return read(out)
    except Exception as exc:  # noqa: BLE001 - an unreadable manifest means "build it again"
        print(f"{out}: unreadable manifest ({exc}); {again}", flush=True)
        return None


def _load_pipeline(opts: Options, tmp: Path, log: Clock):
    """(pipeline in fp32, Source, Dims read from the pipeline's own configs)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    from .components import Dims
    from .tiny import PRESETS

    torch.set_num_threads(opts.threads)  # shared machines: stay within the asked-for cores

    if opts.preset:
        log(f"building the {opts.preset} pipeline (seed {opts.seed})")
        source_dir = PRESETS[opts.preset](tmp / "source", seed=opts.seed)
        source = Source(model=f"preset:{opts.preset}", path=None)
        where = str(source_dir)
    else:
        where = opts.model
        local = Path(opts.model).expanduser()
        source = Source(
            model=opts.model,
            revision=opts.revision,
            path=str(local.resolve()) if local.is_dir() else None,
        )
    log(f"loading StableDiffusionInpaintPipeline from {where}")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        where,
        revision=opts.revision,
        safety_checker=None,
        requires_safety_checker=False,
    )
    if any(p.dtype != torch.float32 for p in pipe.unet.parameters()):
        pipe.to(torch.float32)  # reference and exported graphs are fp32 (fp16 conversion is ours)
    try:  # fused before tracing: the graphs (and their verification) carry the LoRA weights
        pipe.lora_records = lora.fuse_loras(pipe, opts.loras, log)
    except ValueError as exc:
        raise ExportError(f"--lora {exc}") from exc
    try:
        dims = Dims.from_pipeline(pipe)
    except ValueError as exc:
        raise ExportError(f"{where}: {exc}") from exc
    log(f"pipeline dims: {dims}")
    if opts.tiny_vae:
        from .taesd import check_compatible, load_tiny_vae

        log(f"loading AutoencoderTiny from {opts.tiny_vae}")
        try:
            tiny = load_tiny_vae(opts.tiny_vae)
            check_compatible(tiny, dims)
        except ValueError as exc:
            raise ExportError(f"--tiny-vae {opts.tiny_vae}: {exc}") from exc
        pipe.tiny_vae = tiny  # what components.wrap exports as taesd_decoder / taesd_encoder
    return pipe, source, dims


def _export(opts: Options, log: Clock) -> Manifest:
    import onnx
    import torch

    from . import optimize
    from .components import io_specs
    from .onnx_export import export_component
    from .taesd import TINY_COMPONENTS, manifest_entry
    from .verify import verify_component

    out = opts.out
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.manual_seed(opts.seed)
    fp16 = opts.precision == "fp16"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.work.") as tmp_s:
        tmp = Path(tmp_s)
        pipe, source, dims = _load_pipeline(opts, tmp, log)
        specs: dict[str, ComponentSpec] = {}
        checks: list[Verification] = []
        notes: list[str] = []
        if opts.preset:
            notes.append(
                f"random weights ({opts.preset} preset, seed {opts.seed}): not a real model"
            )
        for comp in COMPONENTS + (TINY_COMPONENTS if opts.tiny_vae else ()):
            log(f"{comp}: exporting fp32 graph (torch.onnx.export, dynamo, opset {opts.opset})")
            work = tmp / comp
            fp32_path = work / "fp32" / "model.onnx"
            key = (opts.preset, opts.seed, opts.opset, comp)
            # the tiny VAE is not the preset's, and fused LoRAs change its weights
            memo = opts.preset == "tiny" and comp in COMPONENTS and not opts.loras
            if memo and key in _TINY_FP32:
                model = onnx.load_from_string(_TINY_FP32[key])
            else:
                model = export_component(comp, pipe, dims, opts.opset)
                if memo:
                    _TINY_FP32[key] = model.SerializeToString()
            optimize.save(model, fp32_path)
            del model
            plain = fp32_path
            if fp16:
                log(f"{comp}: converting to fp16 (float32 I/O)")
                plain = work / "fp16" / "model.onnx"
                optimize.to_fp16(fp32_path, plain)
            final = partial / comp / "model.onnx"
            optimization = "none"
            verify_graph = "final"
            if opts.target == "cuda" and comp in optimize.ORT_MODEL_TYPE:
                # (the tiny VAE is plain conv/ReLU: no attention or GroupNorm to fuse)
                log(f"{comp}: ORT transformer fusions for CUDA")
                files, desc = optimize.fuse_guarded(comp, fp32_path, final, fp16)
                optimization = desc
                if files is None:
                    notes.append(f"{comp}: {desc}")
                else:
                    verify_graph = "pre-fusion"
            if verify_graph == "final":
                _move_graph(plain, final)
                plain = final
            if opts.verify:
                log(f"{comp}: verifying {verify_graph} graph vs PyTorch (CPU EP)")
                v = verify_component(
                    comp, plain, pipe, dims, opts.precision, opts.tolerance, graph=verify_graph
                )
                checks.append(v)
                log(f"{comp}: {_describe(v)}")
            if verify_graph == "pre-fusion":
                note = _check_fused(comp, final, pipe, dims, opts, checks, log)
                if note:
                    notes.append(note)
            inputs, outputs = io_specs(comp, dims)
            specs[comp] = ComponentSpec(
                file=f"{comp}/model.onnx",
                inputs=inputs,
                outputs=outputs,
                precision=opts.precision,
                profiles=_profiles(comp, dims),
                optimization=optimization,
            )
            shutil.rmtree(work, ignore_errors=True)
        tokenizer_files = save_tokenizer(pipe.tokenizer, partial)
        pipe.scheduler.save_config(partial / "scheduler")  # scheduler_config.json (_class_name)
    for comp, spec in specs.items():
        spec.sha256 = {
            str(p.relative_to(partial)): sha256(p) for p in sorted((partial / comp).iterdir())
        }
    if not opts.verify:
        notes.append("verification skipped (--no-verify)")
    manifest = Manifest(
        name=opts.name,
        precision=opts.precision,
        target=opts.target,
        opset=opts.opset,
        native_resolution=dims.native,
        vae_scale_factor=dims.scale,
        latent_scaling_factor=float(pipe.vae.config.scaling_factor),
        latent_channels=dims.latent_channels,
        unet_in_channels=dims.unet_in_channels,
        text_max_length=dims.text_len,
        text_hidden_size=dims.hidden,
        scheduler=json.loads((partial / "scheduler" / "scheduler_config.json").read_text()),
        tokenizer=tokenizer_files,
        components=specs,
        source=source,
        tiny_vae=manifest_entry(opts.tiny_vae, pipe.tiny_vae) if opts.tiny_vae else None,
        loras=pipe.lora_records,
        fast_preset=opts.fast_preset_entry(),
        versions=versions(),
        verification=checks,
        notes=notes,
        export_args=opts.export_args(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.write(partial)
    failed = [v for v in checks if not v.passed]
    if failed:
        raise ExportError(_failure_message(failed, partial))
    publish(partial, out, log)
    return manifest


def _reverify(opts: Options, existing: Manifest, log: Clock) -> Manifest:
    """Same graphs, different verification settings: verify the existing files again."""
    from .verify import verify_component

    checks: list[Verification] = []
    if opts.verify:
        with tempfile.TemporaryDirectory(dir=opts.out.parent, prefix=".reverify.") as tmp:
            pipe, _, dims = _load_pipeline(opts, Path(tmp), log)
            _check_same_dims(dims, existing)
            for comp, spec in existing.components.items():
                log(f"{comp}: verifying existing graph vs PyTorch (CPU EP)")
                v = verify_component(
                    comp, opts.out / spec.file, pipe, dims, existing.precision, opts.tolerance
                )
                checks.append(v)
                log(f"{comp}: {_describe(v)}")
    failed = [v for v in checks if not v.passed]
    if failed:  # leave the folder (and its manifest) as it was
        raise ExportError(_failure_message(failed, opts.out))
    notes = [n for n in existing.notes if "--no-verify" not in n]
    if not opts.verify:
        notes.append("verification skipped (--no-verify)")
    manifest = existing.model_copy(
        update={
            "verification": checks,
            "notes": notes,
            "export_args": opts.export_args(),
            "fast_preset": opts.fast_preset_entry(),
        }
    )
    manifest.write(opts.out)
    log(f"{opts.out}: graphs unchanged, verification settings updated")
    return manifest


def _rewrite_manifest(opts: Options, existing: Manifest, log: Clock) -> Manifest:
    """Same graphs and verification, another fast preset: only manifest.json changes."""
    manifest = existing.model_copy(
        update={
            "export_args": opts.export_args(),
            "fast_preset": opts.fast_preset_entry(),
        }
    )
    manifest.write(opts.out)
    log(f"{opts.out}: graphs unchanged, fast preset updated ({manifest.fast_preset})")
    return manifest


def _check_same_dims(dims: Dims, existing: Manifest) -> None:
    """The source pipeline must still have the shapes the existing graphs were exported with."""
    now = {
        "text_max_length": dims.text_len,
        "text_hidden_size": dims.hidden,
        "latent_channels": dims.latent_channels,
        "unet_in_channels": dims.unet_in_channels,
        "vae_scale_factor": dims.scale,
        "native_resolution": dims.native,
    }
    changed = [
        f"{k} {getattr(existing, k)} -> {v}" for k, v in now.items() if getattr(existing, k) != v
    ]
    if changed:
        raise ExportError(
            f"the source pipeline changed since {existing.name} was exported "
            f"({', '.join(changed)}); pass --force to export it again"
        )


def _check_fused(comp, final, pipe, dims, opts, checks, log):
    """Verify a fused (CUDA-target) graph where an EP can run it; else say it is unverified.

    Returns a note for the manifest, or None when the fused graph was verified.
    """
    import onnxruntime as ort

    from .verify import verify_component

    try:  # GroupNorm & co. have no CPU kernels: loading on CPU tells which EP can verify it
        from .verify import session

        session(final, "CPUExecutionProvider")
        cpu_ok = True
    except Exception:  # noqa: BLE001 - ORT raises several types for "no kernel"
        cpu_ok = False
    provider = "CPUExecutionProvider" if cpu_ok else None
    if not cpu_ok and "CUDAExecutionProvider" in ort.get_available_providers():
        provider = "CUDAExecutionProvider"
    if provider is None or not opts.verify:
        why = "--no-verify" if not opts.verify else "no CUDA EP on the exporting machine"
        return f"{comp}: fused graph unverified ({why}); pre-fusion graph verified"
    log(f"{comp}: verifying fused graph ({provider})")
    v = verify_component(comp, final, pipe, dims, opts.precision, opts.tolerance, provider=provider)
    checks.append(v)
    log(f"{comp}: {_describe(v)}")
    return None


def _move_graph(src: Path, dst: Path) -> None:
    from .optimize import data_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dst)
    if data_file(src).exists():
        shutil.move(data_file(src), data_file(dst))


def _profiles(comp: str, dims: Dims) -> dict[str, dict[str, list[int]]]:
    """TensorRT min/opt/max shapes: batch 1..8 (opt 2 for the CFG pair in text/UNet calls,
    1 for the VAE), sides 256..1024 px (opt native, bounds widened to include native)."""
    from .components import io_specs

    native = dims.native
    lo, hi = min(256, native), max(1024, native)
    opt_batch = 2 if comp in ("text_encoder", "unet") else 1
    values = {
        "min": {"batch": 1, "height": lo, "width": lo},
        "opt": {"batch": opt_batch, "height": native, "width": native},
        "max": {"batch": 8, "height": hi, "width": hi},
    }
    for v in values.values():
        v["latent_height"] = v["height"] // dims.scale
        v["latent_width"] = v["width"] // dims.scale
    out: dict[str, dict[str, list[int]]] = {}
    for spec in io_specs(comp, dims)[0]:
        out[spec.name] = {
            k: [v[d] if isinstance(d, str) else d for d in spec.shape] for k, v in values.items()
        }
    return out


def _describe(v: Verification) -> str:
    status = "ok" if v.passed else "FAILED"
    return (
        f"{status}: max|diff| {v.max_abs_diff:.3g} (mean {v.mean_abs_diff:.3g}) vs tolerance "
        f"{v.tolerance:.3g} (rtol {v.rtol:g} x max(1, peak {v.reference_max_abs:.3g})), "
        f"inputs {v.inputs}"
    )


def _failure_message(failed: list[Verification], where: Path) -> str:
    lines = [f"verification FAILED for {len(failed)} component(s):"]
    lines += [f"  {v.component} ({v.graph}): {_describe(v)}" for v in failed]
    lines.append(
        f"ONNX Runtime disagrees with PyTorch beyond tolerance; outputs are kept in {where} "
        "for inspection. Use --tolerance to change rtol, or --no-verify to skip."
    )
    return "\n".join(lines)
