"""FLOPs of an ONNX graph at concrete input shapes, counted from MatMul / Gemm / Conv nodes.

One multiply-add counts as 2 FLOPs. Shapes come from shape inference at the benchmark's input
shapes: ONNX Runtime's symbolic shape inference first (it follows the dynamic Reshape chains the
dynamo exporter writes for attention), ONNX's own inference (with data propagation) as fallback.
Nodes whose shapes stay unknown are listed in ``unresolved``, never guessed.

Counted:
- MatMul ``A[..., M, K] @ B[..., K, N]``: 2 * prod(output shape) * K.
- Gemm (M x K) @ (K x N): 2 * M * N * K (+ M * N for the bias when C is given).
- Conv: 2 * prod(output shape) * (C_in / group) * prod(kernel) (+ prod(output) for a bias).
- ConvTranspose: 2 * prod(input shape) * (C_out / group) * prod(kernel).
- contrib attention (CUDA-fused exports): MultiHeadAttention / Attention: 4 * B * S_q * S_kv * D
  (Q K^T and the weights times V; projections inside ``Attention`` added when present).
Everything else (normalizations, activations, softmax, elementwise) is left out: it is < 1-2 % of
a Stable Diffusion UNet's arithmetic, and memory-bound anyway. ``by_op`` shows the split.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COUNTED_OPS = (
    "MatMul",
    "Gemm",
    "Conv",
    "ConvTranspose",
    "MultiHeadAttention",
    "Attention",
    "FusedMatMul",
    "FusedConv",
)


@dataclass
class FlopReport:
    total: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    nodes: int = 0  # counted nodes
    unresolved: list[str] = field(default_factory=list)  # "op_type name" of counted-op nodes
    shape_inference: str = ""
    input_shapes: dict[str, list[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_flops": self.total,
            "gflops": self.total / 1e9,
            "by_op": dict(self.by_op),
            "counted_nodes": self.nodes,
            "unresolved_nodes": list(self.unresolved),
            "shape_inference": self.shape_inference,
            "input_shapes": self.input_shapes,
            "method": "2 x multiply-adds of MatMul/Gemm/Conv(/attention) nodes",
        }


def _load(model_or_path, external: bool = False):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path), load_external_data=external)
    copy = onnx.ModelProto()
    copy.CopyFrom(model_or_path)
    return copy


def _fix_inputs(model, input_shapes: dict[str, list[int]]) -> None:
    for inp in model.graph.input:
        if inp.name not in input_shapes:
            continue
        want = list(input_shapes[inp.name])
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(want):
            raise ValueError(f"input {inp.name!r} has rank {len(dims)}, got shape {want}")
        for d, v in zip(dims, want, strict=True):
            d.ClearField("dim_param")
            d.dim_value = int(v)


def _infer(model) -> tuple[Any, str]:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
        if out is not None:
            return out, "onnxruntime symbolic"
    except Exception:  # noqa: BLE001 - fall back to ONNX's own inference
        pass
    import onnx

    return onnx.shape_inference.infer_shapes(model, data_prop=True), "onnx (data_prop)"


def _shape_map(model) -> dict[str, list[int | None]]:
    shapes: dict[str, list[int | None]] = {}
    g = model.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(node, shapes: dict[str, list[int | None]]) -> int | None:
    """FLOPs of one node, or None when a needed shape is unknown. 0 for uncounted ops."""
    op = node.op_type
    get = shapes.get
    if op in ("MatMul", "FusedMatMul"):
        a, out = get(node.input[0]), get(node.output[0])
        if not (_known(a) and _known(out)):
            return None
        k = a[-1]
        if op == "FusedMatMul" and _attr(node, "transA", 0):
            k = a[-2] if len(a) >= 2 else a[-1]
        return 2 * math.prod(out) * k
    if op == "Gemm":
        a, out = get(node.input[0]), get(node.output[0])
        if not (_known(a) and _known(out)):
            return None
        k = a[0] if _attr(node, "transA", 0) else a[1]
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] else 0
        return 2 * math.prod(out) * k + bias
    if op in ("Conv", "FusedConv"):
        w, out = get(node.input[1]), get(node.output[0])
        if not (_known(w) and _known(out)):
            return None
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] else 0
        return 2 * math.prod(out) * w[1] * math.prod(w[2:]) + bias
    if op == "ConvTranspose":
        x, w = get(node.input[0]), get(node.input[1])
        if not (_known(x) and _known(w)):
            return None
        return 2 * math.prod(x) * w[1] * math.prod(w[2:])  # w: (C_in, C_out / group, *k)
    if op == "MultiHeadAttention":
        q = get(node.input[0])
        k = get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if not _known(q):
            return None
        if len(q) == 5:  # packed QKV (B, S, N, 3, H)
            b, s, n, _, h = q
            return 4 * b * s * s * n * h
        if not _known(k):
            return None
        b, s, d = q[0], q[1], q[-1]
        # key: (B, L, D), (B, N, L, H) or packed KV (B, L, N, 2, H)
        kv = k[2] if len(k) == 4 else k[1]
        return 4 * b * s * kv * d
    if op == "Attention":
        x, w = get(node.input[0]), get(node.input[1])
        if not (_known(x) and _known(w)):
            return None
        b, s, d_in = x
        proj = 2 * b * s * d_in * w[1]
        d = w[1] // 3
        return proj + 4 * b * s * s * d
    return 0


def count_flops(model_or_path, input_shapes: dict[str, list[int]]) -> FlopReport:
    """Count FLOPs of one forward pass at ``input_shapes`` ({graph input name: concrete shape}).

    ``model_or_path``: an ``onnx.ModelProto`` (copied, not modified) or a path to ``model.onnx``
    (read without its external weight data: only initializer dims are needed; read again with
    it when shape inference needed the values of externally stored constants)."""
    report = _count(_load(model_or_path), input_shapes)
    if report.unresolved and isinstance(model_or_path, (str, Path)):
        again = _count(_load(model_or_path, external=True), input_shapes)
        if len(again.unresolved) < len(report.unresolved):
            again.shape_inference += " (with external data)"
            return again
    return report


def _count(model, input_shapes: dict[str, list[int]]) -> FlopReport:
    _fix_inputs(model, input_shapes)
    inferred, how = _infer(model)
    shapes = _shape_map(inferred)
    report = FlopReport(
        shape_inference=how, input_shapes={k: list(v) for k, v in input_shapes.items()}
    )
    by_op: Counter[str] = Counter()
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        f = node_flops(node, shapes)
        if f is None:
            report.unresolved.append(f"{node.op_type} {node.name}")
            continue
        by_op[node.op_type] += f
        report.nodes += 1
    report.by_op = dict(by_op)
    report.total = sum(by_op.values())
    return report


def count_components(
    folder: Path, wanted: dict[str, dict[str, dict[str, list[int]]]], log=print
) -> dict[str, Any]:
    """Count every ``wanted[recipe][component] = {input: shape}`` in export ``folder``.

    Returns ``{"by_recipe": {recipe: {component: FlopReport.as_dict()}}, "errors": [...]}``;
    a component that fails is named in ``errors`` and left out (FLOPs are optional)."""
    import time

    by_recipe: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for recipe, components in wanted.items():
        comp: dict[str, Any] = {}
        for name, inputs in components.items():
            t = time.perf_counter()
            try:
                comp[name] = count_flops(folder / name / "model.onnx", inputs).as_dict()
            except Exception as exc:  # noqa: BLE001 - reported; the others still count
                errors.append(f"{name} at {recipe}: {type(exc).__name__}: {exc}")
                continue
            log(
                f"@@ FLOPs {name} @ {recipe} {inputs}: {comp[name]['gflops']:.2f} GFLOP "
                f"({time.perf_counter() - t:.1f} s)"
            )
        by_recipe[recipe] = comp
    return {"by_recipe": by_recipe, "errors": errors}
