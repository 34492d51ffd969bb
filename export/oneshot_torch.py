"""``--torch FILE`` for one-shot models: load a LaMa / MI-GAN checkpoint into our PyTorch
implementation of the architecture and export it with the dynamo exporter.

What is accepted (``load_checkpoint``):
- a TorchScript archive (IOPaint's ``big-lama.pt``): its ``state_dict()`` is read, and the
  archive itself is the verification reference (so the export is checked against the network
  users run, not only against our re-implementation);
- a plain state dict (``torch.load(weights_only=True)``), optionally under ``"state_dict"``
  (LaMa's Lightning ``best.ckpt``) - MI-GAN's released ``migan_*.pt`` are state dicts.

Export: opset 18 (torch 2.13's dynamo exporter; asking it for 17 makes ONNX's version converter
fail on ``Pad``, and the TorchScript exporter has no ``aten::fft_rfftn`` at any opset), dynamic
batch and size (LaMa: sides multiples of 8; MI-GAN's pipeline: any), I/O names of the
signature. LaMa's Fourier units export as MatMul with run-time DFT bases (``--fft matmul``,
default; ~40x faster than ONNX Runtime's CPU DFT kernel on LaMa's 64x64 maps) or as ONNX
``DFT`` ops (``--fft native``).
"""

from __future__ import annotations

import time
from pathlib import Path

from server.models.manifest import OneShotIO

from .exporter import Clock, ExportError

#: the sample batch and size (non-square; multiples of 8) traced by the exporter
EXAMPLE_BATCH, EXAMPLE_SIZE = 2, (64, 80)


def load_checkpoint(path: Path):
    """(state dict, TorchScript module or None) of a checkpoint file."""
    import torch

    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        scripted = None
    if scripted is not None:
        return {k: v.detach() for k, v in scripted.state_dict().items()}, scripted.eval()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of many kinds
        raise ExportError(f"{path}: not a TorchScript archive nor a state dict ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ExportError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj, None


def build_module(signature: str, state: dict, fft: str):
    """Our implementation of the architecture holding ``state``; (module, native side)."""
    if signature == "lama":
        from .lama_like import from_state_dict, set_fft

        # LaMa is trained at 256 and used at 512+ (IOPaint's ONNX export is 512x512)
        return set_fft(from_state_dict(state), fft), 512
    from .migan_like import from_state_dict

    model = from_state_dict(state)
    return model, model.generator.resolution


def export_torch(opts, io: OneShotIO, dst: Path, log: Clock):
    """Export ``opts.torch`` to ``dst`` (fp32). Returns (reference module, native side, note)."""
    import torch

    torch.set_num_threads(opts.threads)
    log(f"loading {opts.torch}")
    state, scripted = load_checkpoint(opts.torch)
    try:
        module, native = build_module(opts.signature, state, opts.fft)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ExportError(
            f"{opts.torch}: the weights do not fit the {opts.signature} architecture ({exc})"
        ) from None
    reference, note = module, None
    if scripted is not None and _same_interface(scripted, module, io, opts.signature):
        reference = scripted
        note = "verified against the TorchScript archive itself"
    elif scripted is not None:
        note = (
            "the TorchScript archive's forward is not (image, mask) -> image: verified against "
            "our implementation holding its weights"
        )
    n = sum(p.numel() for p in module.parameters())
    log(f"{opts.signature}: {n / 1e6:.1f} M parameters; exporting (dynamo, opset {opts.opset})")
    t0 = time.perf_counter()
    model = export_module(module, io, opts.signature, opts.opset)
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst))
    log(f"exported in {time.perf_counter() - t0:.1f}s")
    return reference, native, note


def _same_interface(scripted, module, io: OneShotIO, signature: str) -> bool:
    """Whether the TorchScript module takes (image, mask) and returns an image as ours does."""
    import torch

    inputs = example_inputs(signature)
    try:
        with torch.no_grad():
            got, want = scripted(*inputs), module(*inputs)
    except Exception:  # noqa: BLE001 - any failure means "another interface"
        return False
    return isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == want.dtype


def example_inputs(signature: str):
    import torch

    g = torch.Generator().manual_seed(0)
    h, w = EXAMPLE_SIZE
    b = EXAMPLE_BATCH
    if signature == "migan":
        image = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
        mask = (torch.rand(b, 1, h, w, generator=g) > 0.3).to(torch.uint8) * 255
    else:
        image = torch.rand(b, 3, h, w, generator=g)
        mask = (torch.rand(b, 1, h, w, generator=g) > 0.7).float()
    return image, mask


def export_module(module, io: OneShotIO, signature: str, opset: int):
    """Dynamo export with dynamic batch/height/width named as the manifest names them."""
    import torch
    from torch.export import Dim

    batch = Dim("batch", min=1, max=64)
    if signature == "lama":  # three stride-2 stages: sides are multiples of 8
        h, w = 8 * Dim("h8", min=2, max=1024), 8 * Dim("w8", min=2, max=1024)
    else:
        h, w = Dim("height", min=8, max=8192), Dim("width", min=8, max=8192)
    axes = {0: batch, 2: h, 3: w}
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            example_inputs(signature),
            dynamo=True,
            opset_version=opset,
            input_names=[io.image, io.mask],
            output_names=[io.output],
            dynamic_shapes={"image": axes, "mask": axes},
            optimize=True,
            verify=False,
        )
    model = program.model_proto
    names = ["batch", None, "height", "width"]
    for value in list(model.graph.input) + list(model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None and dim.dim_param:
                dim.Clear()
                dim.dim_param = name
    got = [v.name for v in model.graph.input], [v.name for v in model.graph.output]
    if got != ([io.image, io.mask], [io.output]):
        raise ExportError(f"the exported graph's I/O names are {got}; expected the signature's")
    return model
