"""``FusedAttention``, an OpenVINO Python operation over the AMX kernel of ``fused_attention``,
and ``fuse_attention``, the rewrite that puts it in place of ``MatMul -> Softmax -> MatMul``.

OpenVINO's CPU plugin runs a Python operation as a reference node: it hands ``evaluate`` the
inputs as float32 tensors (converting from bf16 where the graph computes in bf16) and takes the
float32 output back. The attention's inputs and output are small (Lq x D per head); what the
kernel saves is inside (Lq x Lk per head). Graphs holding the operation cannot be exported, so
the provider compiles them afresh instead of using its blob cache.
"""

from __future__ import annotations

import numpy as np
import openvino as ov

from . import fused_attention


class FusedAttention(ov.Op):
    """``softmax(a @ b) @ v`` with b given as [..., D, Lk] (``k_dk``) or [..., Lk, D]. The
    graph's own Multiply nodes keep the 1/sqrt(D) scaling (diffusers' export scales q and k).
    ``threads`` 0: the kernel splits its work over the inference's TBB workers (idle while
    this node runs); n > 0: its own n."""

    def __init__(self, inputs=None, k_dk: bool = True, threads: int = 0):
        super().__init__(self, inputs)
        self._k_dk = bool(k_dk)
        self._threads = int(threads)
        if inputs:
            self.constructor_validate_and_infer_types()

    def validate_and_infer_types(self):
        a, v = self.get_input_partial_shape(0), self.get_input_partial_shape(2)
        out = ov.PartialShape([*list(a)[:-1], list(v)[-1]])
        self.set_output_type(0, self.get_input_element_type(0), out)

    def clone_with_new_inputs(self, new_inputs):
        return FusedAttention(new_inputs, self._k_dk, self._threads)

    def visit_attributes(self, visitor):
        visitor.on_attributes({"k_dk": self._k_dk, "threads": self._threads})
        return True

    def has_evaluate(self):
        return True

    def evaluate(self, outputs, inputs):
        a, b, v = (np.asarray(t.data, dtype=np.float32) for t in inputs)
        shape = (*a.shape[:-1], v.shape[-1])
        outputs[0].shape = shape
        out = outputs[0].data
        if out.dtype != np.float32:  # the plugin chose another output type: copy through
            out[...] = fused_attention.attention(a, b, v, k_dk=self._k_dk, threads=self._threads)
        else:
            fused_attention.attention(a, b, v, k_dk=self._k_dk, threads=self._threads, out=out)
        return True


def fuse_attention(model, threads: int = 0) -> int:
    """Replace each ``MatMul(a, b) -> Softmax(last axis) -> MatMul(p, v)`` whose head widths
    fit the kernel (<= 64) and whose key count is dynamic or >= ``MIN_KEYS`` by one
    ``FusedAttention`` (``threads`` as there). Returns how many were replaced; 0 where
    ``fused_attention.load()`` finds no usable kernel."""
    if fused_attention.load() is None:
        return 0
    fused = 0
    for softmax in model.get_ordered_ops():
        if softmax.get_type_name() != "Softmax":
            continue
        parts = _attention(softmax)
        if parts is None:
            continue
        a, b, v, k_dk, pv = parts
        op = FusedAttention([a, b, v], k_dk=k_dk, threads=threads)
        for target in list(pv.output(0).get_target_inputs()):
            target.replace_source_output(op.output(0))
        op.set_friendly_name(pv.get_friendly_name())
        fused += 1
    if fused:
        model.validate_nodes_and_infer_types()
    return fused


def _static(dim) -> int | None:
    return dim.get_length() if dim.is_static else None


def _attention(softmax):
    """(a, b, v, k_dk, the p @ v MatMul) when ``softmax`` sits in an attention the kernel
    takes; else None."""
    rank = softmax.get_output_partial_shape(0).rank
    axis = softmax.get_attributes().get("axis")
    if not rank.is_static or axis not in (-1, rank.get_length() - 1):
        return None
    qk = softmax.input_value(0).get_node()
    users = list(softmax.output(0).get_target_inputs())
    if (
        qk.get_type_name() != "MatMul"
        or len(users) != 1
        or len(qk.output(0).get_target_inputs()) != 1
    ):
        return None
    pv = users[0].get_node()
    if pv.get_type_name() != "MatMul" or users[0].get_index() != 0:
        return None
    qk_attrs, pv_attrs = qk.get_attributes(), pv.get_attributes()
    if qk_attrs.get("transpose_a") or pv_attrs.get("transpose_a") or pv_attrs.get("transpose_b"):
        return None
    a, b, v = qk.input_value(0), qk.input_value(1), pv.input_value(1)
    shapes = [x.get_partial_shape() for x in (a, b, v)]
    if any(not s.rank.is_static or s.rank.get_length() != rank.get_length() for s in shapes):
        return None
    k_dk = not qk_attrs.get("transpose_b")
    d, dv = _static(shapes[0][-1]), _static(shapes[2][-1])
    keys = _static(shapes[1][-1] if k_dk else shapes[1][-2])
    if d is None or dv is None or max(d, dv) > fused_attention.MAX_HEAD_DIM:
        return None
    if keys is not None and keys < fused_attention.MIN_KEYS:
        return None
    return a, b, v, k_dk, pv
