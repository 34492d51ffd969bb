"""End to end with one-shot networks (LaMa / MI-GAN style, random weights, built and brought in
locally): the real server process, the official OpenAI SDK, pixels checked.

Models served (all through ``python -m export --kind one-shot``):
- ``lama``: a LaMa-style network (Fourier convolutions) saved as TorchScript like IOPaint's
  big-lama.pt and exported with ``--torch``: dynamic size and batch (rows share calls);
  alias ``removal`` (the server's default through ``--default-model removal``);
- ``lama512``: the same graph pinned to 1x3x512x512 like IOPaint's big-lama ONNX, imported with
  ``--onnx``: the crop rule feeds it 512x512 at most, one row per call;
- ``migan``: a MI-GAN-style generator state dict exported inside MI-GAN's uint8 pipeline
  (mask 255 = keep, 0 = hole: the server inverts OpenAI's convention for it).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.request

import numpy as np
import pytest

from server import imaging
from tests import artifacts
from tests.helpers import alpha_mask, bw_mask, decode_b64, outside, png

torch = pytest.importorskip("torch")

KEY = "sk-test-oneshot"


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a red box and a little noise (outside pixels must survive)."""
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), 96 + 0 * xx], -1)
    img = img + np.random.default_rng(seed).integers(0, 8, (h, w, 1))
    img[h // 3 : h // 2, w // 3 : w // 2] = (255, 0, 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def get_json(base: str, path: str) -> dict:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {KEY}"})
    return json.loads(urllib.request.urlopen(req).read())


def batch_rows(base: str, model: str) -> tuple[float, float]:
    """(sum, count) of the inpaint_batch_rows histogram for ``model``."""
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    found = {}
    for suffix in ("sum", "count"):
        m = re.search(
            rf'^inpaint_batch_rows_{suffix}\{{model="{model}"\}} ([0-9.e+]+)$', text, re.M
        )
        found[suffix] = float(m.group(1)) if m else 0.0
    return found["sum"], found["count"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The three models (exported once per source version: the test-model cache) copied into
    one models folder; the PyTorch references built here."""
    from export import lama_like, migan_like

    torch.set_num_threads(2)
    src = artifacts.oneshot_sources(lama_seed=3, migan_seed=4)
    lama_pt, migan_pt = src / "big-lama-tiny.pt", src / "migan-tiny.pt"
    one_shot = ["--kind", "one-shot"]
    lama = artifacts.export(
        "--torch", lama_pt, "--signature", "lama", "--alias", "removal", *one_shot, folder="lama"
    )
    migan = artifacts.export("--torch", migan_pt, "--signature", "migan", *one_shot, folder="migan")
    fixed = artifacts.artifact(_pinned, graph=str(lama / "inpainter" / "model.onnx"), side=512)
    lama512 = artifacts.export("--onnx", fixed, "--signature", "lama", *one_shot, folder="lama512")
    models = tmp_path_factory.mktemp("oneshot-models")
    for folder in (lama, migan, lama512):
        shutil.copytree(folder, models / folder.name)
    return {
        "models": models,
        "lama": lama_like.build("tiny", seed=3),
        "migan": migan_like.build("tiny", seed=4),
    }


def _pinned(out, graph: str, side: int):
    """``graph`` pinned to 1x3x``side``x``side`` like IOPaint's big-lama ONNX (an artifact)."""
    import onnx

    model = onnx.load(graph)
    for value in list(model.graph.input) + list(model.graph.output):
        for dim, size in zip(value.type.tensor_type.shape.dim, [1, None, side, side], strict=True):
            if size is not None:
                dim.Clear()
                dim.dim_value = size
    onnx.save_model(model, str(out / f"big-lama-{side}.onnx"))
    return out / f"big-lama-{side}.onnx"


@pytest.fixture(scope="module")
def served(start_server, built):
    args = ["--api-key", KEY, "--models-dir", str(built["models"]), "--provider", "cpu"]
    args += ["--default-model", "removal", "--max-batch-size", "4", "--max-wait-ms", "400"]
    return start_server(args, key=KEY, ready_s=90, stop_s=30, timeout=120)


def edit(client, img, mask, **kw):
    kw.setdefault("prompt", "remove the red box")
    return client.images.edit(
        image=("a.png", png(img), "image/png"), mask=("m.png", png(mask), "image/png"), **kw
    )


def expected(generated: np.ndarray, original: np.ndarray, edit_region: np.ndarray) -> np.ndarray:
    """What serving makes of a work-size result that is the whole image: the composite."""
    return imaging.composite(original, generated, edit_region.astype(np.float32))


# ---------------------------------------------------------------------------- listing


def test_models_list_one_shot_cards(client, server):
    ids = [m.id for m in client.models.list().data]
    assert {"lama", "lama512", "migan"} <= set(ids)
    cards = {c["id"]: c for c in get_json(server, "/v1/models")["data"]}
    lama = cards["lama"]
    assert lama["kind"] == "one-shot" and lama["signature"] == "lama" and lama["default"]
    assert lama["capabilities"]["reads_prompt"] is False
    assert "parameters" not in lama["capabilities"]  # no sampling knobs
    assert lama["precision"] == "fp32" and lama["provider"]["name"] == "cpu"
    assert cards["lama512"]["capabilities"]["sizes"]["max_work_side"] == 512
    assert cards["migan"]["signature"] == "migan" and cards["migan"]["input_size"] == "dynamic"
    assert get_json(server, "/v1/models/removal")["id"] == "lama"  # the alias resolves


# ---------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("kind", ["alpha", "bw"])
def test_masks_keep_outside_pixels_and_match_pytorch(client, built, kind):
    h, w, box = 192, 256, (80, 60, 140, 110)
    img = scene(h, w)
    mask = alpha_mask(w, h, box) if kind == "alpha" else bw_mask(w, h, box)
    r = edit(client, img, mask)  # default model: lama, through the alias
    out = decode_b64(r.data[0].b64_json)
    inside = ~outside((h, w), box)
    assert out.shape == (h, w, 3) and r.size == "256x192"
    assert np.array_equal(out[~inside], img[~inside])  # bit-exact outside the edit region
    assert np.abs(out[inside].astype(int) - img[inside]).mean() > 10  # the red box was filled
    # parity: the PyTorch network on the same (whole-image) work crop, composited
    with torch.no_grad():
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        m = torch.from_numpy(inside.astype(np.float32))[None, None]
        y = built["lama"](t, m)[0].permute(1, 2, 0).numpy()
    generated = np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected(generated, img, inside)).max() <= 1
    assert r.usage.input_tokens_details.text_tokens == 0  # the prompt is not read


def test_migan_inverted_mask_and_parity(client, built):
    h, w, box = 64, 96, (30, 20, 60, 44)
    img = scene(h, w, seed=1)
    r = edit(client, img, alpha_mask(w, h, box), model="migan")
    out = decode_b64(r.data[0].b64_json)
    inside = ~outside((h, w), box)
    assert np.array_equal(out[~inside], img[~inside])
    with torch.no_grad():
        keep = torch.from_numpy(np.where(inside, 0, 255).astype(np.uint8))[None, None]
        y = built["migan"](torch.from_numpy(img).permute(2, 0, 1)[None], keep)
    generated = y[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - expected(generated, img, inside)).max() <= 1


def test_n_and_size_and_prompt_ignored(client):
    h, w, box = 192, 256, (80, 60, 140, 110)
    img, mask = scene(h, w), alpha_mask(w, h, box)
    r = edit(client, img, mask, model="lama", n=2, size="128x96")
    a, b = (decode_b64(d.b64_json) for d in r.data)
    assert a.shape == (96, 128, 3) and np.array_equal(a, b)  # deterministic: seeds do not matter
    c = decode_b64(
        edit(client, img, mask, model="lama", prompt="a cat", size="128x96").data[0].b64_json
    )
    assert np.array_equal(a, c)


def test_large_photo_small_mask_costs_one_512_pass(client):
    h, w, box = 1536, 2048, (1200, 700, 1260, 740)
    img = scene(h, w, seed=2)
    for model in ("lama512", "lama"):
        r = edit(client, img, alpha_mask(w, h, box), model=model)
        out = decode_b64(r.data[0].b64_json)
        inside = ~outside((h, w), box)
        assert out.shape == (h, w, 3) and r.size == "2048x1536"
        assert np.array_equal(out[~inside], img[~inside])
        # the network saw a 512x512 crop: (512 / 8)^2 image tokens, as a 512x512 edit costs
        assert r.usage.input_tokens_details.image_tokens == (512 // 8) ** 2, model


# ---------------------------------------------------------------------------- batching


def test_concurrent_requests_share_calls_and_equal_solo_results(client, server):
    h, w = 128, 128
    boxes = [(20 + 8 * i, 30, 60 + 8 * i, 70) for i in range(4)]
    imgs = [scene(h, w, seed=10 + i) for i in range(4)]
    solo = [decode_b64(edit(client, imgs[i], alpha_mask(w, h, boxes[i]), model="lama")
                   .data[0].b64_json) for i in range(4)]  # fmt: skip
    before = batch_rows(server, "lama")
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(4)

    def send(i):
        start.wait()
        r = edit(client, imgs[i], alpha_mask(w, h, boxes[i]), model="lama")
        results[i] = decode_b64(r.data[0].b64_json)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = batch_rows(server, "lama")
    rows, calls = after[0] - before[0], after[1] - before[1]
    assert rows == 4 and calls < 4, (rows, calls)  # some rows shared a model call
    for i in range(4):  # a row's result does not depend on its company
        assert np.abs(results[i].astype(int) - solo[i]).max() <= 1
