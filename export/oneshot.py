"""``python -m export --kind one-shot``: bring a one-shot inpainting network into ``models/<name>``.

    python -m export --onnx big-lama.onnx --kind one-shot --signature lama --name lama
    python -m export --torch big-lama.pt --kind one-shot --signature lama --name lama
    python -m export --onnx my.onnx --kind one-shot --signature custom --signature-file sig.json

Result: ``models/<name>/manifest.json`` (``OneShotManifest``) + ``inpainter/model.onnx``.

- ``--onnx FILE``: the graph is loaded in ONNX Runtime (CPU), its inputs/outputs are checked
  against the signature (names, ranks, dtypes, channel counts) and its geometry is read from it
  (fixed size or dynamic, batch axis), a forward pass on random input must be finite and in the
  signature's output range, and a batch-2 call must equal two single calls (else the model runs
  one row per call). The file is copied (with its external data) and hashed.
- ``--torch FILE``: a LaMa checkpoint (TorchScript ``big-lama.pt`` or a state dict) or a MI-GAN
  generator state dict is loaded into ``lama_like`` / ``migan_like``, exported with the dynamo
  exporter (dynamic batch and size) and verified against PyTorch (the TorchScript file itself
  when given) on random inputs: ``max|diff| <= rtol * max(1, peak)``, rtol 1e-4 fp32 / 2e-2 fp16,
  at least one level for uint8 outputs (rounding). ``--precision fp16``: fp16 weights, float32 /
  uint8 I/O (``keep_io_types``); DFT nodes stay fp32 (ONNX Runtime has no fp16 DFT kernel).
- The same arguments again print "up to date" (hashes checked); other arguments need ``--force``.
  A folder is built in ``.<name>.partial`` and moved into place only when everything passed.

Signatures (``SIGNATURES``; ``custom`` = a JSON file with ``OneShotIO``'s fields, plus optional
``native_resolution`` / ``max_work_side``):
- ``lama``: inputs ``image`` float32 (B, 3, H, W) [0, 1] RGB and ``mask`` float32 (B, 1, H, W)
  1 = hole, output ``output`` float32 [0, 1] (IOPaint's big-lama ONNX: fixed 1x3x512x512).
- ``migan``: MI-GAN's ONNX pipeline: ``image`` uint8 (B, 3, H, W) RGB, ``mask`` uint8
  (B, 1, H, W) 255 = keep / 0 = hole, output ``result`` uint8 (B, 3, H, W), any size.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server.models.manifest import (
    ComponentSpec,
    OneShotIO,
    OneShotManifest,
    Source,
    TensorSpec,
    Verification,
    read_manifest,
)

from .exporter import Clock, ExportError, publish, read_existing, versions
from .hashing import files_match, sha256

COMPONENT = "inpainter"
GRAPH = f"{COMPONENT}/model.onnx"
#: bump when the output changes for the same arguments (invalidates "up to date")
EXPORTER_VERSION = 1
VERIFY_KEYS = ("verify", "tolerance")
RTOL = {"fp32": 1e-4, "fp16": 2e-2}
#: the batch, sizes and seed of the verification inputs
VERIFY_BATCH, VERIFY_SEED = 2, 1234

SIGNATURES: dict[str, OneShotIO] = {
    "lama": OneShotIO(image="image", mask="mask", output="output"),
    "migan": OneShotIO(
        image="image",
        mask="mask",
        output="result",
        input_dtype="uint8",
        output_dtype="uint8",
        image_range=(0, 255),
        output_range=(0, 255),
        mask_hole=0,
        mask_keep=255,
        zero_holes=False,  # the pipeline masks (and composites) itself
    ),
}
#: signatures whose architecture ``--torch`` can rebuild (export.lama_like / export.migan_like)
TORCH_SIGNATURES = ("lama", "migan")
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


@dataclass
class OneShotOptions:
    onnx: Path | None
    torch: Path | None
    signature: str  # lama | migan | custom
    signature_file: Path | None
    name: str
    out: Path
    precision: str  # fp32 | fp16
    opset: int
    verify: bool
    tolerance: float | None
    force: bool
    fft: str = "matmul"  # LaMa's Fourier units: matmul | native (ONNX DFT)
    aliases: list[str] = field(default_factory=list)
    threads: int = 2

    @property
    def source(self) -> Path:
        return Path(self.onnx or self.torch)

    def export_args(self, source_sha: str) -> dict:
        return {
            "kind": "one-shot",
            "from": "onnx" if self.onnx else "torch",
            "source_sha256": source_sha,
            "signature": self.signature,
            "signature_file": _signature_text(self),
            "name": self.name,
            "precision": self.precision,
            "opset": self.opset if self.torch else None,
            "fft": self.fft if self.torch and self.signature == "lama" else None,
            "aliases": sorted(self.aliases),
            "verify": self.verify,
            "tolerance": self.tolerance,
            "exporter_version": EXPORTER_VERSION,
        }


def _signature_text(opts: OneShotOptions) -> str | None:
    return opts.signature_file.read_text() if opts.signature_file else None


def load_signature(opts: OneShotOptions) -> tuple[OneShotIO, dict]:
    """(I/O convention, extras: native_resolution / max_work_side) for the options."""
    if opts.signature != "custom":
        if opts.signature_file:
            raise ExportError("--signature-file goes with --signature custom")
        return SIGNATURES[opts.signature], {}
    if opts.signature_file is None:
        raise ExportError("--signature custom needs --signature-file JSON (OneShotIO's fields)")
    try:
        data = json.loads(opts.signature_file.read_text())
        extras = {k: data.pop(k) for k in ("native_resolution", "max_work_side") if k in data}
        return OneShotIO.model_validate(data), extras
    except (OSError, ValueError) as exc:
        raise ExportError(f"--signature-file {opts.signature_file}: {exc}") from None


# ---------------------------------------------------------------------------- orchestration
def run(opts: OneShotOptions) -> OneShotManifest:
    """Import/export (or confirm up to date / re-verify); raises ExportError."""
    log = Clock()
    if not opts.source.is_file():
        raise ExportError(f"{opts.source}: no such file")
    if opts.torch and opts.signature not in TORCH_SIGNATURES:
        raise ExportError(
            f"--torch knows the {' and '.join(TORCH_SIGNATURES)} architectures; export other "
            "networks to ONNX yourself and bring them in with --onnx"
        )
    io, extras = load_signature(opts)
    args = opts.export_args(sha256(opts.source))
    existing = _read_existing(opts.out)
    if existing is not None and not opts.force:
        old = dict(existing.export_args)
        same = {k: v for k, v in old.items() if k not in VERIFY_KEYS} == {
            k: v for k, v in args.items() if k not in VERIFY_KEYS
        }
        if not same:
            diff = sorted(k for k in set(old) | set(args) if old.get(k) != args.get(k))
            raise ExportError(
                f"{opts.out} holds a model made with different arguments ({', '.join(diff)}); "
                "pass --force to overwrite it or choose another --name/--out"
            )
        if files_match(opts.out, existing) and old == args:
            print(f"{opts.out}: up to date", flush=True)
            return existing
    return _build(opts, io, extras, args, log)


def _read_existing(out: Path) -> OneShotManifest | None:
    manifest = read_existing(out, read_manifest, "building again")
    if manifest is not None and not isinstance(manifest, OneShotManifest):
        raise ExportError(f"{out} holds a {manifest.pipeline} model; pass --force or --out")
    return manifest


def _build(opts, io: OneShotIO, extras: dict, args: dict, log: Clock) -> OneShotManifest:
    out = opts.out
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / COMPONENT).mkdir(parents=True)
    graph = partial / GRAPH
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.work.") as tmp_s:
        tmp = Path(tmp_s)
        if opts.torch:
            from .oneshot_torch import export_torch

            reference, native, note = export_torch(opts, io, tmp / "fp32.onnx", log)
            notes += [note] if note else []
            reference_graph = tmp / "fp32.onnx"
        else:
            reference, native = None, extras.get("native_resolution")
            reference_graph = opts.onnx  # fp16 is checked against the file as given
        if opts.precision == "fp16":
            log("converting to fp16 (float32/uint8 I/O; DFT kept in fp32)")
            to_fp16(reference_graph, graph)
        else:
            _copy_graph(reference_graph, graph)
        log(f"checking {GRAPH} in ONNX Runtime (CPU) against the {opts.signature} signature")
        sess = ort_session(graph, opts.threads)
        io, specs = check_graph(sess, io)
        io, checks, more = probe(sess, io, opts, reference, reference_graph, log)
        notes += more
    native = int(native or (min(io.fixed_size) if io.fixed_size else 512))
    spec = ComponentSpec(
        file=GRAPH,
        inputs=specs[0],
        outputs=specs[1],
        precision=opts.precision,
        sha256={str(p.relative_to(partial)): sha256(p) for p in sorted(graph.parent.iterdir())},
        profiles=trt_profiles(specs[0], io, native, extras.get("max_work_side")),
    )
    if not opts.verify:
        notes.append("verification skipped (--no-verify)")
    manifest = OneShotManifest(
        name=opts.name,
        signature=opts.signature,
        io=io,
        precision=opts.precision,
        opset=_opset(graph),
        native_resolution=native,
        max_work_side=extras.get("max_work_side"),
        components={COMPONENT: spec},
        source=Source(model=str(opts.source), path=str(opts.source.resolve())),
        aliases=sorted(opts.aliases),
        versions=versions(),
        verification=checks,
        notes=notes,
        export_args=args,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.write(partial)
    failed = [v for v in checks if not v.passed]
    if failed:
        v = failed[0]
        raise ExportError(
            f"verification FAILED: max|diff| {v.max_abs_diff:.3g} > tolerance {v.tolerance:.3g} "
            f"(inputs {v.inputs}); the result is kept in {partial} for inspection. Use "
            "--tolerance to change rtol, or --no-verify to skip."
        )
    publish(partial, out, log)
    return manifest


def _copy_graph(src: Path, dst: Path) -> Path:
    """Copy an ONNX file and the external-data files it names (kept beside it)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    for loc in {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }:
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ExportError(f"{src}: external data {loc!r} is outside the model's folder")
        shutil.copyfile(src.parent / loc, dst.parent / loc)
    return dst


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def to_fp16(src: Path, dst: Path) -> None:
    """fp32 graph -> fp16 weights with float32/uint8 I/O. DFT stays fp32: ONNX Runtime's CPU
    and CUDA providers have no fp16 DFT kernel; Cos/Sin/Range keep the DFT bases exact."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    block = list(DEFAULT_OP_BLOCK_LIST) + ["DFT", "Cos", "Sin", "Range", "Mod"]
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    onnx.save_model(model, str(dst))


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad graph
        raise ExportError(f"ONNX Runtime cannot load the graph: {exc}") from None


# ---------------------------------------------------------------------------- the signature
def check_graph(sess, io: OneShotIO) -> tuple[OneShotIO, tuple[list, list]]:
    """Check the graph's inputs/outputs against ``io``; return ``io`` with the geometry read
    from the graph (fixed size, batch axis) and the manifest's tensor specs."""
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    wanted = {io.image: 3 + (1 if io.mask is None else 0)}
    if io.mask is not None:
        wanted[io.mask] = 1
    missing = [n for n in wanted if n not in inputs]
    extra = [n for n in inputs if n not in wanted]
    if missing or extra or io.output not in outputs:
        raise ExportError(
            f"the graph's I/O does not match the signature: inputs {sorted(inputs)} (signature "
            f"feeds {sorted(wanted)}), outputs {sorted(outputs)} (signature reads "
            f"{io.output!r}); pick another --signature or write a --signature-file"
        )
    ch_axis = 1 if io.layout == "NCHW" else 3
    sizes: dict[str, tuple] = {}  # (height, width) per tensor; None = symbolic
    batches: dict[str, int | None] = {}
    for name, channels in [*wanted.items(), (io.output, 3)]:
        arg = inputs.get(name) or outputs[name]
        dtype = _ORT_TYPES.get(arg.type)
        want = io.input_dtype if name in wanted else io.output_dtype
        if len(arg.shape) != 4 or dtype != want:
            raise ExportError(
                f"{name!r} is {arg.type} of rank {len(arg.shape)}; the signature wants a 4-D "
                f"{want} tensor ({io.layout})"
            )
        if isinstance(arg.shape[ch_axis], int) and arg.shape[ch_axis] != channels:
            raise ExportError(
                f"{name!r} has {arg.shape[ch_axis]} channels on the {io.layout} channel axis; "
                f"the signature wants {channels}"
            )
        spatial = [d for i, d in enumerate(arg.shape[1:], 1) if i != ch_axis]
        sizes[name] = tuple(d if isinstance(d, int) else None for d in spatial)
        batches[name] = arg.shape[0] if isinstance(arg.shape[0], int) else None
    # the geometry is the inputs'; an output dim the graph fixes must agree with it
    in_sizes = {sizes[n] for n in wanted}
    fixed = (
        next(iter(in_sizes)) if len(in_sizes) == 1 and None not in next(iter(in_sizes)) else None
    )
    out_size = sizes[io.output]
    if len(in_sizes) != 1 or (None not in out_size and fixed and out_size != fixed):
        raise ExportError(f"inputs and output disagree on the image size: {sizes}")
    in_batches = {batches[n] for n in wanted}
    batch = in_batches.pop() if len(in_batches) == 1 else None
    if batch not in (None, 1):
        raise ExportError(f"the batch axis is fixed at {batch}; export with batch 1 or dynamic")
    io = io.model_copy(update={"fixed_size": fixed, "dynamic_batch": batch is None})

    def spec(arg) -> TensorSpec:
        shape = [
            d if isinstance(d, int) else n for d, n in zip(arg.shape, _axis_names(io), strict=True)
        ]
        return TensorSpec(name=arg.name, dtype=_ORT_TYPES[arg.type], shape=shape)

    return io, ([spec(inputs[n]) for n in wanted], [spec(outputs[io.output])])


def _axis_names(io: OneShotIO) -> list[str]:
    return ["batch", "channels", "height", "width"] if io.layout == "NCHW" else [
        "batch", "height", "width", "channels"
    ]  # fmt: skip


def trt_profiles(inputs: list[TensorSpec], io: OneShotIO, native: int, max_work: int | None):
    """TensorRT min/opt/max shapes for dynamic graphs: batch 1/1/8, sides 16 / native / the
    largest work side padded to the multiple (the crop rule never feeds more)."""
    if io.fixed_size is not None and not io.dynamic_batch:
        return {}
    m = io.pad_multiple
    top = -(-(max_work or int(round(native * 1.5 / 8)) * 8) // m) * m
    dims = {
        "min": {"batch": 1, "height": -(-16 // m) * m, "width": -(-16 // m) * m},
        "opt": {"batch": 1, "height": -(-native // m) * m, "width": -(-native // m) * m},
        "max": {"batch": 8 if io.dynamic_batch else 1, "height": top, "width": top},
    }
    if io.fixed_size is not None:
        for v in dims.values():
            v["height"], v["width"] = io.fixed_size
    return {
        t.name: {k: [v[d] if isinstance(d, str) else d for d in t.shape] for k, v in dims.items()}
        for t in inputs
    }


# ---------------------------------------------------------------------------- verification
def random_feeds(io: OneShotIO, batch: int, height: int, width: int, seed: int) -> dict:
    """Inputs in the graph's own convention: a smooth random image and a block-shaped hole
    per row (a different place per row), so rows are distinguishable."""
    rng = np.random.default_rng(seed)
    lo, hi = io.image_range
    base = rng.random((batch, 1, 1, 3)) * 0.6 + 0.2
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    img = np.clip(
        base + 0.3 * np.sin(6 * (yy + xx))[None, :, :, None] * rng.random((batch, 1, 1, 3)), 0, 1
    )
    img = lo + (hi - lo) * img
    hole = np.zeros((batch, height, width, 1), bool)
    for b in range(batch):
        y0, x0 = int(height * (0.2 + 0.2 * b / batch)), int(width * (0.3 - 0.1 * b / batch))
        hole[b, y0 : y0 + max(2, height // 3), x0 : x0 + max(2, width // 3)] = True
    if io.zero_holes:
        img = np.where(hole, 0, img)
    mask = np.where(hole, io.mask_hole, io.mask_keep)
    dtype = np.dtype(io.input_dtype)
    img, mask = img.astype(dtype), mask.astype(dtype)
    tensors = (
        {io.image: img, io.mask: mask}
        if io.mask is not None
        else {
            io.image: np.concatenate((img, mask) if io.concat == "image_first" else (mask, img), -1)
        }
    )
    if io.layout == "NCHW":
        tensors = {k: v.transpose(0, 3, 1, 2) for k, v in tensors.items()}
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def _verify_size(io: OneShotIO, native: int | None) -> tuple[int, int]:
    """A non-square size (multiple of the pad multiple), small enough to verify quickly."""
    if io.fixed_size is not None:
        return io.fixed_size
    m = max(8, io.pad_multiple)
    side = max(2 * m, min(native or 128, 128) // m * m)
    return side, side + m


def probe(sess, io: OneShotIO, opts, reference, reference_graph: Path, log: Clock):
    """Run the graph: finite output in range, batching behaviour, and (when verifying) the
    comparison with the reference. Returns (io with dynamic_batch settled, checks, notes)."""
    notes: list[str] = []
    h, w = _verify_size(io, None)
    batch = VERIFY_BATCH if io.dynamic_batch else 1
    feeds = random_feeds(io, batch, h, w, VERIFY_SEED)
    try:
        out = sess.run([io.output], feeds)[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        if batch == 1:
            raise ExportError(f"a forward pass on random input failed: {exc}") from None
        out = None
    if out is not None:
        _check_output(out, io, batch, h, w)
    if io.dynamic_batch:
        singles = [
            sess.run([io.output], {k: v[b : b + 1] for k, v in feeds.items()})[0]
            for b in range(batch)
        ]
        _check_output(singles[0], io, 1, h, w)
        ok = out is not None and _max_diff(out, np.concatenate(singles)) <= _level(io, 1e-3)
        if not ok:
            io = io.model_copy(update={"dynamic_batch": False})
            notes.append(
                "the batch axis does not batch (a batch-2 call fails or differs from two single "
                "calls): the server runs one row per call"
            )
            log(notes[-1])
        batch = batch if ok else 1
        feeds = {k: v[:batch] for k, v in feeds.items()}
    checks: list[Verification] = []
    if opts.verify and (reference is not None or opts.precision == "fp16"):
        checks.append(_compare(sess, io, opts, reference, reference_graph, feeds))
        v = checks[-1]
        log(
            f"verification {'ok' if v.passed else 'FAILED'}: max|diff| {v.max_abs_diff:.3g} "
            f"(mean {v.mean_abs_diff:.3g}) vs tolerance {v.tolerance:.3g}, inputs {v.inputs}"
        )
    return io, checks, notes


def _check_output(out: np.ndarray, io: OneShotIO, batch: int, h: int, w: int) -> None:
    want = (batch, 3, h, w) if io.layout == "NCHW" else (batch, h, w, 3)
    if tuple(out.shape) != want:
        raise ExportError(f"the output has shape {tuple(out.shape)}; expected {want}")
    x = out.astype(np.float64)
    if not np.isfinite(x).all():
        raise ExportError("a forward pass on random input gave non-finite values")
    lo, hi = io.output_range
    span = hi - lo
    outside = float(np.mean((x < lo - 0.5 * span) | (x > hi + 0.5 * span)))
    if outside > 0.01:
        raise ExportError(
            f"{outside:.0%} of the output lies far outside the signature's output range "
            f"[{lo:g}, {hi:g}] (min {x.min():.3g}, max {x.max():.3g}): the graph codes its "
            "output differently (e.g. 0..255); describe it with --signature custom"
        )


def _level(io: OneShotIO, rtol: float) -> float:
    """rtol of the output's span, and at least one level for uint8 outputs (rounding)."""
    lo, hi = io.output_range
    return max(rtol * max(1.0, abs(hi - lo)), 1.0 if io.output_dtype == "uint8" else 0.0)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _compare(sess, io, opts, reference, reference_graph, feeds) -> Verification:
    """The graph vs PyTorch (``reference``) or, for fp16, vs the fp32 graph it came from."""
    if reference is not None:
        import torch

        with torch.no_grad():
            ref = reference(*(torch.from_numpy(feeds[n]) for n in (io.image, io.mask) if n))
        ref = ref.numpy()
        provider = "CPUExecutionProvider vs PyTorch"
    else:
        ref = ort_session(reference_graph, opts.threads).run([io.output], feeds)[0]
        provider = "CPUExecutionProvider vs the fp32 graph"
    got = sess.run([io.output], feeds)[0]
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rtol = RTOL[opts.precision] if opts.tolerance is None else opts.tolerance
    peak = float(np.abs(ref.astype(np.float64)).max())
    tol = max(rtol * max(1.0, peak), 1.0 if io.output_dtype == "uint8" else 0.0)
    max_diff = float(diff.max()) if np.isfinite(diff).all() else float("inf")
    return Verification(
        component=COMPONENT,
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()),
        tolerance=tol,
        passed=bool(max_diff <= tol),
        reference_max_abs=peak,
        rtol=rtol,
        inputs={k: list(v.shape) for k, v in feeds.items()},
        provider=provider,
    )


# ---------------------------------------------------------------------------- command line
def add_oneshot_arguments(parser, sources) -> None:
    """The one-shot flags of ``python -m export`` (``sources``: its required source group)."""
    sources.add_argument("--onnx", type=Path, help="an ONNX one-shot inpainting graph to import")
    sources.add_argument(
        "--torch", type=Path, help="a LaMa (TorchScript or state dict) / MI-GAN checkpoint"
    )
    g = parser.add_argument_group("one-shot models (--onnx / --torch)")
    g.add_argument(
        "--kind",
        choices=["sd-inpaint", "one-shot"],
        default="sd-inpaint",
        help="model kind; one-shot = image + mask -> image networks (LaMa, MI-GAN...)",
    )
    g.add_argument(
        "--signature",
        choices=[*SIGNATURES, "custom"],
        help="the graph's I/O convention (see export/oneshot.py); custom needs --signature-file",
    )
    g.add_argument("--signature-file", type=Path, help="JSON with OneShotIO's fields")
    g.add_argument(
        "--fft",
        choices=["matmul", "native"],
        default="matmul",
        help="LaMa's Fourier units as MatMul with DFT bases (fast on CPU) or ONNX DFT ops",
    )
    g.add_argument(
        "--alias",
        action="append",
        default=[],
        help="another model id requests may use for it (repeatable), e.g. dall-e-2",
    )


def oneshot_options(a, error) -> OneShotOptions:
    """``OneShotOptions`` from parsed arguments; ``error(msg)`` exits (argparse's)."""
    if a.kind != "one-shot" or not (a.onnx or a.torch):
        error("--onnx / --torch go with --kind one-shot, and --kind one-shot needs one of them")
    if a.signature is None:
        error("--kind one-shot needs --signature lama|migan|custom")
    if a.tolerance is not None and a.tolerance < 0:
        error("--tolerance must be >= 0")
    if a.target != "cpu":
        error("--target applies to SD exports; one-shot graphs run unchanged on every provider")
    source = Path(a.onnx or a.torch)
    name = a.name or source.stem
    return OneShotOptions(
        onnx=a.onnx.expanduser().absolute() if a.onnx else None,
        torch=a.torch.expanduser().absolute() if a.torch else None,
        signature=a.signature,
        signature_file=a.signature_file,
        name=name,
        out=(a.out or Path("models") / name).expanduser().absolute(),
        precision="fp32" if a.precision == "auto" else a.precision,
        opset=a.opset,
        verify=not a.no_verify,
        tolerance=a.tolerance,
        force=a.force,
        fft=a.fft,
        aliases=list(a.alias),
        threads=a.threads,
    )
