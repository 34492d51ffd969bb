"""``python -m export --lora``: LoRAs fused before export, recorded in the manifest with the fast
preset; the served model (SDInpaintModel, ONNX) equals diffusers with the same fused LoRAs and
the same LCM / TCD sampling; quality=low runs the fast preset.

The reference fuses the UNet parts with diffusers itself (``load_lora_weights`` +
``fuse_lora(lora_scale)`` + ``unload_lora_weights``) and the text-encoder part with the LoRA
formula W += scale * up @ down (rank = alpha): with transformers 5 and peft < 0.22 (the newest
on PyPI here) diffusers cannot load text-encoder adapters at all, so the exporter loads those
with peft directly (export/lora.py) and this test checks it against the formula.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from safetensors.torch import load_file  # noqa: E402

from export.__main__ import main, parse_args  # noqa: E402
from export.hashing import sha256  # noqa: E402
from export.lora import WEIGHT_NAME, fast_preset, parse_lora  # noqa: E402
from server.models.capabilities import Preset, Settings  # noqa: E402
from server.models.manifest import Manifest  # noqa: E402
from server.models.sd_inpaint import (  # noqa: E402
    TINY_VAE_DECODER,
    SDInpaintModel,
    quality_presets,
)
from tests.export.lora_models import (  # noqa: E402
    LCM_SCALE,
    STYLE_SCALE,
    fused_export,
    lcm_lora,
    lora_args,
    style_lora,
)
from tests.numerics import (  # noqa: E402
    FP32_TOL,
    SEED,
    TorchNoise,
    inputs,
    load_pipeline,
    make_row,
    run_diffusers,
    run_ours,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def folder(tiny_pipeline_dir):
    return fused_export(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def model(folder):
    return SDInpaintModel.from_folder(folder, name="tiny-lcm", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir):
    """diffusers' pipeline with the same LoRAs fused (see the module docstring)."""
    pipe = load_pipeline(tiny_pipeline_dir, safety_checker=None, requires_safety_checker=False)
    loras = [
        (lcm_lora(tiny_pipeline_dir), LCM_SCALE),
        (style_lora(tiny_pipeline_dir), STYLE_SCALE),
    ]
    for i, (folder, scale) in enumerate(loras):
        sd = load_file(folder / WEIGHT_NAME)
        unet = {k: v for k, v in sd.items() if k.startswith("unet.")}
        pipe.load_lora_weights(unet, adapter_name=f"ref{i}")
        pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=[f"ref{i}"])
        pipe.unload_lora_weights()
        modules = dict(pipe.text_encoder.named_modules())
        with torch.no_grad():
            for key, down in sd.items():
                if key.startswith("text_encoder.") and key.endswith(".down.weight"):
                    path = key.removeprefix("text_encoder.").removesuffix(
                        ".lora_linear_layer.down.weight"
                    )
                    up = sd[key.replace(".down.", ".up.")]
                    modules[path].weight += scale * (up @ down)
    return pipe


def test_manifest_records_loras_and_the_automatic_preset(folder, tiny_pipeline_dir):
    m = Manifest.read(folder)
    lcm = lcm_lora(tiny_pipeline_dir)
    style = style_lora(tiny_pipeline_dir)
    assert [(x.source, x.scale, x.file) for x in m.loras] == [
        (str(lcm), LCM_SCALE, WEIGHT_NAME),
        (str(style), STYLE_SCALE, WEIGHT_NAME),
    ]
    assert m.loras[0].sha256 == sha256(lcm / WEIGHT_NAME)
    assert m.loras[1].sha256 == sha256(style / WEIGHT_NAME)
    assert m.loras[0].components == ["unet"]
    assert m.loras[1].components == ["unet", "text_encoder"]
    fp = m.fast_preset
    assert (fp.scheduler, fp.steps, fp.guidance_scale) == ("lcm", 4, 1.0)
    assert "tiny-lcm-lora" in fp.reason and "lcm" in fp.reason
    assert m.export_args["loras"] == [[str(lcm), LCM_SCALE], [str(style), STYLE_SCALE]]
    assert all(v.passed for v in m.verification) and len(m.verification) == 4


def test_fused_weights_change_every_component_they_touch(folder, tiny_model_fp32):
    """The LoRAs had an effect: the fused graphs differ from the plain export's."""
    fused = SDInpaintModel.from_folder(folder, name="fused", provider="cpu", threads=1)
    plain = SDInpaintModel.from_folder(tiny_model_fp32, name="plain", provider="cpu", threads=1)
    ids = plain.tokenizer.encode(["a red cat"])
    te = [
        m.sessions["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
        for m in (fused, plain)
    ]
    assert np.abs(te[0] - te[1]).max() > 1e-2
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((1, 9, 8, 8)).astype(np.float32),
        "timestep": np.array([499.0], np.float32),
        "encoder_hidden_states": te[1],
    }
    unet = [m.sessions["unet"].run(feeds)["out_sample"] for m in (fused, plain)]
    assert np.abs(unet[0] - unet[1]).max() > 1e-2
    # the VAE has no LoRA: the same graph (ops and weights; the files' bytes may differ, since
    # torch's ONNX export does not always name nodes the same way in two runs)
    for comp in ("vae_encoder", "vae_decoder"):
        ours, theirs = (onnx.load(m / comp / "model.onnx") for m in (folder, tiny_model_fp32))
        assert [n.op_type for n in ours.graph.node] == [n.op_type for n in theirs.graph.node]
        weights = [
            {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
            for m in (ours, theirs)
        ]
        assert weights[0].keys() == weights[1].keys()
        assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    img, mask = inputs()
    a = run_ours(fused, make_row(img, mask, scheduler="lcm", steps=4, guidance_scale=1.0))
    b = run_ours(plain, make_row(img, mask, scheduler="lcm", steps=4, guidance_scale=1.0))
    assert np.abs(a - b).mean() > 1e-2


@pytest.mark.parametrize(
    "scheduler,steps,guidance,strength",
    [("lcm", 4, 1.0, 1.0), ("lcm", 4, 2.0, 1.0), ("lcm", 6, 1.0, 0.7), ("tcd", 4, 1.0, 1.0)],
)
def test_served_equals_diffusers_with_the_fused_loras(
    model, reference, scheduler, steps, guidance, strength, record_property
):
    img, mask = inputs()
    ref = run_diffusers(
        reference, scheduler, img, mask, prompt="a red cat", negative_prompt="blurry",
        guidance=guidance, strength=strength, steps=steps,
    )  # fmt: skip
    row = make_row(img, mask, seed=SEED, scheduler=scheduler, steps=steps, guidance_scale=guidance,
                   strength=strength, meta={"noise": TorchNoise(SEED)})  # fmt: skip
    ours = run_ours(model, row)
    assert row.state.cfg == (guidance > 1)
    assert ref.std() > 0.05  # a real image, not a constant that trivially matches
    diff = float(np.abs(ours - ref).max())
    record_property("fp32_max_abs_diff", diff)
    assert diff <= FP32_TOL, f"{scheduler} {steps} steps g={guidance}: max |diff| {diff:.2e}"


def test_quality_low_is_the_fast_preset(model, folder):
    caps = model.capabilities
    assert caps.settings(tier="low") == Settings(4, 1.0, 1.0, "lcm", False)
    assert caps.settings(tier="medium") == Settings(25, 7.5, 1.0, None, False)
    assert caps.settings(tier="high").steps == 50
    low = caps.card()["quality_presets"]["low"]
    assert low == {"steps": 4, "scheduler": "lcm", "guidance_scale": 1.0, "tiny_vae": False}
    # a folder with a tiny autoencoder decoder: the fast preset decodes with it
    m = Manifest.read(folder)
    with_tiny = m.model_copy(
        update={"components": {**m.components, TINY_VAE_DECODER: m.components["vae_decoder"]}}
    )
    assert quality_presets(with_tiny)["low"].tiny_vae is True
    assert quality_presets(m.model_copy(update={"fast_preset": None}))["low"] == Preset(12)
    # explicit values still win over the preset's
    assert caps.settings(tier="low", steps=6, guidance_scale=3.0) == Settings(
        6, 3.0, 1.0, "lcm", False
    )


def test_steps_beyond_the_distilled_schedule_are_a_400(model):
    from server.protocol import ProtocolError

    img, mask = inputs()
    with pytest.raises(ProtocolError, match="at most 50 steps") as err:
        model.validate(make_row(img, mask, scheduler="lcm", steps=60))
    assert err.value.param == "steps"


def test_reexport_is_idempotent_and_the_preset_rewrites_only_the_manifest(
    folder, tmp_path_factory, tiny_pipeline_dir, capsys
):
    copy = tmp_path_factory.mktemp("copy") / "m"
    shutil.copytree(folder, copy)
    args = ["--tiny", *lora_args(tiny_pipeline_dir), "--out", str(copy)]
    unet = copy / "unet" / "model.onnx"
    mtime = unet.stat().st_mtime_ns
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main([*args, "--fast-preset", "tcd:3:1.5"]) == 0  # manifest only: no re-export
    m = Manifest.read(copy)
    assert (m.fast_preset.scheduler, m.fast_preset.steps, m.fast_preset.guidance_scale) == (
        "tcd",
        3,
        1.5,
    )
    assert m.fast_preset.reason == "--fast-preset tcd:3:1.5" and unet.stat().st_mtime_ns == mtime
    assert main([*args, "--fast-preset", "none"]) == 0
    assert Manifest.read(copy).fast_preset is None
    # another scale is other weights: refused without --force
    other = [
        "--tiny",
        "--lora",
        f"{lcm_lora(tiny_pipeline_dir)}:0.3",
        "--out",
        str(copy),
    ]
    assert main(other) == 1
    assert "different arguments" in capsys.readouterr().err


def test_unknown_preset_scheduler_fails_the_load_with_the_fix(folder, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["fast_preset"]["scheduler"] = "warp_drive"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="--fast-preset"):
        SDInpaintModel.from_folder(copy, name="x", provider="cpu", threads=1)


def test_arguments():
    assert parse_lora("org/lcm-lora-sdv1-5") == parse_lora("org/lcm-lora-sdv1-5:1")
    assert parse_lora("/x/y:0.25").scale == 0.25 and parse_lora("/x/y:0.25").source == "/x/y"
    loras = (parse_lora("latent-consistency/lcm-lora-sdv1-5"),)
    auto = fast_preset(None, loras)
    assert (auto.scheduler, auto.steps, auto.guidance_scale) == ("lcm", 4, 1.0)
    tcd = fast_preset(None, (parse_lora("style:0.5"), parse_lora("/loras/TCD-SD15")))
    assert tcd.scheduler == "tcd"  # case-insensitive, the first matching LoRA
    assert fast_preset(None, (parse_lora("/loras/lcm/style.safetensors"),)) is None  # name only
    assert fast_preset("none", loras) is None
    assert fast_preset("lcm:8", ()).guidance_scale == 1.0
    for bad in ("lcm", "lcm:0", "lcm:4:-1", "LCM:4", "lcm:four", "lcm:4:1:2"):
        with pytest.raises(SystemExit):
            parse_args(["--tiny", "--fast-preset", bad])
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--lora", ":0.5"])
    opts = parse_args(["--tiny", "--lora", "a:0.5", "--lora", "b", "--fast-preset", "tcd:4"])
    assert opts.export_args()["loras"] == [["a", 0.5], ["b", 1.0]]
    assert opts.export_args()["fast_preset"] == "tcd:4"
    assert "loras" not in parse_args(["--tiny"]).export_args()  # older folders stay up to date
    # --tiny-vae-encode: needs the tiny VAE and a fast preset to apply to
    for bad in (
        ["--fast-preset", "lcm:4"],
        ["--tiny-vae", "t"],
        ["--tiny-vae", "t", "--lora", "b"],
    ):
        with pytest.raises(SystemExit):
            parse_args(["--tiny", "--tiny-vae-encode", *bad])
    opts = parse_args(["--tiny", "--tiny-vae", "t", "--tiny-vae-encode", "--lora", "lcm-x"])
    assert opts.export_args()["tiny_vae_encode"] is True
    entry = opts.fast_preset_entry()
    assert (entry.scheduler, entry.tiny_vae_encode) == ("lcm", True)
    assert "tiny_vae_encode" not in parse_args(["--tiny", "--tiny-vae", "t"]).export_args()
    assert fast_preset("lcm:4", ()).tiny_vae_encode is False  # the full VAE encodes by default


def test_missing_lora_is_a_clear_error(tmp_path, capsys):
    rc = main(["--tiny", "--lora", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert rc == 1
    assert "no such LoRA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
