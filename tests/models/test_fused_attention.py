"""The AMX attention kernel, its OpenVINO operation and the graph rewrite.

Kernel parity runs where the CPU has AMX-BF16 (the kernel is only ever called there); the
numpy fallback, the pattern matcher's refusals and the build run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.models.providers import fused_attention as fa
from tests.helpers import NO_AMX_BF16

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")

amx = pytest.mark.skipif(fa.load() is None, reason=NO_AMX_BF16)


def reference(q, k, v, scale=1.0, k_dk=False):
    """float64 softmax(scale * q @ k^T) @ v."""
    kt = k if k_dk else np.swapaxes(k, -1, -2)
    s = np.matmul(q.astype(np.float64), kt.astype(np.float64)) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.matmul(p / p.sum(-1, keepdims=True), v.astype(np.float64))


def rel_err(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def inputs(lead, lq, lk, d, dv, k_dk, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((*lead, lq, d), dtype=np.float32) * 2  # peaked rows, not flat ones
    k = rng.standard_normal((*lead, d, lk) if k_dk else (*lead, lk, d), dtype=np.float32)
    v = rng.standard_normal((*lead, lk, dv), dtype=np.float32)
    return q, k, v


@amx
@pytest.mark.parametrize(
    "lead,lq,lk,d,dv",
    [
        ((1, 8), 96, 300, 40, 40),
        ((2, 3), 17, 64, 64, 64),
        ((5,), 33, 1000, 17, 5),
        ((1,), 1, 1, 32, 16),
        ((2,), 16, 257, 8, 48),
    ],  # fmt: skip
)
@pytest.mark.parametrize("k_dk", [False, True])
@pytest.mark.parametrize("threads", [0, 1, 2])
def test_kernel_matches_float64(lead, lq, lk, d, dv, k_dk, threads):
    """Ragged query and key counts (tails of 16-row blocks and 64-key groups), head widths of
    one and two tiles, both key layouts: within bf16 rounding of the float64 result."""
    q, k, v = inputs(lead, lq, lk, d, dv, k_dk)
    scale = d**-0.5
    got = fa.attention(q, k, v, k_dk=k_dk, scale=scale, threads=threads)
    assert got.shape == (*lead, lq, dv) and got.dtype == np.float32
    assert rel_err(got, reference(q, k, v, scale, k_dk)) < 0.02
    # the same within float32 numpy, the fallback's path
    assert rel_err(got, _numpy(q, k, v, scale, k_dk)) < 0.02


def _numpy(q, k, v, scale, k_dk):
    q2 = np.concatenate([q, np.zeros((*q.shape[:-1], 65 - q.shape[-1]), np.float32)], -1)
    if k_dk:
        pad = np.zeros((*k.shape[:-2], 65 - k.shape[-2], k.shape[-1]), np.float32)
        k2 = np.concatenate([k, pad], -2)
    else:
        k2 = np.concatenate([k, np.zeros((*k.shape[:-1], 65 - k.shape[-1]), np.float32)], -1)
    return fa.attention(q2, k2, v, k_dk=k_dk, scale=scale)  # d = 65: over the kernel's bound


def test_fallback_beyond_the_kernel_is_exact():
    """Head widths over 64 (and unequal leading axes) take float32 numpy on every CPU."""
    q, k, v = inputs((2,), 20, 30, 80, 8, False)
    np.testing.assert_allclose(
        fa.attention(q, k, v, scale=0.1), reference(q, k, v, 0.1), rtol=1e-4, atol=1e-5
    )


def test_cpu_flags_decide():
    assert fa.cpu_has_amx({"amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512dq", "avx2"})
    assert not fa.cpu_has_amx({"avx512_bf16", "avx512bw", "avx2"})  # a Zen 4: no tiles


def test_build_is_named_by_source_and_flags():
    path = fa.library_path()
    assert path.parent in fa.build_dirs() and path.name.startswith("libattention_amx-")
    if fa.load() is not None:
        assert fa.build() == path and path.exists()


def test_an_existing_build_is_found_in_any_build_folder(tmp_path, monkeypatch):
    """The CPU image builds beside the source as root and serves as another user, whose own
    build folder is the cache: the image's build must be found there, not rebuilt."""
    package, cache = tmp_path / "package" / "build", tmp_path / "cache"
    monkeypatch.setattr(fa, "build_dirs", lambda: [package, cache])
    name = fa.library_path().name
    assert fa.library_path() == package / name  # nothing built: the first writable folder
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b"")
    assert fa.library_path() == cache / name
    package.mkdir(parents=True)
    (package / name).write_bytes(b"")
    assert fa.library_path() == package / name


def test_a_missing_compiler_is_a_clear_error_and_never_fails_the_install(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(fa, "build_dirs", lambda: [tmp_path / "build"])
    with pytest.raises(RuntimeError, match="does not exist"):
        fa.build(compiler="/nonexistent/g++")
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with caplog.at_level("INFO", logger="server.models.providers"):
        assert fa.main() == 0
    (line,) = [r.getMessage() for r in caplog.records]
    assert "not built" in line and "/nonexistent/g++" in line
    assert not list((tmp_path / "build").glob("*.so"))


def test_amx_attention_modes_are_checked():
    for mode in fa.MODES:
        fa.check_mode(mode)
    with pytest.raises(ValueError, match="auto, on, off"):
        fa.check_mode("yes")


def attention_model(lk_static: int | None, d: int, dv: int, heads: int = 2):
    """The attention of diffusers' ONNX export: q and k^T each scaled by d**-0.25, MatMul,
    Softmax, MatMul with v; k given as [B, H, D, Lk]."""
    lk = -1 if lk_static is None else lk_static
    q = ops.parameter([-1, heads, -1, d], ov.Type.f32, name="q")
    kt = ops.parameter([-1, heads, d, lk], ov.Type.f32, name="kt")
    v = ops.parameter([-1, heads, lk, dv], ov.Type.f32, name="v")
    c = ops.constant(np.float32(d**-0.25))
    s = ops.matmul(ops.multiply(q, c), ops.multiply(kt, c), False, False)
    out = ops.matmul(ops.softmax(s, -1), v, False, False)
    return ov.Model([ops.relu(out)], [q, kt, v])


def _fused(model) -> int:
    return sum(op.get_type_name() == "FusedAttention" for op in model.get_ordered_ops())


@amx
def test_rewrite_replaces_long_attention_and_keeps_the_result():
    from server.models.providers.openvino_attention import fuse_attention

    model = attention_model(None, 40, 40)
    rng = np.random.default_rng(3)
    feeds = [
        rng.standard_normal(s, dtype=np.float32)
        for s in [(2, 2, 70, 40), (2, 2, 40, 300), (2, 2, 300, 40)]
    ]
    want = np.maximum(reference(feeds[0] * 40**-0.5, feeds[1], feeds[2], k_dk=True), 0)
    assert fuse_attention(model) == 1 and _fused(model) == 1
    for hint in ("f32", "bf16"):
        got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})(feeds)[0]
        assert got.shape == want.shape and rel_err(got, want) < 0.02
    # a static reshape (the provider's --static-shapes) keeps the operation
    clone = model.clone()
    clone.reshape({"q": [2, 2, 70, 40], "kt": [2, 2, 40, 300], "v": [2, 2, 300, 40]})
    got = ov.Core().compile_model(clone, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})(feeds)[0]
    assert rel_err(got, want) < 0.02


@amx
@pytest.mark.parametrize("lk,d,dv", [(77, 40, 40), (None, 80, 80), (None, 40, 96)])
def test_rewrite_leaves_short_or_wide_attention(lk, d, dv):
    """Cross-attention's 77 keys and heads wider than 64 stay with OpenVINO."""
    from server.models.providers.openvino_attention import fuse_attention

    model = attention_model(lk, d, dv)
    assert fuse_attention(model) == 0 and _fused(model) == 0
