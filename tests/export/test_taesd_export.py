"""``python -m export --tiny-vae``: a TAESD-style ``AutoencoderTiny`` (random weights, built
locally with ``export.taesd.build_random_tiny_vae``) exported beside the tiny pipeline as
``taesd_decoder`` / ``taesd_encoder``: manifest, I/O contract, ORT vs diffusers' own
``AutoencoderTiny.decode`` / ``encode`` on fresh inputs (fp32 and fp16), clear failures.

The TAESD and the exports come from the test-model cache (tests/artifacts.py). They depend on
``tiny_model_fp32`` only so that, when they are built, the in-process memo of the tiny preset's
graphs is filled: the exports then trace just the two tiny-VAE graphs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from server.models.manifest import Manifest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from export.taesd import TINY_COMPONENTS, TINY_CONFIG  # noqa: E402
from export.verify import RTOL, session  # noqa: E402
from tests import artifacts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

CONTRACT = {  # docs/CONVENTIONS.md: (input names, output names)
    "taesd_decoder": (["latent_sample"], ["sample"]),
    "taesd_encoder": (["sample"], ["latent_sample"]),
}
LATENT = ["batch", 4, "latent_height", "latent_width"]
IMAGE = ["batch", 3, "height", "width"]


def _export(out, tiny_vae, precision="fp32", *extra):
    from export.__main__ import main

    argv = ["--tiny", "--tiny-vae", str(tiny_vae), "--precision", precision, "--out", str(out)]
    return main([*argv, *extra])


@pytest.fixture(scope="module")
def tiny_vae_dir():
    return artifacts.tiny_vae(seed=0)


@pytest.fixture(scope="module")
def exports(tiny_model_fp32, tiny_vae_dir):
    return {
        precision: artifacts.export(
            "--tiny", "--tiny-vae", tiny_vae_dir, "--precision", precision, folder="tiny-taesd"
        )
        for precision in ("fp32", "fp16")
    }


@pytest.fixture(scope="module")
def taesd(tiny_vae_dir):
    from diffusers import AutoencoderTiny

    torch.set_num_threads(1)
    return AutoencoderTiny.from_pretrained(tiny_vae_dir).eval()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_manifest_records_the_tiny_vae(exports, tiny_vae_dir, precision):
    folder = exports[precision]
    m = Manifest.read(folder)
    assert list(m.components)[-2:] == list(TINY_COMPONENTS)
    assert m.tiny_vae is not None and m.tiny_vae.scaling_factor == 1.0
    assert m.tiny_vae.source.model == str(tiny_vae_dir)
    assert m.tiny_vae.source.path == str(tiny_vae_dir.resolve())
    assert m.export_args["tiny_vae"] == str(tiny_vae_dir)
    checks = {v.component: v for v in m.verification}
    for name, (ins, outs) in CONTRACT.items():
        spec = m.components[name]
        assert spec.file == f"{name}/model.onnx" and spec.precision == precision
        assert [t.name for t in spec.inputs] == ins and [t.name for t in spec.outputs] == outs
        shapes = [t.shape for t in spec.inputs + spec.outputs]
        assert shapes == ([LATENT, IMAGE] if name == "taesd_decoder" else [IMAGE, LATENT])
        assert all(t.dtype == "float32" for t in spec.inputs + spec.outputs)
        digest = hashlib.sha256((folder / spec.file).read_bytes()).hexdigest()
        assert spec.sha256 == {spec.file: digest}
        assert spec.optimization == "none"
        v = checks[name]
        assert v.passed and v.rtol == RTOL[precision] and v.max_abs_diff <= v.tolerance
        # the graph file itself: the contract's names and dynamic axes, float32 I/O
        graph = onnx.load(str(folder / spec.file), load_external_data=False).graph
        assert [i.name for i in graph.input] == ins and [o.name for o in graph.output] == outs
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == (LATENT if name == "taesd_decoder" else IMAGE)
        inits = {onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer}
        assert ("FLOAT16" in inits) == (precision == "fp16")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_match_diffusers_autoencoder_tiny(exports, taesd, precision):
    """Fresh inputs at another size and batch than the export's verification (3 x 48x80 px),
    latents up to +-12 so the decoder's 3 * tanh(x / 3) input clamp is exercised; the reference
    is diffusers' AutoencoderTiny API itself, not our wrapper."""
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(3, 4, 6, 10, generator=g) * 4
    images = torch.rand(3, 3, 48, 80, generator=g) * 2 - 1
    with torch.no_grad():
        ref_dec = taesd.decode(latents).sample.numpy()
        ref_enc = taesd.encode(images).latents.numpy()
    folder = exports[precision]
    dec = session(folder / "taesd_decoder/model.onnx").run(None, {"latent_sample": latents.numpy()})
    enc = session(folder / "taesd_encoder/model.onnx").run(None, {"sample": images.numpy()})
    for got, ref in ((dec[0], ref_dec), (enc[0], ref_enc)):
        assert got.shape == ref.shape and got.dtype == np.float32
        tol = RTOL[precision] * max(1.0, float(np.abs(ref).max()))
        assert float(np.abs(got - ref).max()) <= tol
        assert ref.std() > 0.01  # outputs vary: the comparison is not of constants
    assert ref_dec.shape == (3, 3, 48, 80) and ref_enc.shape == (3, 4, 6, 10)
    # the decoded images mostly lie inside [-1, 1] (the calibrated random weights), so the
    # server's clip to [0, 1] after x / 2 + 0.5 does not hide differences
    assert np.mean(np.abs(ref_dec) < 1) > 0.5


def test_without_tiny_vae_nothing_changes(tiny_model_fp32):
    """Exports without --tiny-vae keep the four components and export arguments of before, so
    folders exported before the option still read as "up to date"."""
    m = Manifest.read(tiny_model_fp32)
    assert m.tiny_vae is None and "tiny_vae" not in m.export_args
    assert not set(TINY_COMPONENTS) & set(m.components)


def test_reexport_is_up_to_date_and_changing_the_tiny_vae_needs_force(
    exports, tiny_vae_dir, capsys
):
    folder = exports["fp32"]
    assert _export(folder, tiny_vae_dir) == 0
    assert "up to date" in capsys.readouterr().out
    from export.__main__ import main

    assert main(["--tiny", "--out", str(folder)]) == 1  # the same folder, no tiny VAE now
    err = capsys.readouterr().err
    assert "different arguments (tiny_vae)" in err and "--force" in err


@pytest.mark.parametrize(
    "config,needle",
    [
        (dict(TINY_CONFIG, latent_channels=16), "16 latent channels but the pipeline's VAE has 4"),
        (
            dict(
                TINY_CONFIG,
                encoder_block_out_channels=(8, 8, 8),
                decoder_block_out_channels=(8, 8, 8),
                num_encoder_blocks=(1, 1, 1),
                num_decoder_blocks=(1, 1, 1),
            ),
            "maps 4 px (encoder) / 4 px (decoder) to one latent pixel but the pipeline's VAE "
            "maps 8",
        ),
    ],
    ids=["latent-channels", "levels"],
)
def test_incompatible_tiny_vae_fails_clearly(tmp_path, capsys, config, needle):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(**config).save_pretrained(tmp_path / "bad")
    out = tmp_path / "out"
    assert _export(out, tmp_path / "bad") == 1
    err = capsys.readouterr().err
    assert f"--tiny-vae {tmp_path / 'bad'}" in err and needle in err
    assert not out.exists()


def test_unloadable_tiny_vae_fails_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _export(tmp_path / "out", tmp_path / "empty") == 1
    err = capsys.readouterr().err
    assert "could not load a diffusers AutoencoderTiny" in err and "config.json" in err


def test_cli_flag():
    from export.__main__ import parse_args

    opts = parse_args(["--tiny", "--tiny-vae", "madebyollin/taesd"])
    assert opts.tiny_vae == "madebyollin/taesd"
    assert opts.export_args()["tiny_vae"] == "madebyollin/taesd"
    assert parse_args(["--tiny"]).tiny_vae is None
