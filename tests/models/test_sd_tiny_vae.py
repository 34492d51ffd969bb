"""SDInpaintModel with a tiny autoencoder (TAESD-style ``taesd_decoder``) in its folder:

- final images of ``row.tiny_vae`` rows equal diffusers' full inpainting pipeline (same weights,
  same noise) whose final latents are decoded by diffusers' ``AutoencoderTiny`` the way a
  pipeline with ``vae=AutoencoderTiny`` decodes them: ``decode(latents / scaling_factor)``. The
  full VAE still encodes the image (our pipeline keeps it for that; TAESD only decodes);
- rows with and without ``tiny_vae`` finishing in one call each get their own decoder;
- previews always come from the tiny decoder when the folder has one (the real sessions are
  wrapped by a recorder that only counts calls and keeps their inputs and outputs);
- with ``--tiny-vae-encode`` (the manifest's ``fast_preset.tiny_vae_encode``) fast rows equal
  diffusers' pipeline with ``vae=AutoencoderTiny``, which encodes with TAESD too; other rows
  still encode with the full VAE.

The folder is the tiny preset exported with ``--tiny-vae`` (a random AutoencoderTiny built
here); ``tiny_model_fp32`` (no tiny VAE) is the same pipeline without it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderTiny  # noqa: E402

from server.models.manifest import MANIFEST_FILE  # noqa: E402
from server.models.sd_inpaint import SDInpaintModel, to_uint8  # noqa: E402
from tests import artifacts  # noqa: E402
from tests.numerics import (  # noqa: E402
    FP32_TOL,
    SEED,
    H,
    TorchNoise,
    W,
    inputs,
    load_pipeline,
    make_row,
    run_diffusers,
    run_ours,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class Recorder:
    """A real session that also keeps every call's feeds and outputs (nothing is replaced)."""

    def __init__(self, session):
        self.session = session
        self.calls: list[tuple[dict, dict]] = []

    def run(self, feeds):
        out = self.session.run(feeds)
        self.calls.append((feeds, out))
        return out

    def to_device(self, array):
        return self.session.to_device(array)


@pytest.fixture(scope="module")
def tiny_vae_dir():
    return artifacts.tiny_vae(seed=1)


@pytest.fixture(scope="module")
def folder(tiny_model_fp32, tiny_vae_dir):
    """From the test-model cache; when it is built, tiny_model_fp32 has filled the exporter's
    in-process memo: only the tiny VAE is traced."""
    return artifacts.export("--tiny", "--tiny-vae", tiny_vae_dir, folder="tiny-taesd")


@pytest.fixture(scope="module")
def model(folder):
    return SDInpaintModel.from_folder(folder, name="tiny-taesd", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def plain(tiny_model_fp32):
    return SDInpaintModel.from_folder(tiny_model_fp32, name="tiny", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def taesd(tiny_vae_dir):
    return AutoencoderTiny.from_pretrained(tiny_vae_dir).eval()


def diffusers_latents(pipe, scheduler, img, mask, strength):
    """Final latents (1, 4, h, w) of diffusers' full pipeline (full VAE encodes)."""
    latents = run_diffusers(
        pipe, scheduler, img, mask, prompt="a red cat", negative_prompt="blurry", guidance=7.5,
        strength=strength, output_type="latent",
    )  # fmt: skip
    return latents[None]


def tiny_decode(pipe, taesd, latents) -> np.ndarray:
    """What StableDiffusionInpaintPipeline with vae=AutoencoderTiny does after the loop: decode
    latents / vae.config.scaling_factor, then postprocess to output_type="np"."""
    with torch.no_grad():
        image = taesd.decode(latents / taesd.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")[0]


@pytest.mark.parametrize("scheduler,strength", [("euler_a", 1.0), ("pndm", 0.6)])
def test_tiny_final_decode_matches_diffusers(pipe, taesd, model, scheduler, strength):
    img, mask = inputs()
    ref = tiny_decode(pipe, taesd, diffusers_latents(pipe, scheduler, img, mask, strength))
    kw = dict(scheduler=scheduler, strength=strength, guidance_scale=7.5)
    ours = run_ours(
        model, make_row(img, mask, tiny_vae=True, meta={"noise": TorchNoise(SEED)}, **kw)
    )
    assert ours.shape == ref.shape == (H, W, 3) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= FP32_TOL
    assert ref.std() > 0.05 and 0.2 < ref.mean() < 0.8  # an image, not a clipped constant
    full = run_ours(model, make_row(img, mask, meta={"noise": TorchNoise(SEED)}, **kw))
    assert np.abs(full - ours).mean() > 0.05  # the decoder choice shows in the pixels


def test_mixed_batch_each_row_gets_its_own_decoder(model, plain):
    """One finish call over [tiny, full, tiny at another size, full]: equal to each row alone,
    and the full rows equal the same rows on the folder without a tiny VAE."""
    img, mask = inputs()
    small_img, small_mask = inputs(64, 64, seed=2)

    def rows():
        return [
            make_row(img, mask, seed=1, steps=3, tiny_vae=True),
            make_row(img, mask, seed=2, steps=3),
            make_row(small_img, small_mask, seed=3, steps=3, tiny_vae=True),
            make_row(small_img, small_mask, seed=4, steps=3),
        ]

    batch = rows()
    groups = [batch[:2], batch[2:]]  # one UNet call per latent size, as the batcher keys them
    for group in groups:
        model.prepare(group)
    while not all(model.is_done(r) for r in batch):
        for group in groups:
            model.step(group)
    together = model.finish_float(batch)
    alone = [run_ours(model, r) for r in rows()]
    for a, b in zip(together, alone, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5
    for i in (1, 3):
        assert np.abs(together[i] - run_ours(plain, rows()[i])).max() <= 1e-5
    for i in (0, 2):
        assert np.abs(together[i] - run_ours(plain, rows()[i])).mean() > 0.05


def test_previews_decode_with_the_tiny_decoder(model, taesd, monkeypatch):
    recorders = {}
    for comp in ("taesd_decoder", "vae_decoder"):
        recorders[comp] = Recorder(model.sessions[comp])
        monkeypatch.setitem(model.sessions, comp, recorders[comp])
    img, mask = inputs()
    previews = []
    row = make_row(
        img, mask, steps=6, partial_images=3, scheduler="ddim",
        on_preview=lambda i, im: previews.append((i, im)),
    )  # fmt: skip
    final = model.run([row])[0]
    tiny_calls, full_calls = recorders["taesd_decoder"].calls, recorders["vae_decoder"].calls
    assert [i for i, _ in previews] == [0, 1, 2]
    assert len(tiny_calls) == 3 and len(full_calls) == 1  # the final image: full VAE
    decoded = np.clip(full_calls[0][1]["sample"][0].transpose(1, 2, 0) / 2 + 0.5, 0, 1)
    assert np.array_equal(final, to_uint8(decoded))
    for (_, image), (feeds, _) in zip(previews, tiny_calls, strict=True):
        latents = torch.from_numpy(feeds["latent_sample"])
        with torch.no_grad():  # diffusers' AutoencoderTiny on the very latents the preview had
            ref = taesd.decode(latents).sample[0].permute(1, 2, 0).numpy()
        expect = to_uint8(np.clip(ref / 2 + 0.5, 0, 1))
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - expect).max() <= 1
        assert expect.std() > 10  # a picture, not a constant
    # the full VAE would have shown something else for the same latents
    full = model._decode(tiny_calls[-1][0]["latent_sample"])
    assert np.abs(to_uint8(full[0]).astype(int) - previews[-1][1]).mean() > 10


def test_without_a_tiny_vae_previews_and_fast_rows_use_the_full_vae(plain):
    img, mask = inputs()
    calls = []
    row = make_row(img, mask, steps=4, partial_images=2, on_preview=lambda i, im: calls.append(im))
    fast = make_row(img, mask, steps=4, tiny_vae=True)
    a, b = plain.run([row, fast])
    assert len(calls) == 2 and np.array_equal(a, b)  # same seed: tiny_vae has nothing to switch
    assert plain.has_tiny_vae is False and plain.describe()["tiny_vae"] is None


def test_describe_names_the_tiny_vae(model, tiny_vae_dir):
    assert model.has_tiny_vae is True
    assert model.describe()["tiny_vae"] == str(tiny_vae_dir)


@pytest.fixture(scope="module")
def encoding(folder, tiny_vae_dir, tmp_path_factory):
    """``folder`` given a fast preset that encodes with the tiny VAE by ``python -m export
    --tiny-vae-encode``: the graphs are the same, so only manifest.json is rewritten."""
    from export.__main__ import main

    out = tmp_path_factory.mktemp("tiny-taesd-encode") / "m"
    shutil.copytree(folder, out)
    unet = out / "unet" / "model.onnx"
    mtime = unet.stat().st_mtime_ns
    args = ["--tiny", "--tiny-vae", str(tiny_vae_dir), "--out", str(out)]
    assert main([*args, "--fast-preset", "lcm:4", "--tiny-vae-encode"]) == 0
    fast = json.loads((out / MANIFEST_FILE).read_text())["fast_preset"]
    assert fast["tiny_vae_encode"] is True and fast["scheduler"] == "lcm"
    assert unet.stat().st_mtime_ns == mtime  # not exported again
    return SDInpaintModel.from_folder(out, name="tiny-taesd-enc", provider="cpu", threads=1)


@pytest.mark.parametrize(
    "scheduler,steps,strength,guidance", [("lcm", 4, 1.0, 1.0), ("pndm", 6, 0.6, 7.5)]
)
def test_tiny_encode_matches_diffusers_with_autoencoder_tiny(
    tiny_pipeline_dir, taesd, model, encoding, scheduler, steps, strength, guidance
):
    img, mask = inputs()
    ref_pipe = load_pipeline(tiny_pipeline_dir, vae=taesd)  # TAESD encodes and decodes
    ref = run_diffusers(
        ref_pipe, scheduler, img, mask, prompt="a red cat", negative_prompt="blurry",
        guidance=guidance, strength=strength, steps=steps,
    )  # fmt: skip
    kw = dict(scheduler=scheduler, strength=strength, guidance_scale=guidance, steps=steps)

    def row(**extra):
        return make_row(img, mask, meta={"noise": TorchNoise(SEED)}, **kw, **extra)

    ours = run_ours(encoding, row(tiny_vae=True))
    assert ours.shape == ref.shape == (H, W, 3)
    assert np.abs(ours - ref).max() <= FP32_TOL
    assert ref.std() > 0.05 and 0.2 < ref.mean() < 0.8  # an image, not a clipped constant
    # the encoder shows: the same fast row where the full VAE encodes differs
    assert np.abs(run_ours(model, row(tiny_vae=True)) - ours).mean() > 0.01
    # rows not on the fast preset keep the full VAE for everything
    assert np.abs(run_ours(encoding, row()) - run_ours(model, row())).max() <= 1e-6
    assert encoding.describe()["tiny_vae_encode"] is True
    assert model.describe()["tiny_vae_encode"] is False


def test_a_fast_preset_that_encodes_needs_the_tiny_encoder(tiny_model_fp32, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(tiny_model_fp32, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["fast_preset"] = {
        "scheduler": "lcm", "steps": 4, "guidance_scale": 1.0, "tiny_vae_encode": True,
    }  # fmt: skip
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="--tiny-vae-encode"):
        SDInpaintModel.from_folder(out, name="x", provider="cpu", threads=1)
