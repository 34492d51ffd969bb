"""Bringing one-shot networks in: ``python -m export --torch/--onnx FILE --kind one-shot``.

No downloads: the networks are built here with random weights and the real architectures'
I/O and operators (``export.lama_like``: Fourier convolutions with rfftn/irfftn;
``export.migan_like``: MI-GAN's generator inside its uint8 pipeline with the inverted mask),
saved the way they are distributed (TorchScript like IOPaint's big-lama.pt, a state dict like
migan_512_places2.pt, ONNX files like IOPaint's 512x512 big-lama.onnx), then brought in.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import lama_like, migan_like
from server.models.manifest import OneShotManifest, read_manifest
from tests import artifacts

ort = pytest.importorskip("onnxruntime")


def cli(argv, capsys):
    from export.__main__ import main

    t0 = time.perf_counter()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err, time.perf_counter() - t0


def ops(folder: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(folder / "inpainter" / "model.onnx")).graph.node}


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def lama_inputs(batch=2, h=96, w=72, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, h, w, generator=g)
    mask = torch.zeros(batch, 1, h, w)
    mask[:, :, h // 4 : h // 2, w // 3 : 2 * w // 3] = 1
    return image, mask


@pytest.fixture(scope="module")
def sources():
    """The networks as users download them (random weights: TorchScript LaMa, MI-GAN state
    dict; from the test-model cache), and the PyTorch modules to compare with, built here."""
    torch.set_num_threads(2)
    folder = artifacts.oneshot_sources(lama_seed=0, migan_seed=0)
    return {
        "lama_pt": folder / "big-lama-tiny.pt",
        "migan": migan_like.build("tiny", seed=0),
        "migan_pt": folder / "migan-tiny.pt",
    }


@pytest.fixture(scope="module")
def exported(sources):
    """Models exported from PyTorch (the test-model cache; read-only): LaMa with native DFT ops,
    LaMa with the default matmul Fourier transforms, MI-GAN's pipeline."""
    return {
        key: artifacts.export("--torch", src, "--kind", "one-shot", *extra, folder=key)
        for key, src, extra in [
            ("lama_dft", sources["lama_pt"], ["--signature", "lama", "--fft", "native"]),
            ("lama", sources["lama_pt"], ["--signature", "lama"]),
            ("migan", sources["migan_pt"], ["--signature", "migan"]),
        ]
    }


# ---------------------------------------------------------------------------- from PyTorch


def test_lama_torchscript_exports_with_fft_ops_verified(exported, sources, capsys):
    folder = exported["lama_dft"]
    m = read_manifest(folder)
    assert isinstance(m, OneShotManifest) and (m.signature, m.precision, m.opset) == (
        "lama",
        "fp32",
        18,
    )
    assert "DFT" in ops(folder)  # rfftn / irfftn went through the exporter as ONNX DFT
    assert (m.io.fixed_size, m.io.dynamic_batch, m.io.pad_multiple) == (None, True, 8)
    (v,) = m.verification
    assert v.passed and v.rtol == 1e-4 and v.max_abs_diff <= 1e-4
    assert v.provider.endswith("PyTorch") and v.inputs["image"][0] == 2
    assert "verified against the TorchScript archive itself" in m.notes
    # ORT on fresh inputs, another size and batch, equals the TorchScript network
    image, mask = lama_inputs(batch=3, h=120, w=64, seed=7)
    got = session(folder / "inpainter/model.onnx").run(
        None, {"image": image.numpy(), "mask": mask.numpy()}
    )[0]
    with torch.no_grad():
        ref = torch.jit.load(str(sources["lama_pt"]))(image, mask).numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert not np.allclose(got, image.numpy(), atol=1e-3)  # the hole was filled with something


def test_matmul_fourier_units_equal_native(exported):
    assert "DFT" not in ops(exported["lama"]) and "MatMul" in ops(exported["lama"])
    image, mask = lama_inputs(batch=2, h=64, w=200, seed=3)
    feeds = {"image": image.numpy(), "mask": mask.numpy()}
    a = session(exported["lama"] / "inpainter/model.onnx").run(None, feeds)[0]
    b = session(exported["lama_dft"] / "inpainter/model.onnx").run(None, feeds)[0]
    assert np.abs(a - b).max() < 1e-5


def test_migan_state_dict_exports_uint8_pipeline(exported, sources):
    folder = exported["migan"]
    m = read_manifest(folder)
    io = m.io
    assert (io.input_dtype, io.output_dtype, io.mask_hole, io.mask_keep) == (
        "uint8",
        "uint8",
        0,
        255,
    )
    assert m.native_resolution == 64 and io.fixed_size is None and io.dynamic_batch
    assert m.verification[0].passed and m.verification[0].tolerance == 1.0  # one uint8 level
    g = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (2, 3, 80, 48), generator=g, dtype=torch.uint8)
    mask = torch.full((2, 1, 80, 48), 255, dtype=torch.uint8)
    mask[:, :, 20:50, 10:30] = 0  # 0 = hole: MI-GAN's inverted convention
    got = session(folder / "inpainter/model.onnx").run(
        None, {"image": image.numpy(), "mask": mask.numpy()}
    )[0]
    with torch.no_grad():
        ref = sources["migan"](image, mask).numpy()
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    keep = (mask.numpy() == 255).repeat(3, axis=1)
    assert np.array_equal(got[keep], image.numpy()[keep])


def test_rerun_is_up_to_date_and_other_args_need_force(exported, sources, capsys, tmp_path):
    folder = tmp_path / "migan"
    shutil.copytree(exported["migan"], folder)  # corrupted below
    args = ["--torch", sources["migan_pt"], "--kind", "one-shot", "--signature", "migan"]
    rc, out, _, seconds = cli([*args, "--out", folder], capsys)
    assert rc == 0 and "up to date" in out and seconds < 10
    rc, _, err, _ = cli([*args, "--out", folder, "--precision", "fp16"], capsys)
    assert rc == 1 and "precision" in err and "--force" in err
    (folder / "inpainter" / "model.onnx").write_bytes(b"corrupted")  # hashes are checked
    rc, out, _, _ = cli([*args, "--out", folder], capsys)
    assert rc == 0 and "up to date" not in out
    assert read_manifest(folder).verification[0].passed


def test_fp16_keeps_float_io_and_records_tolerance(exported, tmp_path, capsys):
    """fp16 of an imported fp32 LaMa graph: verified against the fp32 graph (rtol 2e-2)."""
    src = exported["lama"] / "inpainter" / "model.onnx"
    out = tmp_path / "lama16"
    argv = ["--onnx", src, "--kind", "one-shot", "--signature", "lama", "--precision", "fp16"]
    rc, _, err, _ = cli([*argv, "--out", out], capsys)
    assert rc == 0, err
    m = read_manifest(out)
    (v,) = m.verification
    assert m.precision == "fp16" and v.rtol == 2e-2 and v.passed and v.max_abs_diff > 0
    g = onnx.load(str(out / "inpainter/model.onnx"))
    assert {i.type.tensor_type.elem_type for i in g.graph.input} == {TensorProto.FLOAT}
    inits = [i.data_type for i in g.graph.initializer]
    assert inits.count(TensorProto.FLOAT16) > inits.count(TensorProto.FLOAT)


def test_migan_fp16_from_torch(sources, tmp_path, capsys):
    out = tmp_path / "migan16"
    argv = ["--torch", sources["migan_pt"], "--kind", "one-shot", "--signature", "migan"]
    rc, _, err, _ = cli([*argv, "--precision", "fp16", "--out", out], capsys)
    assert rc == 0, err
    (v,) = read_manifest(out).verification
    assert v.passed and v.rtol == 2e-2 and v.provider.endswith("PyTorch")


def test_real_checkpoint_layouts_load():
    """State dicts as LaMa's Lightning checkpoint and a wrapped TorchScript name them, and the
    full-size configurations (big-lama ~51 M parameters; MI-GAN 512) are read from the weights."""
    lama = lama_like.build("tiny", seed=1)
    gen = {f"generator.{k}": v for k, v in lama.generator.state_dict().items()}
    disc = {"discriminator.model0.0.ffc.convl2l.weight": torch.zeros(1)}
    loaded = lama_like.from_state_dict(gen | disc)
    image, mask = lama_inputs(1, 32, 40)
    with torch.no_grad():
        assert torch.equal(loaded(image, mask), lama(image, mask))
    full = lama_like.FFCResNetGenerator(lama_like.SIZES["full"]).state_dict()
    assert 50e6 < sum(v.numel() for k, v in full.items() if "running" not in k) < 52e6
    wrapped = {f"model.generator.{k}": v for k, v in full.items()}
    assert (
        lama_like.config_from_state(lama_like.generator_state(wrapped)) == lama_like.SIZES["full"]
    )
    migan = migan_like.build("full")
    again = migan_like.from_state_dict(migan.generator.state_dict())
    assert again.generator.resolution == 512
    assert again.generator.state_dict().keys() == migan.generator.state_dict().keys()
    with pytest.raises(ValueError, match="no LaMa generator"):
        lama_like.from_state_dict(migan.generator.state_dict())


def test_torchscript_reference_must_take_image_and_mask():
    """A TorchScript file is the verification reference only when its forward is the
    pipeline's (image, mask) -> image; a traced bare generator (4-channel input) is not."""
    from export.oneshot import SIGNATURES
    from export.oneshot_torch import _same_interface, example_inputs

    tiny = migan_like.build("tiny", seed=2)
    io = SIGNATURES["migan"]
    with torch.no_grad():
        bare = torch.jit.trace(tiny.generator, torch.zeros(1, 4, 64, 64))
        piped = torch.jit.trace(tiny, example_inputs("migan"))
    assert not _same_interface(bare, tiny, io, "migan")
    assert _same_interface(piped, tiny, io, "migan")
    state = {f"model.{k}": v for k, v in bare.state_dict().items()}  # any prefix is found
    assert migan_like.from_state_dict(state).generator.resolution == 64


# ---------------------------------------------------------------------------- from ONNX


def fixed_copy(src: Path, dst: Path, side: int = 512) -> Path:
    """The graph with its inputs/outputs pinned to 1 x C x side x side, as IOPaint's big-lama
    ONNX export is."""
    model = onnx.load(str(src))
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, [1, None, side, side], strict=True):
            if size is not None:
                dim.Clear()
                dim.dim_value = size
    onnx.save_model(model, str(dst))
    return dst


def test_onnx_import_fixed_size_lama(exported, tmp_path, capsys):
    src = fixed_copy(exported["lama"] / "inpainter/model.onnx", tmp_path / "big-lama.onnx")
    rc, out, err, _ = cli(
        ["--onnx", src, "--kind", "one-shot", "--signature", "lama", "--out", tmp_path / "m"],
        capsys,
    )
    assert rc == 0, err
    m = read_manifest(tmp_path / "m")
    assert m.io.fixed_size == (512, 512) and not m.io.dynamic_batch and m.native_resolution == 512
    assert m.components["inpainter"].inputs[0].shape == [1, 3, 512, 512]
    assert (tmp_path / "m/inpainter/model.onnx").read_bytes() == src.read_bytes()  # a copy
    assert m.verification == []  # nothing to compare with; the forward pass was checked
    assert m.export_args["from"] == "onnx" and len(m.export_args["source_sha256"]) == 64


def test_onnx_import_migan_and_signature_mismatches(exported, tmp_path, capsys):
    src = exported["migan"] / "inpainter/model.onnx"
    base = ["--onnx", src, "--kind", "one-shot"]
    rc, _, err, _ = cli([*base, "--signature", "migan", "--out", tmp_path / "ok"], capsys)
    assert rc == 0, err
    assert read_manifest(tmp_path / "ok").io.dynamic_batch
    rc, _, err, _ = cli([*base, "--signature", "lama", "--out", tmp_path / "bad"], capsys)
    assert rc == 1 and "does not match the signature" in err and "'result'" in err
    lama = exported["lama"] / "inpainter/model.onnx"
    rc, _, err, _ = cli(
        ["--onnx", lama, "--kind", "one-shot", "--signature", "migan", "--out", tmp_path / "b2"],
        capsys,
    )
    assert rc == 1 and "signature" in err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "b2").exists()


def _graph(nodes, out_name="output", extra_inits=()) -> onnx.ModelProto:
    f = TensorProto.FLOAT
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [
                helper.make_tensor_value_info("image", f, ["b", 3, "h", "w"]),
                helper.make_tensor_value_info("mask", f, ["b", 1, "h", "w"]),
            ],
            [helper.make_tensor_value_info(out_name, f, ["b", 3, "h", "w"])],
            initializer=list(extra_inits),
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    return model


def test_batch_axis_that_does_not_batch_runs_one_row_per_call(tmp_path, capsys):
    """A graph that declares a batch axis but uses only row 0 (as MI-GAN's later pipeline,
    which squeezes the batch): detected, recorded, served one row per call."""
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             [("s", [0]), ("e", [1]), ("ax", [0])]]  # fmt: skip
    nodes = [
        helper.make_node("Slice", ["image", "s", "e", "ax"], ["first"]),
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Expand", ["first", "shape"], ["output"]),
    ]
    src = tmp_path / "squeezer.onnx"
    onnx.save_model(_graph(nodes, extra_inits=inits), str(src))
    argv = ["--onnx", src, "--kind", "one-shot", "--signature", "lama", "--out", tmp_path / "m"]
    rc, out, err, _ = cli(argv, capsys)
    assert rc == 0, err
    m = read_manifest(tmp_path / "m")
    assert not m.io.dynamic_batch and any("does not batch" in n for n in m.notes)


def test_output_range_is_checked_and_custom_signature_describes_it(tmp_path, capsys):
    """A LaMa export whose output is 0..255 (as some ONNX conversions scale it) fails the lama
    signature loudly; a custom signature file describes it."""
    inits = [numpy_helper.from_array(np.array(255, np.float32), "k")]
    src = tmp_path / "lama255.onnx"
    onnx.save_model(
        _graph([helper.make_node("Mul", ["image", "k"], ["output"])], extra_inits=inits), str(src)
    )
    argv = ["--onnx", src, "--kind", "one-shot"]
    rc, _, err, _ = cli([*argv, "--signature", "lama", "--out", tmp_path / "a"], capsys)
    assert rc == 1 and "output range" in err and "--signature custom" in err
    sig = tmp_path / "sig.json"
    sig.write_text(
        json.dumps(
            {
                "image": "image",
                "mask": "mask",
                "output": "output",
                "output_range": [0, 255],
                "native_resolution": 256,
                "max_work_side": 384,
            }  # fmt: skip
        )
    )
    rc, _, err, _ = cli(
        [*argv, "--signature", "custom", "--signature-file", sig, "--out", tmp_path / "b"], capsys
    )
    assert rc == 0, err
    m = read_manifest(tmp_path / "b")
    assert m.io.output_range == (0, 255) and (m.native_resolution, m.max_work_side) == (256, 384)
    rc, _, err, _ = cli([*argv, "--signature", "custom", "--out", tmp_path / "c"], capsys)
    assert rc == 1 and "--signature-file" in err


def test_cli_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["--onnx", tmp_path / "x.onnx", "--signature", "lama"], capsys)  # no --kind
    with pytest.raises(SystemExit):
        cli(["--onnx", tmp_path / "x.onnx", "--kind", "one-shot"], capsys)  # no --signature
    rc, _, err, _ = cli(
        ["--onnx", tmp_path / "x.onnx", "--kind", "one-shot", "--signature", "lama"], capsys
    )
    assert rc == 1 and "no such file" in err


# ---------------------------------------------------------------------------- providers


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_runs_the_lama_graph(exported, precision):
    """OpenVINO reads our LaMa graph (MatMul Fourier units) and agrees with ONNX Runtime; bf16
    runs in bf16 where the CPU has it (AVX512_BF16 / AMX), else f32."""
    pytest.importorskip("openvino")
    from server.models.providers import OpenVINOProvider

    path = exported["lama"] / "inpainter/model.onnx"
    provider = OpenVINOProvider(precision, threads=2, cache=False)  # a shared, read-only folder
    sess = provider.load(path, read_manifest(exported["lama"]).components["inpainter"])
    image, mask = lama_inputs(1, 64, 96, seed=11)
    feeds = {"image": image.numpy(), "mask": mask.numpy()}
    got = sess.run(feeds)["output"]
    ref = session(path).run(None, feeds)[0]
    tol = 1e-4 if provider.effective_precision in (None, "f32") else 0.1
    assert np.abs(got - ref).max() < tol, provider.describe()


def test_tensorrt_profiles_cover_the_crop_rule(exported, tmp_path, capsys):
    """The CPU-visible part of the GPU providers: TensorRT shape profiles from the manifest
    (batch 1..8, sides 16 .. the largest work side); a fixed-size batch-1 graph has none."""
    from server.models.providers import TensorRTProvider, trt_shape_string

    spec = read_manifest(exported["lama"]).components["inpainter"]
    assert trt_shape_string(spec.profiles, "min") == "image:1x3x16x16,mask:1x1x16x16"
    assert trt_shape_string(spec.profiles, "opt") == "image:1x3x512x512,mask:1x1x512x512"
    assert trt_shape_string(spec.profiles, "max") == "image:8x3x768x768,mask:8x1x768x768"
    opts = TensorRTProvider().trt_options(tmp_path, spec)
    assert opts["trt_profile_max_shapes"].startswith("image:8x3x768x768")
    src = fixed_copy(exported["lama"] / "inpainter/model.onnx", tmp_path / "fixed.onnx")
    argv = ["--onnx", src, "--kind", "one-shot", "--signature", "lama", "--out", tmp_path / "f"]
    assert cli(argv, capsys)[0] == 0
    assert read_manifest(tmp_path / "f").components["inpainter"].profiles == {}
