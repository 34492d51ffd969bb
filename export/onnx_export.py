"""PyTorch -> ONNX for one component, with ``torch.onnx.export(..., dynamo=True)``.

Why dynamo (torch.export) rather than TorchScript tracing: it exports diffusers 0.42 /
transformers 5 models as-is with symbolic batch and spatial sizes, and names nothing after the
example shapes. Example inputs use batch 2 (a batch of 1 would be specialized away).

Dynamic axes follow ``components.io_specs``: after export the graph's symbolic dims are renamed
to the manifest's axis names ("batch", "height", "latent_height", ...), so the graph, the
manifest and TensorRT profiles all talk about the same names.
"""

from __future__ import annotations

import contextlib
import time

import onnx
import torch
from torch.export import Dim

from .components import Dims, forward_upsample_sizes, io_specs, sample_inputs, wrap


def _dynamic_shapes(component: str, dims: Dims) -> dict:
    # diffusers' Upsample2D branches on batch >= 64 (.contiguous() for a CUDA kernel); a bound
    # below 64 keeps that branch statically false. ONNX itself does not enforce these bounds.
    batch = Dim("batch", min=1, max=63)
    lh = Dim("latent_height", min=2, max=256)
    lw = Dim("latent_width", min=2, max=256)
    if component == "text_encoder":
        return {"input_ids": {0: batch}}
    if component == "unet":
        return {
            "sample": {0: batch, 2: lh, 3: lw},
            "timestep": {0: batch},
            "encoder_hidden_states": {0: batch},
        }
    if component in ("vae_encoder", "taesd_encoder"):
        # pixel sides are multiples of the VAE scale factor
        return {"sample": {0: batch, 2: dims.scale * lh, 3: dims.scale * lw}}
    if component in ("vae_decoder", "taesd_decoder"):
        return {"latent_sample": {0: batch, 2: lh, 3: lw}}
    raise KeyError(component)


def _rename_dims(model: onnx.ModelProto, component: str, dims: Dims) -> None:
    """Set graph I/O shapes to the manifest's names (the exporter writes "s0", "8*s1", ...)."""
    inputs, outputs = io_specs(component, dims)
    by_name = {s.name: s for s in inputs + outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = by_name[value.name]
        shape = value.type.tensor_type.shape
        assert len(shape.dim) == len(spec.shape), (value.name, shape, spec.shape)
        for dim, want in zip(shape.dim, spec.shape, strict=True):
            if isinstance(want, str):
                dim.Clear()
                dim.dim_param = want
            else:
                assert not dim.dim_param and dim.dim_value == want, (value.name, dim, want)


def export_component(component: str, pipe, dims: Dims, opset: int) -> onnx.ModelProto:
    """Export ``component`` of ``pipe`` to an in-memory ModelProto (weights included).

    Example inputs: batch 2 at a non-square size about half the native resolution, so no size
    is special-cased (1 or equal sides would be).
    """
    module = wrap(component, pipe)
    side = max(2, dims.sample_size // 2)  # latent pixels
    height, width = side * dims.scale, (side + 2) * dims.scale
    args = sample_inputs(component, dims, batch=2, height=height, width=width, seed=0)
    names = [s.name for s in io_specs(component, dims)[1]]
    t0 = time.perf_counter()
    guard = forward_upsample_sizes(pipe.unet) if component == "unet" else contextlib.nullcontext()
    with torch.no_grad(), guard:
        program = torch.onnx.export(
            module,
            kwargs=args,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=_dynamic_shapes(component, dims),
            output_names=names,
            optimize=True,
            verify=False,
        )
    model = program.model_proto
    _rename_dims(model, component, dims)
    print(f"          {component}: exported in {time.perf_counter() - t0:.1f}s", flush=True)
    return model
