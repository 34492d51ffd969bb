"""End to end, model instances (``--instances``): the real server with the tiny SD export, the
official OpenAI SDK. ``/v1/models`` says how many batches the model runs at once, on how many
threads, and why (measured at load by default, or set); concurrent edits through a server
running two instances all come back right, equal to the same edit made alone."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import urllib.request

import numpy as np
import pytest

from tests.helpers import alpha_mask, decode_b64, png

KEY = "sk-test-instances"
MODEL = "tiny"
H = W = 64


def files() -> dict:
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([xx * 4, yy * 4, 96 + 0 * xx], -1).astype(np.uint8)
    mask = alpha_mask(W, H, (16, 16, 48, 48))  # transparent = edit
    return {"image": ("a.png", png(img), "image/png"), "mask": ("m.png", png(mask), "image/png")}


def card(base: str) -> dict:
    req = urllib.request.Request(
        f"{base}/v1/models/{MODEL}", headers={"Authorization": f"Bearer {KEY}"}
    )
    return json.loads(urllib.request.urlopen(req).read())


@pytest.fixture(scope="module")
def models_dir(tiny_model_fp32, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_fp32, models / MODEL)
    return models


def serve(start_server, models_dir, *extra):
    args = ["--api-key", KEY, "--models-dir", str(models_dir), "--provider", "cpu", *extra]
    return start_server(args, key=KEY, ready_s=90, stop_s=30, timeout=120)


def test_the_card_says_what_was_measured_at_load(start_server, models_dir):
    srv, _ = serve(start_server, models_dir, "--threads", "2")
    got = card(srv.base)["instances"]
    assert got["count"] in (1, 2)
    assert got["threads"] == (1 if got["count"] == 2 else 2)
    assert "concurrent calls" in got["reason"]  # the comparison it made, with its ratio
    srv.stop()


def test_two_instances_serve_concurrent_edits_each_as_made_alone(start_server, models_dir):
    srv, client = serve(start_server, models_dir, "--instances", "2", "--threads", "2")
    assert card(srv.base)["instances"] == {"count": 2, "threads": 1, "reason": "--instances 2"}

    def edit(seed: int) -> np.ndarray:
        out = client.images.edit(
            model=MODEL, prompt="a red cat", **files(), extra_body={"seed": seed, "steps": 6}
        )
        return decode_b64(out.data[0].b64_json)

    alone = {seed: edit(seed) for seed in (1, 2)}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        seeds = [1, 2, 1, 2, 1, 2]
        together = list(pool.map(edit, seeds))
    for seed, image in zip(seeds, together, strict=True):
        assert image.shape == (H, W, 3)
        diff = np.abs(image.astype(int) - alone[seed].astype(int)).max()
        assert diff <= 2, f"seed {seed}: max diff {diff}"
    assert not np.array_equal(alone[1], alone[2])
