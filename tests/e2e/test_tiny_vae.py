"""End to end with a tiny autoencoder: the real server serves the tiny model exported with
``--tiny-vae`` ("tiny-taesd") beside the same folder with the tiny VAE taken out ("tiny-full"),
and the official OpenAI SDK streams from both.

The two share every other graph, so the same request (seed, steps) runs the same denoising:
the final images (full VAE decode) are identical, while the previews differ because the
tiny-taesd folder decodes them with its tiny decoder. Both manifests also declare a few-step
fast preset (what ``python -m export --fast-preset`` writes), whose quality=low images decode
with the tiny VAE where there is one.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests import artifacts
from tests.helpers import alpha_mask, decode_b64, png

KEY = "sk-test-taesd"
#: a few-step recipe for quality=low: 4 DDIM steps without classifier-free guidance
FAST_PRESET = {"scheduler": "ddim", "steps": 4, "guidance_scale": 1.0, "reason": "e2e test"}
H, W, BOX = 64, 64, (16, 16, 48, 48)


def scene() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.stack([xx * 4, yy * 4, 96 + 0 * xx], -1).astype(np.uint8)


def without_tiny_vae(src, dst) -> None:
    """Copy an export and remove its tiny VAE (components, folders, manifest entry)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for comp in ("taesd_decoder", "taesd_encoder"):
        del manifest["components"][comp]
        shutil.rmtree(dst / comp)
    manifest["tiny_vae"] = None
    manifest["verification"] = [
        v for v in manifest["verification"] if not v["component"].startswith("taesd_")
    ]
    (dst / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def tiny_vae_dir():
    return artifacts.tiny_vae(seed=2)


@pytest.fixture(scope="module")
def served(start_server, tiny_model_fp32, tiny_vae_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    # from the test-model cache; when it is built, tiny_model_fp32 has filled the exporter's
    # in-process memo: only the tiny VAE is traced
    out = models / "tiny-taesd"
    cached = artifacts.export("--tiny", "--tiny-vae", tiny_vae_dir, folder="tiny-taesd")
    shutil.copytree(cached, out)  # the manifest is changed below
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["fast_preset"] = FAST_PRESET
    (out / "manifest.json").write_text(json.dumps(manifest))
    without_tiny_vae(models / "tiny-taesd", models / "tiny-full")
    args = ["--api-key", KEY, "--models-dir", str(models), "--provider", "cpu"]
    return start_server(args, key=KEY, ready_s=90, stop_s=30, timeout=120)


def edit(client, model: str, **kw):
    return client.images.edit(
        model=model,
        image=("a.png", png(scene()), "image/png"),
        mask=("m.png", png(alpha_mask(W, H, BOX)), "image/png"),
        prompt="a wooden bench",
        **kw,
    )


def test_models_say_which_has_a_tiny_vae(client, tiny_vae_dir):
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards["tiny-taesd"]["tiny_vae"] == str(tiny_vae_dir)
    assert cards["tiny-full"]["tiny_vae"] is None


def test_previews_come_from_the_tiny_decoder(client):
    runs = {}
    for model in ("tiny-taesd", "tiny-full"):
        stream = edit(
            client, model, stream=True, partial_images=2, extra_body={"seed": 5, "steps": 6}
        )
        events = list(stream)
        assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + [
            "image_edit.completed"
        ]
        runs[model] = [decode_b64(e.b64_json) for e in events]
    tiny, full = runs["tiny-taesd"], runs["tiny-full"]
    assert all(img.shape == (H, W, 3) for img in tiny + full)
    assert np.array_equal(tiny[-1], full[-1])  # same final image: both decode with the full VAE
    region = np.s_[BOX[1] : BOX[3], BOX[0] : BOX[2]]
    for t, f in zip(tiny[:2], full[:2], strict=True):
        assert np.abs(t[region].astype(int) - f[region]).mean() > 5  # previews: other decoder


def test_quality_low_decodes_with_the_tiny_vae_where_the_folder_has_one(client):
    """quality=low runs the manifest's fast preset, decoded with the tiny decoder where the folder
    has one: the same denoising on both models, another final decoder."""
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    low = {"steps": 4, "scheduler": "ddim", "guidance_scale": 1.0}
    assert cards["tiny-taesd"]["capabilities"]["quality_presets"]["low"] == {
        **low,
        "tiny_vae": True,
    }
    assert cards["tiny-full"]["capabilities"]["quality_presets"]["low"] == {
        **low,
        "tiny_vae": False,
    }

    def image(model: str, **kw) -> np.ndarray:
        resp = edit(client, model, **kw)
        assert resp.quality == kw.get("quality", resp.quality)  # the preset it ran, as asked
        return decode_b64(resp.data[0].b64_json)

    fast = image("tiny-taesd", quality="low", extra_body={"seed": 5})
    full = image("tiny-full", quality="low", extra_body={"seed": 5})
    # the preset's recipe spelled out, without quality=low: the full VAE decodes it
    recipe = {"seed": 5, "scheduler": "ddim", "steps": 4, "guidance_scale": 1.0}
    spelled = image("tiny-taesd", extra_body=recipe)
    assert fast.shape == full.shape == spelled.shape == (H, W, 3)
    assert np.array_equal(spelled, full)  # the same denoising and decoder
    region = np.s_[BOX[1] : BOX[3], BOX[0] : BOX[2]]
    assert np.abs(fast[region].astype(int) - full[region]).mean() > 5  # the tiny decoder's
