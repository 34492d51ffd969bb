"""What ``--provider auto`` tries per component: CPU flag parsing, the pure plan over sample
machines (AVX2-only, AVX512-BF16, AMX-BF16, AMX-FP16), the tolerances, the sample input and the
error measure. No runtime is loaded here (tests/models/test_auto_provider.py does that)."""

from __future__ import annotations

import numpy as np
import pytest

from server.models.cpu_features import (
    native_unit,
    parse_cpu_flags,
    read_cpu_flags,
    reported_flags,
)
from server.models.manifest import ComponentSpec, TensorSpec
from server.models.providers.accuracy import max_relative_error, sample_feeds
from server.models.providers.plan import (
    DEFAULT_TOLERANCE,
    FP32_RUNTIME,
    TOLERANCES,
    component_kind,
    cpu_plan,
    tolerance,
)

# flag sets as Linux prints them (abridged)
AVX2 = "fpu sse sse2 fma avx avx2 f16c bmi2"
ZEN4 = AVX2 + " avx512f avx512bw avx512_vnni avx512_bf16"  # AVX512-BF16, no AMX
SAPPHIRE_RAPIDS = ZEN4 + " amx_bf16 amx_tile amx_int8 avx512_fp16"
GRANITE_RAPIDS = SAPPHIRE_RAPIDS + " amx_fp16"
FP16_ONLY = AVX2 + " avx512f avx512_fp16"  # hypothetical: vector fp16 without bf16 units

BOTH = {"onnxruntime", "openvino"}
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


def flags(line: str) -> frozenset[str]:
    return parse_cpu_flags(f"processor\t: 0\nflags\t\t: {line}\n\nprocessor\t: 1\nflags : {line}\n")


def labels(plan) -> list[str]:
    return [c.label for c in plan]


def test_parse_cpu_flags_x86_and_arm():
    assert flags(ZEN4) >= {"avx2", "avx512_bf16", "avx512f"}
    assert "amx_bf16" not in flags(ZEN4)
    assert parse_cpu_flags("Features\t: fp asimd bf16 sve\n") == {"fp", "asimd", "bf16", "sve"}
    assert parse_cpu_flags("model name : x\n") == frozenset()


def test_read_cpu_flags_unreadable_is_empty(tmp_path):
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "cpuinfo").write_text(f"flags : {SAPPHIRE_RAPIDS}\n")
    assert "amx_bf16" in read_cpu_flags(tmp_path / "cpuinfo")


def test_native_unit_prefers_amx():
    assert native_unit(flags(AVX2), "bf16") is None and native_unit(flags(AVX2), "f16") is None
    assert native_unit(flags(ZEN4), "bf16") == "avx512_bf16"
    assert native_unit(flags(SAPPHIRE_RAPIDS), "bf16") == "amx_bf16"
    assert native_unit(flags(SAPPHIRE_RAPIDS), "f16") == "avx512_fp16"
    assert native_unit(flags(GRANITE_RAPIDS), "f16") == "amx_fp16"
    assert reported_flags(flags(GRANITE_RAPIDS))[:2] == ["amx_fp16", "amx_bf16"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_avx2_only_runs_fp32_on_the_faster_runtime(component):
    plan = cpu_plan(flags(AVX2), BOTH, component)
    assert labels(plan) == [f"{FP32_RUNTIME[component]} fp32"]
    assert "no bf16/fp16 units" in plan[0].why and "measured" in plan[0].why


@pytest.mark.parametrize("component", COMPONENTS)
def test_avx512_bf16_tries_bf16_then_fp32(component):
    plan = cpu_plan(flags(ZEN4), BOTH, component)
    assert labels(plan) == ["openvino bf16", f"{FP32_RUNTIME[component]} fp32"]
    assert plan[0].why == "avx512_bf16 native"


def test_amx_bf16_prefers_amx_bf16_over_vector_fp16():
    plan = cpu_plan(flags(SAPPHIRE_RAPIDS), BOTH, "unet")
    assert labels(plan) == ["openvino bf16", "openvino f16", "openvino fp32"]
    assert plan[0].why == "amx_bf16 native" and plan[1].why == "avx512_fp16 native"


def test_amx_fp16_tries_f16_then_bf16_then_fp32():
    plan = cpu_plan(flags(GRANITE_RAPIDS), BOTH, "vae_decoder")
    assert labels(plan) == ["openvino f16", "openvino bf16", "openvino fp32"]
    assert plan[0].why == "amx_fp16 native"


def test_fp16_units_without_bf16():
    assert labels(cpu_plan(flags(FP16_ONLY), BOTH, "unet")) == ["openvino f16", "openvino fp32"]


def test_without_openvino_fp32_on_onnxruntime_and_says_what_to_install():
    plan = cpu_plan(flags(SAPPHIRE_RAPIDS), {"onnxruntime"}, "unet")
    assert labels(plan) == ["onnxruntime fp32"]
    assert "amx_bf16 is native here" in plan[0].why and ".[openvino]" in plan[0].why
    assert "only runtime" in cpu_plan(flags(AVX2), {"onnxruntime"}, "unet")[0].why


def test_openvino_only_and_no_runtime():
    assert labels(cpu_plan(flags(AVX2), {"openvino"}, "text_encoder")) == ["openvino fp32"]
    with pytest.raises(ValueError, match="pip install onnxruntime"):
        cpu_plan(flags(AVX2), set(), "unet")


def test_extra_components_follow_their_kind():
    assert component_kind("vae_decoder_tiny") == "vae_decoder"
    assert component_kind("taesd_decoder") == "vae_decoder"
    assert component_kind("taesd_encoder") == "vae_encoder"
    assert component_kind("text_encoder_2") == "text_encoder"
    assert component_kind("controlnet") is None
    assert tolerance("taesd_decoder") == TOLERANCES["vae_decoder"]
    assert tolerance("controlnet") == DEFAULT_TOLERANCE
    assert tolerance("unet") == 0.015  # the bound for the UNet step
    # unknown components run fp32 on ONNX Runtime, reduced precision on OpenVINO like the rest
    assert labels(cpu_plan(flags(ZEN4), BOTH, "controlnet")) == [
        "openvino bf16",
        "onnxruntime fp32",
    ]


def _spec(inputs) -> ComponentSpec:
    return ComponentSpec(
        file="x/model.onnx",
        inputs=[TensorSpec(name=n, dtype=d, shape=s) for n, d, s in inputs],
        outputs=[TensorSpec(name="y", dtype="float32", shape=["batch"])],
        precision="fp32",
    )


def test_sample_feeds_follow_the_declared_inputs():
    unet = _spec(
        [
            ("sample", "float32", ["batch", 9, "latent_height", "latent_width"]),
            ("timestep", "float32", ["batch"]),
            ("encoder_hidden_states", "float32", ["batch", 77, 32]),
        ]
    )
    feeds = sample_feeds(unet)
    assert feeds["sample"].shape == (2, 9, 16, 16) and feeds["sample"].dtype == np.float32
    assert feeds["timestep"].tolist() == [999.0, 21.0]
    assert feeds["encoder_hidden_states"].shape == (2, 77, 32)
    again = sample_feeds(unet)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # fixed: same every load
    image = sample_feeds(_spec([("sample", "float32", ["batch", 3, "height", "width"])]))
    img = image["sample"]
    assert img.shape == (2, 3, 128, 128) and -1 <= img.min() < 0 < img.max() <= 1
    ids = sample_feeds(_spec([("input_ids", "int64", ["batch", 77])]))["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (2, 77) and 0 <= ids.min() and ids.max() < 256


def test_max_relative_error():
    ref = {"a": np.array([0.0, 2.0, -4.0]), "b": np.array([1.0, 1.0])}
    assert max_relative_error(ref, ref) == 0.0
    out = {"a": np.array([0.04, 2.0, -4.0]), "b": np.array([1.0, 1.03])}
    assert max_relative_error(out, ref) == pytest.approx(0.03)  # b: 0.03 / 1 > a: 0.04 / 4
    bad = {"a": np.array([np.nan, 2.0, -4.0]), "b": ref["b"]}
    assert max_relative_error(bad, ref) == float("inf")
