"""One-shot models in process: the tensor adaptation (``oneshot_io``), ``OneShotModel`` over real
ONNX Runtime sessions, the registry's kind dispatch, short failure reasons and aliases.

The graphs here are written by hand with ``onnx.helper`` so that every output pixel is known:
each computes a simple function of its inputs in the graph's own convention (layout, dtype,
range, mask polarity, concatenation, BGR), so a wrong adaptation on our side shows up as wrong
pixels. The real networks (LaMa / MI-GAN style, exported from PyTorch) are tested in
tests/export/test_oneshot_export.py and tests/e2e/test_oneshot_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.oneshot import SIGNATURES
from server.models.base import Row
from server.models.manifest import (
    ComponentSpec,
    OneShotIO,
    OneShotManifest,
    Source,
    TensorSpec,
    read_manifest,
)
from server.models.oneshot import OneShotModel, work_limits
from server.models.oneshot_io import from_output, pad_reflect, padded_size, to_feeds
from server.models.registry import load_registry

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

U8, F32 = TensorProto.UINT8, TensorProto.FLOAT


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value))
    )


def graph_lama_like(batch="batch", h="height", w="width") -> onnx.ModelProto:
    """NCHW float32 image [0,1] + mask (1 = hole) -> image + 0.5 * mask."""
    nodes = [_const("half", np.float32(0.5)), helper.make_node("Mul", ["mask", "half"], ["m"])]
    nodes.append(helper.make_node("Add", ["image", "m"], ["output"]))
    io = [
        helper.make_tensor_value_info("image", F32, [batch, 3, h, w]),
        helper.make_tensor_value_info("mask", F32, [batch, 1, h, w]),
    ]
    out = [helper.make_tensor_value_info("output", F32, [batch, 3, h, w])]
    return _model(nodes, io, out)


def graph_migan_like() -> onnx.ModelProto:
    """NCHW uint8 image + mask (255 = keep, 0 = hole) -> image with holes set to 7."""
    nodes = [
        _const("zero", np.uint8(0)),
        _const("seven", np.full((1, 3, 1, 1), 7, np.uint8)),
        helper.make_node("Equal", ["mask", "zero"], ["hole"]),
        helper.make_node("Where", ["hole", "seven", "image"], ["result"]),
    ]
    io = [
        helper.make_tensor_value_info("image", U8, ["b", 3, "h", "w"]),
        helper.make_tensor_value_info("mask", U8, ["b", 1, "h", "w"]),
    ]
    return _model(nodes, io, [helper.make_tensor_value_info("result", U8, ["b", 3, "h", "w"])])


def graph_concat_nhwc_bgr(side: int = 64) -> onnx.ModelProto:
    """NHWC float32 (1, side, side, 4) = [mask, B, G, R] in [-1, 1], mask +0.5 keep / -0.5 hole
    -> (B channel only, G = R = 0) - mask + 0.5: holes come out B + 1, kept pixels unchanged."""
    nodes = [
        _const("starts", np.array([1], np.int64)),
        _const("ends", np.array([4], np.int64)),
        _const("axes", np.array([3], np.int64)),
        _const("m_s", np.array([0], np.int64)),
        _const("m_e", np.array([1], np.int64)),
        _const("only_b", np.array([1, 0, 0], np.float32)),
        _const("half", np.float32(0.5)),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["bgr"]),
        helper.make_node("Slice", ["x", "m_s", "m_e", "axes"], ["m"]),
        helper.make_node("Mul", ["bgr", "only_b"], ["b"]),
        helper.make_node("Sub", ["b", "m"], ["bm"]),
        helper.make_node("Add", ["bm", "half"], ["y"]),
    ]
    io = [helper.make_tensor_value_info("x", F32, [1, side, side, 4])]
    return _model(nodes, io, [helper.make_tensor_value_info("y", F32, [1, side, side, 3])])


def _model(nodes, inputs, outputs) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# the conventions ``python -m export --kind one-shot`` brings LaMa and MI-GAN graphs in with
LAMA_IO, MIGAN_IO = SIGNATURES["lama"], SIGNATURES["migan"]
CONCAT_IO = OneShotIO(
    image="x",
    mask=None,
    concat="mask_first",
    output="y",
    layout="NHWC",
    channels="BGR",
    image_range=(-1, 1),
    output_range=(-1, 1),
    mask_hole=-0.5,
    mask_keep=0.5,
    fixed_size=(64, 64),
    dynamic_batch=False,
)


def make_folder(root: Path, name: str, graph, io: OneShotIO, **manifest_kw) -> Path:
    folder = root / name
    (folder / "inpainter").mkdir(parents=True)
    onnx.save_model(graph, str(folder / "inpainter" / "model.onnx"))
    spec = ComponentSpec(
        file="inpainter/model.onnx",
        inputs=[TensorSpec(name=i.name, dtype="float32", shape=[1]) for i in graph.graph.input],
        outputs=[TensorSpec(name=o.name, dtype="float32", shape=[1]) for o in graph.graph.output],
        precision="fp32",
    )
    manifest = OneShotManifest(
        name=name,
        signature="custom",
        io=io,
        precision="fp32",
        components={"inpainter": spec},
        source=Source(model="hand-written test graph"),
        **manifest_kw,
    )
    manifest.write(folder)
    return folder


class Recording:
    """A session wrapper that records the shape of every call's feeds."""

    def __init__(self, session):
        self.session, self.calls = session, []

    def run(self, feeds):
        self.calls.append({k: v.shape for k, v in feeds.items()})
        return self.session.run(feeds)


def load(folder: Path) -> OneShotModel:
    model = OneShotModel.from_folder(folder, name=folder.name, provider="cpu", threads=1)
    model.session = Recording(model.session)
    return model


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box_mask(h: int, w: int, box=(8, 4, 24, 20)) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


def row(image, mask) -> Row:
    return Row(image=image, mask=mask, prompt="ignored", seed=0)


# ---------------------------------------------------------------------------- oneshot_io


def test_padded_size_fixed_and_multiple():
    assert padded_size(40, 56, CONCAT_IO) == (64, 64)
    assert padded_size(40, 57, LAMA_IO.model_copy(update={"pad_multiple": 16})) == (48, 64)
    assert padded_size(40, 56, LAMA_IO) == (40, 56)
    with pytest.raises(ValueError, match="does not fit"):
        padded_size(72, 8, CONCAT_IO)


def test_pad_reflect_mirrors_image_and_hole_alike():
    img = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3)
    out = pad_reflect(img, 7, 20)  # longer than the side: mirrored repeatedly
    assert out.shape == (7, 20)
    assert np.array_equal(out[5, :3], img[3]) and np.array_equal(out[6, :3], img[2])
    assert np.array_equal(out[:5, 3], img[:, 1]) and np.array_equal(out[:5, 4], img[:, 0])
    hole = np.zeros((8, 8), bool)
    hole[:, 6:] = True  # a hole at the right border stays a hole in the mirror
    assert pad_reflect(hole, 8, 12)[:, 8].all()  # col 8 mirrors col 6 (about col 7)


def test_to_feeds_lama_convention():
    img, m = scene(16, 24), box_mask(16, 24)
    feeds = to_feeds([img, img], [m, m * 0], LAMA_IO, (16, 24))
    assert feeds["image"].shape == (2, 3, 16, 24) and feeds["image"].dtype == np.float32
    assert feeds["mask"].shape == (2, 1, 16, 24)
    np.testing.assert_array_equal(feeds["mask"][0, 0], m)
    hole = m > 0.5
    assert (feeds["image"][0].transpose(1, 2, 0)[hole] == 0).all()  # image * (1 - mask)
    np.testing.assert_allclose(feeds["image"][1].transpose(1, 2, 0), img / 255.0, atol=1e-7)


def test_to_feeds_migan_inverted_uint8_mask():
    img, m = scene(16, 16), box_mask(16, 16)
    feeds = to_feeds([img], [m], MIGAN_IO, (16, 16))
    assert feeds["image"].dtype == np.uint8 and feeds["mask"].dtype == np.uint8
    np.testing.assert_array_equal(feeds["image"][0].transpose(1, 2, 0), img)  # not zeroed
    np.testing.assert_array_equal(feeds["mask"][0, 0], np.where(m > 0.5, 0, 255))


def test_to_feeds_concat_nhwc_bgr():
    img, m = scene(64, 64), box_mask(64, 64)
    x = to_feeds([img], [m], CONCAT_IO, (64, 64))["x"]
    assert x.shape == (1, 64, 64, 4)
    np.testing.assert_array_equal(x[0, ..., 0], np.where(m > 0.5, -0.5, 0.5))
    keep = m < 0.5
    np.testing.assert_allclose(
        x[0, ..., 1:][keep], (img[..., ::-1][keep] / 255.0) * 2 - 1, atol=1e-6
    )
    assert (x[0, ..., 1:][~keep] == 0).all()


def test_from_output_decodes_crops_and_flags_non_finite():
    out = np.full((2, 3, 16, 16), 0.5, np.float32)
    out[1, 0, 0, 0] = np.nan
    imgs = from_output(out, LAMA_IO, [(8, 16), (16, 16)])
    assert imgs[0].shape == (8, 16, 3) and (imgs[0] == 128).all()
    assert isinstance(imgs[1], FloatingPointError)
    with pytest.raises(ValueError, match="channels"):
        from_output(np.zeros((1, 4, 8, 8), np.float32), LAMA_IO, [(8, 8)])


# ---------------------------------------------------------------------------- the model


def test_lama_convention_pixels_and_one_call_per_size(tmp_path):
    model = load(make_folder(tmp_path, "lama", graph_lama_like(), LAMA_IO))
    a, b = scene(32, 40, 1), scene(24, 16, 2)
    ma, mb = box_mask(32, 40), box_mask(24, 16, (2, 2, 10, 10))
    out = model.run([row(a, ma), row(b, mb), row(a, ma)])
    keep = ma < 0.5
    np.testing.assert_array_equal(out[0][keep], a[keep])  # keep: image + 0 -> itself
    assert (out[0][~keep] == 128).all()  # hole: 0 + 0.5 -> 127.5 -> 128
    np.testing.assert_array_equal(out[0], out[2])
    assert out[1].shape == (24, 16, 3) and (out[1][mb > 0.5] == 128).all()
    # two sizes -> two calls; the two 32x40 rows share one
    assert sorted(c["image"] for c in model.session.calls) == [(1, 3, 24, 16), (2, 3, 32, 40)]


def test_migan_convention_inverted_mask(tmp_path):
    model = load(make_folder(tmp_path, "migan", graph_migan_like(), MIGAN_IO))
    img, m = scene(24, 24), box_mask(24, 24)
    (out,) = model.run([row(img, m)])
    assert (out[m > 0.5] == 7).all()
    np.testing.assert_array_equal(out[m < 0.5], img[m < 0.5])


def test_fixed_size_pads_and_crops_one_row_per_call(tmp_path):
    model = load(make_folder(tmp_path, "concat", graph_concat_nhwc_bgr(), CONCAT_IO))
    img, m = scene(40, 56), box_mask(40, 56)
    out = model.run([row(img, m), row(img, m)])
    assert [c["x"] for c in model.session.calls] == [(1, 64, 64, 4)] * 2  # batch axis fixed at 1
    assert out[0].shape == (40, 56, 3)
    keep = m < 0.5
    np.testing.assert_array_equal(out[0][..., 2][keep], img[..., 2][keep])  # blue kept (BGR!)
    assert (out[0][..., :2][keep] == 128).all()  # red and green zeroed in [-1, 1] -> 128
    assert (out[0][..., 2][~keep] == 255).all()  # hole: 0 + 1 -> white blue


def test_capabilities_and_describe(tmp_path):
    io512 = CONCAT_IO.model_copy(update={"fixed_size": (512, 512)})
    model = load(make_folder(tmp_path, "concat", graph_concat_nhwc_bgr(512), io512))
    lim = model.capabilities.limits
    assert (lim.native_side, lim.max_work_side) == (512, 512)  # 4096 px photo -> one 512 pass
    card = model.capabilities.card()
    assert card["reads_prompt"] is False and "parameters" not in card
    assert model.capabilities.settings() is None and model.count_tokens("remove it") == 0
    d = model.describe()
    assert d["kind"] == "one-shot" and d["signature"] == "custom" and d["precision"] == "fp32"
    assert d["provider"]["name"] == "cpu" and d["input_size"] == [512, 512]
    manifest = read_manifest(tmp_path / "concat")
    dynamic = manifest.model_copy(update={"io": LAMA_IO, "native_resolution": 256})
    assert (work_limits(dynamic).native_side, work_limits(dynamic).max_work_side) == (256, 384)


def test_bad_rows_raise(tmp_path):
    model = load(make_folder(tmp_path, "lama", graph_lama_like(), LAMA_IO))
    with pytest.raises(ValueError, match="uint8"):
        model.run([row(scene(8, 8).astype(np.float32), box_mask(8, 8))])
    with pytest.raises(ValueError, match="mask"):
        model.run([row(scene(8, 8), box_mask(8, 16))])


def test_runs_on_openvino_when_installed(tmp_path):
    pytest.importorskip("openvino")
    folder = make_folder(tmp_path, "lama", graph_lama_like(), LAMA_IO)
    manifest = read_manifest(folder)
    from server.models.providers import OpenVINOProvider

    model = OneShotModel(folder, manifest, OpenVINOProvider("f32", threads=1), name="lama")
    img, m = scene(16, 24), box_mask(16, 24)
    (out,) = model.run([row(img, m)])
    np.testing.assert_array_equal(out[m < 0.5], img[m < 0.5])
    assert model.describe()["provider"]["name"] == "openvino"


# ---------------------------------------------------------------------------- the registry


def test_registry_loads_by_kind_with_short_reasons_and_aliases(tmp_path, caplog):
    make_folder(tmp_path, "lama", graph_lama_like(), LAMA_IO, aliases=["dall-e-2", "migan"])
    make_folder(tmp_path, "migan", graph_migan_like(), MIGAN_IO, aliases=["dall-e-2"])
    make_folder(tmp_path, "zz", graph_lama_like(), LAMA_IO, aliases=["remove"])

    def broken(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)

    broken("not-json", "{not json")
    good = json.loads((tmp_path / "lama" / "manifest.json").read_text())
    broken("bad-field", json.dumps({**good, "io": {"image": 3}}))
    broken("unknown-kind", json.dumps({**good, "pipeline": "diffusion-xl"}))
    broken("no-graph", json.dumps(good))
    reg = load_registry(tmp_path, provider="cpu", threads=1, default_model="remove")
    assert sorted(reg.names()) == ["lama", "migan", "opencv-telea-inpaint", "zz"]
    reasons = {f.name: f.reason for f in reg.failures}
    assert reasons["not-json"] == "manifest invalid: not JSON"
    assert reasons["bad-field"].startswith("manifest invalid: field io.")
    assert reasons["unknown-kind"] == "manifest invalid: unknown pipeline kind"
    assert reasons["no-graph"] == "component missing"
    for reason in reasons.values():  # no folder names, paths or exception dumps for clients
        assert str(tmp_path) not in reason and "Error" not in reason and len(reason) < 60
    assert str(tmp_path) in caplog.text  # ... those go to the log
    assert reg.default == "zz"  # --default-model may name an alias
    assert reg.get("remove").name == "zz"
    assert "dall-e-2" not in reg.aliases  # claimed twice: ignored
    assert reg.get("lama").name == "lama"
    assert reg.get("migan").name == "migan"  # a model name wins over an alias


def test_registry_reports_an_unavailable_provider(tmp_path):
    make_folder(tmp_path, "lama", graph_lama_like(), LAMA_IO)
    reg = load_registry(tmp_path, provider="tensorrt", threads=1)
    if "lama" in reg.names():
        pytest.skip("this onnxruntime has TensorRT")
    assert [(f.name, f.reason) for f in reg.failures] == [("lama", "provider unavailable")]
