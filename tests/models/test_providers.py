"""Execution providers.

What runs here (CPU only, no GPU on the test machines):
- CPU: loads and runs the tiny export, equal to a plain ORT session; threads option.
- CUDA / TensorRT: only their CPU-visible logic (provider lists, options, TensorRT shape profile
  strings and cache folder, the error raised when onnxruntime lacks the EP). Not executed.
- OpenVINO (when the ``openvino`` package is installed): f32/bf16/f16 vs ORT fp32 on the tiny
  UNet, and the time-embedding fp32 marks checked against OpenVINO's own fp16 compression.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.models import providers as prov
from server.models.manifest import ComponentSpec, Manifest, TensorSpec
from server.models.providers import (
    CPUProvider,
    CUDAProvider,
    OpenVINOProvider,
    ProviderUnavailable,
    TensorRTProvider,
    fused_attention,
    select_provider,
    trt_shape_string,
)
from server.models.providers import onnxruntime as ort_eps
from server.models.providers.base import _model_folder
from server.models.providers.openvino_graph import _is_precise
from tests.helpers import NO_NATIVE_BF16

ort = pytest.importorskip("onnxruntime")


def unet_feeds(batch: int = 3, hidden: int = 32, h: int = 8, w: int = 12):
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((batch, 9, h, w), dtype=np.float32),
        "timestep": np.array([999.0, 501.0, 1.0][:batch], np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, hidden), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def unet_path(tiny_model_fp32):
    m = Manifest.read(tiny_model_fp32)
    return tiny_model_fp32 / m.components["unet"].file, m


@pytest.fixture(scope="module")
def ort_reference(unet_path):
    path, m = unet_path
    feeds = unet_feeds(hidden=m.text_hidden_size)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return feeds, sess.run(None, feeds)[0]


# ---------------------------------------------------------------- selection


def test_select_auto_without_cuda_is_the_per_component_cpu_choice(monkeypatch):
    monkeypatch.setattr(ort_eps, "ort_providers", lambda: ["CPUExecutionProvider"])
    p = select_provider("auto", threads=2)
    assert isinstance(p, prov.AutoProvider) and p.name == "auto" and p.threads == 2
    assert "onnxruntime" in p.runtimes


def test_select_auto_is_cuda_when_available(monkeypatch):
    monkeypatch.setattr(
        ort_eps, "ort_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert select_provider("auto").name == "cuda"
    # TensorRT available too: auto still picks CUDA (TensorRT engine builds are opt-in)
    monkeypatch.setattr(
        ort_eps,
        "ort_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert select_provider("auto").name == "cuda"
    assert select_provider("tensorrt").name == "tensorrt"


@pytest.mark.parametrize("name,hint", [("cuda", ".[gpu]"), ("tensorrt", ".[tensorrt]")])
def test_missing_gpu_provider_says_what_to_install(monkeypatch, name, hint):
    monkeypatch.setattr(ort_eps, "ort_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable, match=r"pip install") as err:
        select_provider(name)
    assert hint in str(err.value)


def test_missing_openvino_says_what_to_install(monkeypatch):
    monkeypatch.setattr(OpenVINOProvider, "available", classmethod(lambda cls: False))
    with pytest.raises(ProviderUnavailable, match=r"\.\[openvino\]"):
        select_provider("openvino")


def test_openvino_precision_from_name_or_argument_only(monkeypatch):
    """The precision comes from "openvino:<precision>" or the keyword; never the environment."""
    monkeypatch.setattr(OpenVINOProvider, "available", classmethod(lambda cls: True))
    monkeypatch.setenv("INPAINT_OPENVINO_PRECISION", "bf16")
    assert select_provider("openvino").precision == "f32"
    assert select_provider("openvino", openvino_precision="f16").precision == "f16"
    assert select_provider("openvino:bf16", openvino_precision="f16").precision == "bf16"


def test_unknown_provider_and_bad_options():
    with pytest.raises(ValueError, match="choose one of"):
        select_provider("rocm")
    with pytest.raises(ValueError, match="threads"):
        CPUProvider(threads=0)
    with pytest.raises(ValueError, match="precision"):
        OpenVINOProvider(precision="int4")


# ---------------------------------------------------------------- CPU


def test_cpu_session_matches_plain_ort(unet_path, ort_reference):
    path, m = unet_path
    feeds, ref = ort_reference
    provider = CPUProvider(threads=1)
    sess = provider.load(path, m.components["unet"])
    assert sess.input_names == ["sample", "timestep", "encoder_hidden_states"]
    assert sess.output_names == ["out_sample"]
    assert sess.session.get_session_options().intra_op_num_threads == 1
    handle = sess.to_device(feeds["encoder_hidden_states"])
    out = sess.run({**feeds, "encoder_hidden_states": handle})
    np.testing.assert_allclose(out["out_sample"], ref, rtol=1e-5, atol=1e-5)
    assert provider.describe() == {
        "name": "cpu",
        "threads": 1,
        "components": {"unet": {"runtime": "onnxruntime", "precision": "fp32"}},
    }


# ---------------------------------------------------------------- CUDA / TensorRT (logic only)


def test_io_binding_session_on_cpu(unet_path, ort_reference):
    """The CUDA session's IO-binding code (device handles reused across calls, host outputs),
    run with device "cpu" since there is no GPU here."""
    path, m = unet_path
    feeds, ref = ort_reference
    plain = CPUProvider(threads=1).load(path, m.components["unet"])
    sess = prov.OrtDeviceSession(plain.session, device_id=0, device="cpu")
    handle = sess.to_device(feeds["encoder_hidden_states"])
    assert isinstance(handle, ort.OrtValue)
    for _ in range(2):  # the bound handle is reused, as the pipeline does between steps
        out = sess.run({**feeds, "encoder_hidden_states": handle})
        np.testing.assert_allclose(out["out_sample"], ref, rtol=1e-5, atol=1e-5)


def _spec_with_profiles() -> ComponentSpec:
    return ComponentSpec(
        file="unet/model.onnx",
        inputs=[TensorSpec(name="sample", dtype="float32", shape=["batch", 9, "h", "w"])],
        outputs=[TensorSpec(name="out_sample", dtype="float32", shape=["batch", 4, "h", "w"])],
        precision="fp16",
        profiles={
            "sample": {"min": [1, 9, 8, 8], "opt": [2, 9, 64, 64], "max": [8, 9, 96, 96]},
            "timestep": {"min": [1], "opt": [2], "max": [8]},
        },
    )


def test_cuda_provider_list():
    p = CUDAProvider(device_id=1)
    providers = p.provider_list()
    assert providers[0][0] == "CUDAExecutionProvider" and providers[0][1]["device_id"] == 1
    assert providers[-1] == "CPUExecutionProvider"
    assert p.describe()["io_binding"] is True


def test_tensorrt_options(tmp_path):
    spec = _spec_with_profiles()
    assert trt_shape_string(spec.profiles, "max") == "sample:8x9x96x96,timestep:8"
    p = TensorRTProvider()
    model_file = tmp_path / "unet" / "model.onnx"
    folder = _model_folder(model_file, spec)
    assert folder == tmp_path
    names = [x[0] if isinstance(x, tuple) else x for x in p.provider_list(folder, spec)]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = p.provider_list(folder, spec)[0][1]
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == str(tmp_path / "trt_cache")
    assert (tmp_path / "trt_cache").is_dir()
    assert opts["trt_profile_min_shapes"] == "sample:1x9x8x8,timestep:1"
    assert opts["trt_profile_opt_shapes"] == "sample:2x9x64x64,timestep:2"
    # no profiles in the manifest: TensorRT picks shapes itself
    assert "trt_profile_min_shapes" not in p.trt_options(tmp_path, None)


# ---------------------------------------------------------------- OpenVINO


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino")


@pytest.mark.parametrize("precision", ["f32", "bf16", "f16"])
def test_openvino_matches_ort(ov, unet_path, ort_reference, precision):
    """On CPUs without bf16/f16 units (e.g. AVX2-only) OpenVINO runs these hints in f32;
    describe() reports the precision it actually used."""
    path, m = unet_path
    feeds, ref = ort_reference
    p = select_provider(f"openvino:{precision}", threads=1)
    p.cache = False  # the fixture folder is shared and read-only
    sess = p.load(path, m.components["unet"])
    out = sess.run(feeds)["out_sample"]
    d = p.describe()
    assert d["precision_hint"] == precision and d["effective_precision"]
    if precision != "f32":
        assert p.precise_nodes >= 4  # Multiply, Sin, Cos, Concat at least
    assert sess.effective_precision == d["effective_precision"] in ("f32", "bf16", "f16")
    # /v1/models' per-component view names the precision in the project's words
    shown = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[d["effective_precision"]]
    assert d["components"] == {"unet": {"runtime": "openvino", "precision": shown}}
    if d["effective_precision"] == "f32":
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    else:  # real reduced precision (AVX512_BF16 / AMX / GPU): looser
        assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
    # bf16 on an AMX CPU: the self-attentions run on the AMX kernel (tests/models/
    # test_fused_attention.py); every other precision and CPU keeps OpenVINO's own
    amx = precision == "bf16" and fused_attention.load() is not None
    assert (d["fused_attention"].get("unet", 0) >= 1) == amx


def _splits(model) -> int:
    return sum(op.get_type_name() == "Split" for op in model.get_ordered_ops())


def test_fused_projections_are_split_and_the_output_is_unchanged(ov, unet_path, ort_reference):
    """GEGLU's Split of the doubled projection becomes two MatMuls (one per transformer block
    of the tiny UNet), and the f32 graph computes what it computed before, and what ORT does."""
    from server.models.providers.openvino_graph import split_fused_projections

    path, _ = unet_path
    feeds, ref = ort_reference
    core = ov.Core()
    plain, rewritten = core.read_model(str(path)), core.read_model(str(path))
    before = _splits(plain)
    assert before >= 1
    assert split_fused_projections(rewritten) == before and _splits(rewritten) == 0
    cfg = {"INFERENCE_PRECISION_HINT": "f32"}
    outs = [core.compile_model(m, "CPU", cfg)(feeds)[0] for m in (plain, rewritten)]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[1], ref, rtol=1e-4, atol=1e-4)
    # the provider serves the rewritten graph
    p = OpenVINOProvider(precision="f32", threads=1, cache=False)
    served, _ = p._read(path)
    assert _splits(served) == 0


@pytest.mark.parametrize("transpose_b", [False, True])
def test_split_rewrite_keeps_what_it_does_not_own(ov, transpose_b):
    """Each part of a transposed or plain weight and a [1, 1, N] bias gets its own columns; a
    projection whose output has another consumer, or a Split on another axis, is left alone."""
    import openvino.opset13 as ops

    from server.models.providers.openvino_graph import split_fused_projections

    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4) if transpose_b else (4, 6)).astype(np.float32)
    b = rng.standard_normal((1, 1, 6)).astype(np.float32)
    x = ops.parameter([2, 3, 4], ov.Type.f32)
    proj = ops.add(ops.matmul(x, ops.constant(w), False, transpose_b), ops.constant(b))
    value, gate = ops.split(proj, ops.constant(np.int64(-1)), 2).outputs()
    model = ov.Model([ops.multiply(value, ops.tanh(gate))], [x])
    data = rng.standard_normal((2, 3, 4)).astype(np.float32)
    want = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(data)[0]
    assert split_fused_projections(model) == 1 and _splits(model) == 0
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(data)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    shared = ops.add(ops.matmul(x, ops.constant(w), False, transpose_b), ops.constant(b))
    halves = ops.split(shared, ops.constant(np.int64(-1)), 2).outputs()
    middle = ops.split(ops.relu(x), ops.constant(np.int64(1)), 3).outputs()
    kept = ov.Model([ops.multiply(*halves).output(0), shared.output(0), *middle], [x])
    assert split_fused_projections(kept) == 0 and _splits(kept) == 2


def _kinds(model, names: set[str]) -> set[str]:
    """The op types of ``model``'s nodes named in ``names``."""
    return {op.get_type_name() for op in model.get_ordered_ops() if op.get_friendly_name() in names}


def test_openvino_time_embedding_marks(ov, unet_path, tmp_path):
    """The marks make OpenVINO keep the sinusoidal time embedding in fp32: checked with
    OpenVINO's fp16 weight compression (save_model(compress_to_fp16=True)), which rounds the
    frequency table to fp16 unless the marks are honoured. Without marks the embedding of
    t=999 is off by ~0.1; with them it matches float64 to ~1e-5."""
    path, _ = unet_path
    core = ov.Core()
    model = core.read_model(str(path))
    names = prov.time_embedding_nodes(model)
    kinds = _kinds(model, names)
    assert {"Multiply", "Sin", "Cos"} <= kinds
    assert not kinds & {"MatMul", "Convolution", "ShapeOf"}
    concat = next(
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Concat" and op.get_friendly_name() in names
    )
    half = concat.get_output_partial_shape(0)[1].get_length() // 2
    ts = np.array([999.0, 501.0, 1.0], np.float64)
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    ref = np.concatenate([np.sin(ts[:, None] * freqs), np.cos(ts[:, None] * freqs)], axis=1)

    def embedding_error(src) -> float:
        m = core.read_model(str(src))
        cat = next(
            op for op in m.get_ordered_ops() if op.get_friendly_name() == concat.get_friendly_name()
        )
        m.add_outputs([cat.output(0)])
        dst = tmp_path / f"c_{src.stem}.xml"
        ov.save_model(m, str(dst), compress_to_fp16=True)
        c = core.compile_model(core.read_model(str(dst)), "CPU", {"INFERENCE_NUM_THREADS": "1"})
        out = c.create_infer_request().infer(
            unet_feeds(hidden=m.input(2).get_partial_shape()[2].get_length())
        )
        return float(np.abs(out[c.outputs[1]] - ref).max())

    marked_xml, n = prov.write_ir_time_embedding_fp32(core, path, tmp_path)
    assert n >= len(names)  # + the shape constants of the Reshapes that replace Unsqueezes
    assert embedding_error(path) > 1e-2  # the trap, reproduced
    assert embedding_error(marked_xml) < 1e-4  # the fix


def test_time_embedding_pin_has_no_node_the_plugin_replaces(ov, unet_path, tmp_path):
    """OpenVINO rewrites Unsqueeze/Squeeze as Reshape when compiling and drops the ``precise``
    mark on the way; the pinned IR must hold Reshapes of our own there instead."""
    path, _ = unet_path
    core = ov.Core()
    before = core.read_model(str(path))
    # the exporter's t[:, None] is an Unsqueeze: what tripped the plugin
    assert "Unsqueeze" in _kinds(before, prov.time_embedding_nodes(before))
    xml, _ = prov.write_ir_time_embedding_fp32(core, path, tmp_path)
    after = core.read_model(str(xml))
    pinned = [op for op in after.get_ordered_ops() if _is_precise(op)]
    kinds = {op.get_type_name() for op in pinned}
    assert {"Reshape", "Multiply", "Sin", "Cos"} <= kinds
    assert not kinds & {"Unsqueeze", "Squeeze"}


def test_time_embedding_stays_fp32_under_a_real_bf16_hint(ov, unet_path):
    """On a CPU with bf16 units the timestep must reach sin/cos unrounded: bf16 holds 8
    significant bits, so 999 and 998 both round to 1000, which the first pin let happen at
    the graph's input (identical outputs for the three timesteps)."""
    path, m = unet_path
    p = OpenVINOProvider("bf16", threads=1, cache=False)
    sess = p.load(path, m.components["unet"])
    if sess.effective_precision != "bf16":  # the hint runs in f32
        pytest.skip(NO_NATIVE_BF16)
    feeds = unet_feeds(batch=1, hidden=m.text_hidden_size)
    outs = {}
    for t in (999.0, 1000.0):
        outs[t] = sess.run({**feeds, "timestep": np.array([t], np.float32)})["out_sample"]
    assert np.abs(outs[999.0] - outs[1000.0]).max() > 1e-3 * np.abs(outs[1000.0]).max()
    runtime = sess.compiled.get_runtime_model()
    param = next(q for q in runtime.get_parameters() if q.get_friendly_name() == "timestep")
    first = [t.get_node() for t in param.output(0).get_target_inputs()]
    precisions = {
        str(n.get_rt_info()["runtimePrecision"].astype(str))
        for n in first
        if "runtimePrecision" in n.get_rt_info()
        and str(n.get_rt_info()["layerType"].astype(str)) != "ShapeOf"
    }
    assert precisions == {"f32"}, precisions


def test_mark_precise_in_ir_text():
    xml = (
        '<layers>\n\t\t<layer id="1" name="node_sin" type="Sin" version="opset1">\n'
        "\t\t\t<input>\n\t\t\t</input>\n\t\t</layer>\n"
        '\t\t<layer id="2" name="other" type="Sin" version="opset1">\n'
        "\t\t\t<input>\n\t\t\t</input>\n\t\t</layer>\n</layers>"
    )
    out = prov.mark_precise_in_ir(xml, {"node_sin"})
    assert out.count('<attribute name="precise" version="0" />') == 1
    assert out.index("precise") < out.index('name="other"')


def test_openvino_in_the_pipeline(ov, tiny_model_fp32, tmp_path):
    """The whole SD pipeline on OpenVINO (bf16 hint, time embedding pinned) vs ORT's CPU EP."""
    import shutil

    from server.models.base import Row
    from server.models.sd_inpaint import SDInpaintModel

    folder = tmp_path / "tiny"  # OpenVINO writes its compiled-graph cache into the folder
    shutil.copytree(tiny_model_fp32, folder)

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 16:56] = 1

    def run(provider: str):
        model = SDInpaintModel.from_folder(folder, name="t", provider=provider, threads=1)
        row = Row(image=img, mask=mask, prompt="a cat", seed=1, steps=3, scheduler="euler")
        model.prepare([row])
        while not model.is_done(row):
            model.step([row])
        return model.finish_float([row])[0], model.provider.describe()

    (a, _), (b, d) = run("cpu"), run("openvino:bf16")
    tol = 2e-3 if d["effective_precision"] == "f32" else 0.1  # real bf16 units: looser
    assert np.abs(a - b).max() <= tol
