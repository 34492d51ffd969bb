"""The benchmark's like-for-like TAESD pair on the tiny model (real exports, real diffusers):
ours served as ``--tiny-vae-encode`` writes the model (``assets.tiny_encode_view``) and diffusers
built with ``vae=AutoencoderTiny``, each encoding the masked image with TAESD."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import recipes
from benchmarks.__main__ import _cfg
from benchmarks.assets import AssetError, tiny_encode_view
from benchmarks.baseline import bench_diffusers
from benchmarks.inprocess import bench_ours
from export.__main__ import main as export_main
from server.models.manifest import MANIFEST_FILE, Manifest
from tests import artifacts

SIZE = 64
COMMON = dict(threads=1, guidance=7.5, prompt="a red cat", seed=3, warmup=0, repeats=1)


@pytest.fixture(scope="module")
def taesd():
    return artifacts.tiny_vae(seed=1)


@pytest.fixture(scope="module")
def fast_export(tiny_model_fp32, taesd, tmp_path_factory):
    """The tiny model with TAESD and an LCM fast preset; the full VAE encodes (the default).
    From the test-model cache (when it is built, tiny_model_fp32 has filled the exporter's
    in-process memo: only TAESD is traced), copied: ``tiny_encode_view`` writes beside it."""
    cached = artifacts.export(
        "--tiny", "--tiny-vae", taesd, "--fast-preset", "lcm:4", folder="tiny-fast"
    )
    out = tmp_path_factory.mktemp("fast") / "tiny-fast"
    shutil.copytree(cached, out)
    return out


def test_the_view_is_what_the_exporter_writes_for_tiny_vae_encode(fast_export, taesd, tmp_path):
    view = tiny_encode_view(fast_export)
    assert view.name == "tiny-fast-tiny-encode" and view.parent == fast_export.parent
    ref = tmp_path / "ref"
    shutil.copytree(fast_export, ref)
    args = ["--tiny", "--tiny-vae", str(taesd), "--fast-preset", "lcm:4", "--out", str(ref)]
    assert export_main([*args, "--tiny-vae-encode"]) == 0
    ours, theirs, source = Manifest.read(view), Manifest.read(ref), Manifest.read(fast_export)
    assert ours.fast_preset == theirs.fast_preset and ours.fast_preset.tiny_vae_encode
    assert ours.components == theirs.components and ours.tiny_vae == theirs.tiny_vae
    assert ours.export_args["tiny_vae_encode"] is True and ours.name == view.name
    assert source.fast_preset.tiny_vae_encode is False  # the export itself is left as it was
    # the same graphs, linked; only the manifest is the view's own
    for entry in fast_export.iterdir():
        if entry.name != MANIFEST_FILE:
            assert (view / entry.name).resolve() == entry.resolve()
    assert not (view / MANIFEST_FILE).is_symlink()
    before = (view / MANIFEST_FILE).read_text()
    assert tiny_encode_view(fast_export) == view and (view / MANIFEST_FILE).read_text() == before


def test_a_view_needs_a_fast_preset_and_the_tiny_encoder(tiny_model_fp32):
    with pytest.raises(AssetError, match="--tiny-vae"):
        tiny_encode_view(tiny_model_fp32)


def test_both_sides_encode_with_taesd_in_the_pair(
    fast_export, tiny_pipeline_dir, taesd, monkeypatch
):
    pair, fast = _cfg(recipes.fast_tiny_encode(SIZE, SIZE)), _cfg(recipes.fast(SIZE, SIZE))
    view = tiny_encode_view(fast_export)
    ours = bench_ours(view, name=view.name, provider="cpu", configs=[pair], **COMMON, log=print)
    (rec,) = ours
    assert (rec["recipe"], rec["tiny_vae_encode"], rec["tiny_vae"]) == (pair["recipe"], True, True)
    assert rec["unet_calls_per_image"] == 4 and rec["stages_s"]["vae_encoder"] > 0
    assert rec["model"]["tiny_vae"] and "taesd_encoder" in rec["precisions"]
    # a folder whose manifest encodes with the full VAE cannot be measured as the pair
    with pytest.raises(ValueError, match="tiny_encode_view"):
        bench_ours(fast_export, name="x", provider="cpu", configs=[pair], **COMMON, log=print)

    from diffusers import AutoencoderKL, AutoencoderTiny

    encoded = []  # which autoencoder class encoded, in order
    for cls in (AutoencoderKL, AutoencoderTiny):

        def spy(self, *args, _real=cls.encode, _name=cls.__name__, **kwargs):
            encoded.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "encode", spy)
    torch = bench_diffusers(
        tiny_pipeline_dir, device="cpu", dtype="fp32", compile=False, configs=[fast, pair],
        tiny_vae_dir=str(taesd), **COMMON, log=print,
    )  # fmt: skip
    full, tiny = torch
    assert (full["recipe"], full["tiny_vae_encode"]) == ("fast", False)
    assert (tiny["recipe"], tiny["tiny_vae_encode"]) == ("fast-tiny-encode", True)
    for r in torch:
        assert r["unet_calls_per_image"] == 4 and r["stages_s"]["vae_encoder"] > 0
        assert r["stages_s"]["vae_decoder"] > 0
    # one timed image each (no warm-up): the full VAE encodes the fast recipe, TAESD the pair
    assert encoded == ["AutoencoderKL", "AutoencoderTiny"]
