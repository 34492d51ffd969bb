"""Graph edits for the OpenVINO provider: find the UNet's sinusoidal time embedding and mark it
precise (kept in fp32) in the IR text.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

#: version of the pin below, part of the OpenVINO provider's cache keys: bump it when the pin
#: changes what a compiled graph computes (2: the timestep is no longer rounded at the input)
PIN_VERSION = 2

#: ops of the sinusoidal timestep embedding (t * freqs -> sin/cos) and what feeds them.
_TIME_EMBED_OPS = {
    "Convert", "Multiply", "Sin", "Cos", "Exp", "Concat", "Unsqueeze", "Reshape", "Broadcast",
    "Gather", "Slice", "StridedSlice", "Squeeze", "Range", "Divide", "Power", "Add", "Subtract",
    "Constant", "Tile", "Split", "VariadicSplit",
}  # fmt: skip


def time_embedding_nodes(model, input_name: str = "timestep") -> set[str]:
    """Friendly names of the UNet's sinusoidal time-embedding subgraph (to keep in fp32).

    Reduced precision would compute ``timestep * frequencies`` (values up to ~1000) in bf16/f16
    and then sin/cos of it: a relative error of 2^-8 on 999 is ~4 rad of phase, which corrupts
    the embedding. We walk forward from the ``timestep`` input through elementwise/shape ops up
    to and including the Sin/Cos nodes (plus the Concat joining them and the constants feeding
    those nodes); integer shape paths (ShapeOf) and the time MLP (MatMul) are left alone.
    """
    params = [p for p in model.get_parameters() if input_name in p.get_output_tensor(0).get_names()]
    if not params:
        return set()
    marked: set[str] = set()
    frontier = [params[0]]
    seen: set[str] = set()
    while frontier:
        node = frontier.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        kind = node.get_type_name()
        if node is not params[0] and kind not in _TIME_EMBED_OPS:
            continue  # e.g. MatMul of the time MLP: left to the plugin's precision
        if kind == "ShapeOf":
            continue  # integer shape arithmetic (batch size): no float precision involved
        marked.add(node.get_friendly_name())
        for inp in node.inputs():  # the frequency table and scale constants
            src = inp.get_source_output().get_node()
            if src.get_type_name() in ("Constant", "Convert"):
                marked.add(src.get_friendly_name())
        if kind in ("Sin", "Cos"):
            for out in node.outputs():  # the Concat of sin/cos, and nothing further
                for target in out.get_target_inputs():
                    nxt = target.get_node()
                    if nxt.get_type_name() == "Concat":
                        marked.add(nxt.get_friendly_name())
            continue
        for out in node.outputs():
            for target in out.get_target_inputs():
                frontier.append(target.get_node())
    return marked


def unsqueeze_to_reshape(model, names: set[str]) -> set[str]:
    """Replace the marked Unsqueeze/Squeeze nodes of ``model`` by equivalent Reshape nodes (in
    place); returns ``names`` with the replacements' names.

    Why: OpenVINO's own transformations turn Unsqueeze/Squeeze into Reshape when compiling, and
    the ``precise`` mark is not copied to the new node. The first node after the ``timestep``
    input is an Unsqueeze, so the CPU plugin reordered the timestep to bf16 right at the input:
    999, 998 and 1000 all became 1000 before the fp32 sin/cos (measured: identical UNet outputs
    for the three, and a bf16 UNet error of 2.9% at t=999 against 1.1% at t=500). A Reshape
    that we create keeps its mark. Nodes with more than one dynamic dimension are left alone
    (a Reshape pattern can infer only one); the time embedding has one (the batch).
    """
    import openvino.opset13 as ops

    out = set(names)
    for node in list(model.get_ordered_ops()):
        name = node.get_friendly_name()
        if name not in names or node.get_type_name() not in ("Unsqueeze", "Squeeze"):
            continue
        shape = node.get_output_partial_shape(0)
        if shape.rank.is_dynamic:
            continue
        dims = [d.get_length() if d.is_static else -1 for d in shape]
        if dims.count(-1) > 1:
            continue
        pattern = ops.constant(np.array(dims, dtype=np.int64))
        reshape = ops.reshape(node.input_value(0), pattern, special_zero=False)
        reshape.set_friendly_name(name)  # keeps the name the IR marking looks for
        node.output(0).replace(reshape.output(0))
        out.add(pattern.get_friendly_name())
    return out


_PRECISE = '<rt_info><attribute name="precise" version="0" /></rt_info>'


def mark_precise_in_ir(xml: str, names: set[str]) -> str:
    """Add OpenVINO's ``precise`` runtime attribute (ov::disable_fp16_compression) to the IR
    layers named ``names``.

    Why through the IR text: the Python API has no way to set the attribute with its C++ type
    (an rt_info string under the same key is ignored by the precision passes, measured), while
    the IR reader turns ``<attribute name="precise" version="0"/>`` into the real attribute,
    which OpenVINO's fp16 compression and the CPU plugin's inference-precision enforcement
    (``keepOrigPrecision``) honour.
    """

    def patch(match: re.Match) -> str:
        layer = match.group(0)
        name = re.search(r'name="([^"]*)"', layer)
        if name is None or html.unescape(name.group(1)) not in names or "<rt_info>" in layer:
            return layer
        return re.sub(r"(\n\s*)(<input>|<output>)", rf"\1{_PRECISE}\1\2", layer, count=1)

    return re.sub(r"<layer [^>]*>.*?</layer>", patch, xml, flags=re.S)


def write_ir_time_embedding_fp32(core, path: Path, folder: Path) -> tuple[Path, int]:
    """Convert ``path`` (ONNX) to an IR in ``folder`` whose time-embedding nodes are marked
    precise. Returns (xml path, number of nodes marked); (path, 0) if there is no ``timestep``
    input (not a UNet). The IR's .bin is the size of the weights."""
    import openvino as ov

    model = core.read_model(str(path))
    names = time_embedding_nodes(model)
    if not names:
        return Path(path), 0
    names = unsqueeze_to_reshape(model, names)
    xml_path = Path(folder) / "model.xml"
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    xml_path.write_text(mark_precise_in_ir(xml_path.read_text("utf-8"), names), "utf-8")
    return xml_path, len(names)


def _is_precise(op) -> bool:
    return any(k.startswith(("precise", "DisablePrecisionConversion")) for k in op.get_rt_info())


#: version of ``split_fused_projections``, part of the OpenVINO provider's cache keys
SPLIT_VERSION = 1


def split_fused_projections(model) -> int:
    """Rewrite ``Split(MatMul(x, W) + b)`` along the last axis into one ``MatMul + Add`` per
    part, on that part's columns of ``W`` and ``b``. Returns how many Splits were removed.

    diffusers' GEGLU projects to twice the feed-forward width and chunks the result into the
    value and the gate: one Split per transformer block (16 in the SD 1.5 UNet). OpenVINO's CPU
    plugin runs that Split with its reference kernel, a strided copy of the whole projection
    (~3% of the bf16 UNet call on a Zen 4: 0.11 s of 3.6 s of node time); the two smaller
    MatMuls write their parts directly, for the same FLOPs. Each output is the same dot
    products over the same weights: in f32 the result agrees within 1e-5; in bf16 the kernels'
    rounding moves it as any change of kernel does (SD 1.5 UNet, Zen 4: 1.11-1.40% vs fp32
    after, 1.21-1.32% before).
    """
    import openvino.opset13 as ops

    removed = 0
    for split in model.get_ordered_ops():
        if split.get_type_name() != "Split":
            continue
        parts = _fused_projection(split)
        if parts is None:
            continue
        x, weight, bias, transpose_b = parts
        n = split.get_output_size()
        out_axis = 0 if transpose_b else 1  # the weight's output-feature axis
        for k, (w, b) in enumerate(
            zip(np.split(weight, n, axis=out_axis), np.split(bias, n, axis=-1), strict=True)
        ):
            mm = ops.matmul(x, ops.constant(np.ascontiguousarray(w)), False, transpose_b)
            add = ops.add(mm, ops.constant(np.ascontiguousarray(b)))
            for target in list(split.output(k).get_target_inputs()):
                target.replace_source_output(add.output(0))
        removed += 1
    if removed:
        model.validate_nodes_and_infer_types()
    return removed


def _fused_projection(split):
    """(x, W, b, transpose_b) when ``split`` cuts ``MatMul(x, W) + b`` (W, b constants, no
    other consumer) into equal parts along the last axis; else None."""
    axis_node = split.input_value(1).get_node()
    add = split.input_value(0).get_node()
    if axis_node.get_type_name() != "Constant" or add.get_type_name() != "Add":
        return None
    rank = split.input_value(0).get_partial_shape().rank
    axis = int(np.asarray(axis_node.get_data()).reshape(-1)[0])
    if not rank.is_static or axis not in (-1, rank.get_length() - 1):
        return None
    mm, bias = (add.input_value(i).get_node() for i in (0, 1))
    if mm.get_type_name() == "Constant":
        mm, bias = bias, mm
    if mm.get_type_name() != "MatMul" or bias.get_type_name() != "Constant":
        return None
    attrs = mm.get_attributes()
    w_node = mm.input_value(1).get_node()
    if attrs.get("transpose_a") or w_node.get_type_name() != "Constant":
        return None
    if len(add.output(0).get_target_inputs()) != 1 or len(mm.output(0).get_target_inputs()) != 1:
        return None
    weight, b = w_node.get_data(), bias.get_data()
    n = split.get_output_size()
    transpose_b = bool(attrs.get("transpose_b"))
    width = weight.shape[0 if transpose_b else -1]
    # a bias of [width], [1, width], [1, 1, width]...: one value per output feature
    if weight.ndim != 2 or b.shape[-1:] != (width,) or b.size != width or width % n:
        return None
    return mm.input_value(0), weight, b.reshape(-1), transpose_b
