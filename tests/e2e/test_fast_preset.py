"""End to end with a model exported with a fused LCM-LoRA (``python -m export --lora``): the real
server, the official OpenAI SDK. ``quality="low"`` runs the manifest's fast preset (LCM, 4 steps,
no classifier-free guidance): /v1/models shows it, /metrics counts 4 denoising steps, and the
image equals an explicit LCM request with the same seed."""

from __future__ import annotations

import re
import shutil
import urllib.request

import numpy as np
import openai
import pytest

from tests.export.lora_models import LCM_SCALE, STYLE_SCALE, fused_export, lcm_lora, style_lora
from tests.helpers import alpha_mask, decode_b64, png

KEY = "sk-test-fast"
MODEL = "tiny-lcm"
H, W, BOX = 64, 64, (16, 16, 48, 48)


def files() -> dict:
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([xx * 4, yy * 4, 96 + 0 * xx], -1).astype(np.uint8)
    mask = alpha_mask(W, H, BOX)  # transparent = edit
    return {"image": ("a.png", png(img), "image/png"), "mask": ("m.png", png(mask), "image/png")}


def steps_counted(base: str) -> float:
    """inpaint_denoising_steps_total of our model (row-steps: one per row per UNet call)."""
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    for line in text.splitlines():
        m = re.match(r'^inpaint_denoising_steps_total\{model="([^"]+)"\} ([0-9.e+-]+)$', line)
        if m and m.group(1) == MODEL:
            return float(m.group(2))
    return 0.0


@pytest.fixture(scope="module")
def served(start_server, tiny_pipeline_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(fused_export(tiny_pipeline_dir), models / MODEL)
    args = ["--api-key", KEY, "--models-dir", str(models), "--provider", "cpu"]
    return start_server(args, key=KEY, ready_s=90, stop_s=30, timeout=120)


def edit(client, **kw):
    return client.images.edit(model=MODEL, prompt="a red cat", **files(), **kw)


def test_models_card_shows_the_fast_preset_and_the_loras(client, tiny_pipeline_dir):
    card = next(m for m in client.models.list().data if m.id == MODEL).model_dump()
    caps = card["capabilities"]
    low = caps["quality_presets"]["low"]
    assert low == {"steps": 4, "scheduler": "lcm", "guidance_scale": 1.0, "tiny_vae": False}
    assert caps["quality_presets"]["medium"] == {"steps": 25, "tiny_vae": False}
    assert {"lcm", "tcd"} <= set(caps["schedulers"])
    lcm = str(lcm_lora(tiny_pipeline_dir))
    style = str(style_lora(tiny_pipeline_dir))
    assert card["loras"] == [
        {"source": lcm, "scale": LCM_SCALE},
        {"source": style, "scale": STYLE_SCALE},
    ]


def test_quality_low_runs_the_fast_preset(client, server):
    before = steps_counted(server)
    low = edit(client, quality="low", extra_body={"seed": 7})
    assert steps_counted(server) - before == 4  # 4 LCM steps, one UNet row (no CFG)
    assert low.quality == "low"
    direct = edit(
        client, extra_body={"seed": 7, "scheduler": "lcm", "steps": 4, "guidance_scale": 1}
    )
    a, b = decode_b64(low.data[0].b64_json), decode_b64(direct.data[0].b64_json)
    assert a.shape == (H, W, 3) and np.array_equal(a, b)
    before = steps_counted(server)
    # PNDM, 25 steps, CFG
    medium = decode_b64(edit(client, extra_body={"seed": 7}).data[0].b64_json)
    assert steps_counted(server) - before >= 25
    x0, y0, x1, y1 = BOX
    assert np.abs(medium[y0:y1, x0:x1].astype(int) - a[y0:y1, x0:x1]).mean() > 1.0


def test_more_steps_than_lcm_was_distilled_on_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        edit(client, extra_body={"seed": 1, "scheduler": "lcm", "steps": 60})
    body = err.value.body
    assert body["param"] == "steps" and "at most 50 steps" in body["message"]
