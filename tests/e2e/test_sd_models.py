"""End to end with an exported (tiny, random-weight) SD inpainting model: the real server process,
the official OpenAI SDK, pixels checked. Also HTTP-level batching: shared UNet calls, determinism
under batching, cancellation on disconnect, and a broken model folder next to a good one."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request

import numpy as np
import openai
import pytest

from tests.helpers import alpha_mask, decode_b64, outside, png

KEY = "sk-test-sd"


def scene(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), 96 + 0 * xx], -1)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def served(start_server, tiny_model_fp32, tmp_path_factory):
    """A real server with the exported tiny model next to a broken model folder, and the SDK
    client."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_fp32, models / "tiny-sd")
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{not json")
    return start_server(
        [
            "--api-key",
            KEY,
            "--models-dir",
            str(models),
            "--provider",
            "cpu",
            "--max-batch-size",
            "8",
            "--max-wait-ms",
            "150",
        ],
        key=KEY,
        ready_s=90,
        stop_s=30,
        timeout=120,
    )


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if m and 'model="tiny-sd"' in (m.group(1) or 'model="tiny-sd"'):
            total += float(m.group(2))
    return total


def test_models_lists_exported_default_and_broken(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert ids[0] in ("tiny-sd", "opencv-telea-inpaint") and "tiny-sd" in ids
    card = next(m for m in page.data if m.id == "tiny-sd").model_dump()
    caps = card["capabilities"]
    assert card["default"] is True and caps["reads_prompt"] is True
    assert caps["sizes"]["native_side"] == 64 and card["precision"] == "fp32"
    assert "euler_a" in caps["schedulers"] and caps["streams_previews"] is True
    assert caps["parameters"]["steps"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 150,
        "default": 25,
    }
    raw = client.models.with_raw_response.list().http_response.json()
    assert [u["id"] for u in raw["unavailable"]] == ["broken"]


def test_edit_keeps_unmasked_pixels_and_changes_masked(client):
    h, w, box = 64, 96, (24, 16, 72, 48)
    img = scene(h, w)
    r = client.images.edit(
        image=("a.png", png(img), "image/png"),
        mask=("m.png", png(alpha_mask(w, h, box)), "image/png"),
        prompt="a red ball",
        extra_body={"seed": 3, "steps": 4},
    )
    out = decode_b64(r.data[0].b64_json)
    assert out.shape == (h, w, 3)
    region = ~outside((h, w), box)
    assert np.array_equal(out[~region], img[~region])
    assert np.abs(out[region].astype(int) - img[region]).mean() > 5
    assert r.usage.input_tokens_details.text_tokens == 3  # "a red ball"
    assert r.size == "96x64"


def test_same_seed_same_image_and_n_uses_consecutive_seeds(client):
    h, w, box = 64, 64, (16, 16, 48, 48)
    args = dict(
        image=("a.png", png(scene(h, w)), "image/png"),
        mask=("m.png", png(alpha_mask(w, h, box)), "image/png"),
        prompt="stone wall",
    )
    a = decode_b64(client.images.edit(**args, extra_body={"seed": 11, "steps": 3}).data[0].b64_json)
    b = decode_b64(client.images.edit(**args, extra_body={"seed": 11, "steps": 3}).data[0].b64_json)
    c = decode_b64(client.images.edit(**args, extra_body={"seed": 12, "steps": 3}).data[0].b64_json)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    many = client.images.edit(**args, n=3, extra_body={"seed": 11, "steps": 3})
    imgs = [decode_b64(d.b64_json) for d in many.data]
    assert len(imgs) == 3
    # row i of n uses seed + i; batched rows equal solo rows within one uint8 level
    assert np.abs(imgs[0].astype(int) - a).max() <= 1
    assert np.abs(imgs[1].astype(int) - c).max() <= 1
    assert not np.array_equal(imgs[1], imgs[2])


@pytest.mark.parametrize("size", ["128x64", "64x128", "256x256"])
def test_explicit_sizes(client, size):
    w, h = map(int, size.split("x"))
    img = scene(96, 96)
    r = client.images.edit(
        image=("a.png", png(img), "image/png"),
        mask=("m.png", png(alpha_mask(96, 96, (30, 30, 60, 60))), "image/png"),
        prompt="x",
        size=size,
        extra_body={"steps": 2, "seed": 1},
    )
    assert decode_b64(r.data[0].b64_json).shape == (h, w, 3)


def test_large_image_small_mask_uses_crop_rule(client):
    h = w = 1024
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    box = (600, 300, 640, 340)
    r = client.images.edit(
        image=("a.png", png(img), "image/png"),
        mask=("m.png", png(alpha_mask(w, h, box)), "image/png"),
        prompt="x",
        extra_body={"steps": 2, "seed": 1},
    )
    out = decode_b64(r.data[0].b64_json)
    region = ~outside((h, w), box)
    assert out.shape == (h, w, 3)
    assert np.array_equal(out[~region], img[~region])
    # the model ran on a crop no larger than its max work side (1.5 x native 64 = 96 px)
    assert r.usage.input_tokens_details.image_tokens <= (96 // 8) ** 2


def test_stream_partial_images_then_completed(client):
    h, w, box = 64, 64, (16, 16, 48, 48)
    stream = client.images.edit(
        image=("a.png", png(scene(h, w)), "image/png"),
        mask=("m.png", png(alpha_mask(w, h, box)), "image/png"),
        prompt="x",
        stream=True,
        partial_images=2,
        extra_body={"steps": 6, "seed": 2},
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = decode_b64(events[-1].b64_json)
    assert final.shape == (h, w, 3)
    assert events[-1].usage.total_tokens > 0


def test_stream_progress_counts_steps_over_all_images(client):
    # extension: stream_progress=true adds image_edit.progress events; the OpenAI SDK passes
    # them through (an unknown event type is constructed leniently, never an error)
    h, w, box = 64, 64, (16, 16, 48, 48)
    stream = client.images.edit(
        image=("a.png", png(scene(h, w)), "image/png"),
        mask=("m.png", png(alpha_mask(w, h, box)), "image/png"),
        prompt="x",
        n=2,
        stream=True,
        extra_body={"steps": 5, "seed": 2, "scheduler": "euler", "stream_progress": True},
    )
    events = list(stream)
    steps = [(e.steps_done, e.steps_total) for e in events if e.type == "image_edit.progress"]
    assert steps[0] == (0, 10) and steps[-1] == (10, 10)  # 5 steps x 2 images
    assert [d for d, _ in steps] == sorted(set(d for d, _ in steps))  # coalesced, increasing
    last = max(i for i, e in enumerate(events) if e.type == "image_edit.progress")
    assert [e.type for e in events[last + 1 :]] == ["image_edit.completed"] * 2


def test_extension_validation_errors(client):
    args = dict(image=("a.png", png(scene(64, 64)), "image/png"), prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(**args, extra_body={"scheduler": "nope"})
    assert info.value.body["param"] == "scheduler"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(**args, extra_body={"steps": 0})
    assert info.value.body["param"] == "steps"
    for name in ("ddim", "euler_a", "dpmpp_2m_karras"):
        r = client.images.edit(
            **args,
            extra_body={
                "scheduler": name,
                "steps": 2,
                "seed": 1,
                "guidance_scale": 3.0,
                "strength": 0.9,
            },
        )
        assert decode_b64(r.data[0].b64_json).shape == (64, 64, 3)


def test_concurrent_requests_share_unet_calls_and_stay_deterministic(client, server):
    h, w, box = 64, 64, (16, 16, 48, 48)
    args = dict(
        image=("a.png", png(scene(h, w)), "image/png"),
        mask=("m.png", png(alpha_mask(w, h, box)), "image/png"),
        prompt="brick",
    )
    sum_before = metric(server, "inpaint_batch_rows_sum")
    solo = decode_b64(
        client.images.edit(**args, extra_body={"seed": 40, "steps": 8}).data[0].b64_json
    )
    per_request = metric(server, "inpaint_batch_rows_sum") - sum_before  # PNDM: steps + 1
    assert per_request >= 8
    count_before = metric(server, "inpaint_batch_rows_count")
    sum_before = metric(server, "inpaint_batch_rows_sum")
    results: dict[int, np.ndarray] = {}

    def call(seed):
        r = client.images.edit(**args, extra_body={"seed": seed, "steps": 8})
        results[seed] = decode_b64(r.data[0].b64_json)

    threads = [threading.Thread(target=call, args=(40 + i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    calls = metric(server, "inpaint_batch_rows_count") - count_before
    rows = metric(server, "inpaint_batch_rows_sum") - sum_before
    assert len(results) == 4
    assert rows == 4 * per_request  # one row each, every step
    assert calls < rows  # UNet calls were shared
    assert np.abs(results[40].astype(int) - solo).max() <= 1


def test_client_disconnect_stops_the_work(server):
    import http.client

    h, w = 64, 64
    boundary = "b0undary"
    parts = []
    for k, v in {"prompt": "x", "steps": "150", "n": "10", "seed": "5"}.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + png(scene(h, w))
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    body = b"".join(parts)
    before = metric(server, "inpaint_denoising_steps_total")
    port = int(server.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/v1/images/edits",
        body=body,
        headers={
            "Authorization": f"Bearer {KEY}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    time.sleep(1.0)
    conn.close()  # the client goes away mid-denoising
    time.sleep(1.5)
    mid = metric(server, "inpaint_denoising_steps_total")
    time.sleep(1.5)
    after = metric(server, "inpaint_denoising_steps_total")
    assert mid - before < 150 * 10  # stopped before finishing
    assert after == mid  # and no more work happens for it
