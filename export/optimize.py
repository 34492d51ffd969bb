"""Saving (external data over 2 GB), fp16 conversion and CUDA-target fusions.

- fp16: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``: weights
  and activations become float16, graph inputs/outputs stay float32 (Casts at the edges), so the
  server feeds the same arrays to fp32 and fp16 models. (onnxconverter-common's converter breaks
  these graphs.) Shape inference runs *by path* first, because in-memory inference cannot handle
  protos over 2 GB (the full UNet is 3.4 GB fp32); conversion then runs with it disabled.
- cpu target: no offline ORT optimization. ORT's CPU EP applies its own (basic/extended/layout)
  optimizations at session load; baking them into the file would tie it to one ORT build and EP.
- cuda target: ``onnxruntime.transformers.optimizer`` fusions (model_type unet / vae / clip):
  MultiHeadAttention, GroupNorm (NHWC, CUDA-only contrib op), BiasSplitGelu, SkipLayerNorm...
  Fusions run on the fp32 graph, then fp16 conversion, as ORT's own SD optimize_pipeline does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

#: weights above this go to one external-data file beside model.onnx (protobuf's limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
ORT_MODEL_TYPE = {
    "text_encoder": "clip",
    "unet": "unet",
    "vae_encoder": "vae",
    "vae_decoder": "vae",
}


def weights_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def data_file(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` to ``path`` (+ ``model.onnx.data`` when large); returns the files written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data_file(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing external-data file
    if weights_bytes(model) > EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        data.chmod(0o644)  # onnx creates it 0600; the server may run as another user
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def to_fp16(src: Path, dst: Path) -> list[Path]:
    """fp32 graph file -> fp16 graph file (float32 I/O). Returns the files written."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with tempfile.TemporaryDirectory(dir=dst.parent.parent) as tmp:
        inferred = Path(tmp) / "inferred.onnx"
        # By path: works for > 2 GB models (weights stay in src's external-data file).
        onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
        model = onnx.load(str(inferred), load_external_data=False)
        onnx.external_data_helper.load_external_data_for_model(model, str(src.parent))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    return save(model, dst)


def fuse_for_cuda(component: str, src_fp32: Path, dst: Path, fp16: bool) -> tuple[list[Path], str]:
    """ORT transformer fusions for the CUDA EP (+ fp16). Returns (files, description).

    Raises whatever the fusion code raises; the caller falls back to the unfused graph.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = ORT_MODEL_TYPE[component]
    options = FusionOptions(model_type)
    if model_type == "unet":
        # as ORT's stable_diffusion/optimize_pipeline.py: packed QKV/KV only pay off in fp16
        options.enable_packed_kv = fp16 and options.enable_packed_kv
        options.enable_packed_qkv = fp16 and options.enable_packed_qkv
    m = optimize_model(
        str(src_fp32),
        model_type=model_type,
        num_heads=0,  # deduced from the graph
        hidden_size=0,
        opt_level=0,  # fusions only: ORT runtime optimizations happen at session load
        optimization_options=options,
        use_gpu=True,
    )
    fused = {k: v for k, v in (m.get_fused_operator_statistics() or {}).items() if v}
    if fp16:
        m.convert_float_to_float16(keep_io_types=True)
    files = save(m.model, dst)
    desc = f"ort-transformers {model_type} fusions: " + (
        ", ".join(f"{k}={v}" for k, v in sorted(fused.items())) or "none matched"
    )
    return files, desc


def fuse_guarded(component: str, src_fp32: Path, dst: Path, fp16: bool):
    """``fuse_for_cuda``, or (None, reason) when the fusion code fails.

    Why guarded: ORT's UNet attention fusion has crashed under numpy 2.x in one try; an export
    should then still produce a valid (unfused) graph and say so in the manifest.
    """
    try:
        return fuse_for_cuda(component, src_fp32, dst, fp16)
    except Exception as exc:  # noqa: BLE001 - third-party fusion code, any failure is non-fatal
        for f in (dst, data_file(dst)):
            if f.exists():
                os.remove(f)
        return None, f"ORT fusions failed ({type(exc).__name__}: {exc}); graph left unfused"
