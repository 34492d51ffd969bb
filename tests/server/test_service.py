"""The edit service without HTTP: protocol objects out, validation before queueing, metrics on
both paths. (The routes' tests cover the same behaviour through aiohttp.)"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from server.batching import Batcher
from server.errors import APIError
from server.metrics import Metrics
from server.models.capabilities import Capabilities, ModelLimits, Preset, Sampling
from server.protocol import (
    CompletedEvent,
    ImagesResponse,
    ProtocolError,
    Range,
    parse_edit_fields,
)
from server.service import EditService, Upload, Uploads
from server.storage import FileStore
from tests.helpers import FakeModel, alpha_mask, config, decode_image, png, registry, scene

W, H, BOX = 64, 48, (16, 16, 40, 32)


class SamplingFake(FakeModel):
    """A fake single-pass model that declares sampling knobs and records the rows it ran."""

    def __init__(self, name: str = "sampler") -> None:
        super().__init__(name)
        self.capabilities = Capabilities(
            limits=ModelLimits(min_side=16, max_side=2048, native_side=512, max_work_side=2048),
            reads_prompt=True,
            streams_previews=False,
            sampling=Sampling(
                steps=Range(1, 50, integer=True),
                guidance_scale=Range(0, 10),
                strength=Range(0, 1, lo_exclusive=True),
                schedulers=("ddim",),
                default_scheduler="ddim",
                default_guidance_scale=5.0,
                quality_presets={"low": Preset(4), "medium": Preset(8), "high": Preset(16)},
            ),
        )
        self.rows = []

    def run(self, rows):
        self.rows.extend(rows)
        return super().run(rows)


@pytest.fixture
async def service(tmp_path):
    sampler = SamplingFake()
    reg = registry(sampler, default="sampler")
    metrics = Metrics()
    batcher = Batcher(reg.models, max_batch_size=4, max_wait_ms=1, max_queue=8, metrics=metrics)
    store = FileStore(tmp_path / "files", 3600)
    svc = EditService(config(), reg, batcher, store, metrics)
    yield svc
    batcher.stop(5)
    store.close()


def request(**fields):
    return parse_edit_fields({"prompt": "a cat", **{k: str(v) for k, v in fields.items()}})


UPLOADS = Uploads([Upload("image", png(scene(W, H)))], Upload("mask", png(alpha_mask(W, H, BOX))))


async def test_edit_returns_an_images_response(service):
    out = await service.edit(request(n=2, quality="low"), UPLOADS, "http://x")
    assert isinstance(out, ImagesResponse)
    assert len(out.data) == 2 and out.size == f"{W}x{H}" and out.quality == "low"
    img, fmt = decode_image(base64.b64decode(out.data[0].b64_json))
    assert fmt == "PNG" and img.shape == (H, W, 3)
    keep = np.ones((H, W), bool)
    x0, y0, x1, y1 = BOX
    keep[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = False
    assert np.array_equal(img[keep], scene(W, H)[keep])  # outside the region: bit-exact
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens


async def test_rows_carry_the_resolved_settings(service):
    sampler = service.registry.models["sampler"]
    await service.edit(request(quality="high", seed=7, n=2), UPLOADS, "http://x")
    assert [(r.steps, r.guidance_scale, r.strength, r.seed) for r in sampler.rows] == [
        (16, 5.0, 1.0, 7),
        (16, 5.0, 1.0, 8),
    ]


async def test_bad_values_are_refused_before_anything_is_queued(service):
    sampler = service.registry.models["sampler"]
    for fields, param in (
        ({"steps": 51}, "steps"),
        ({"guidance_scale": 11}, "guidance_scale"),
        ({"strength": 0}, "strength"),
        ({"scheduler": "euler"}, "scheduler"),
        ({"size": "4096x4096"}, "size"),
    ):
        with pytest.raises(ProtocolError) as info:
            await service.edit(request(**fields), UPLOADS, "http://x")
        assert info.value.param == param
    assert sampler.calls == 0


async def test_unknown_model_is_a_404_with_a_truncated_name(service):
    with pytest.raises(APIError) as info:
        await service.edit(request(model="m" * 5000), UPLOADS, "http://x")
    assert (info.value.status, info.value.code, info.value.param) == (
        404,
        "model_not_found",
        "model",
    )
    assert len(info.value.message) < 300


async def test_url_responses_are_stored(service):
    out = await service.edit(request(response_format="url"), UPLOADS, "http://host:1")
    url = out.data[0].url
    assert url.startswith("http://host:1/v1/images/files/") and out.data[0].b64_json is None
    found = service.store.open(url.rsplit("/", 1)[1])
    assert found is not None


async def test_stream_yields_protocol_events_and_records_latency(service):
    before = service.metrics.registry.get_sample_value(
        "inpaint_request_latency_seconds_count", {"model": "sampler"}
    )
    events = [e async for e in service.stream(request(stream="true", n=2), UPLOADS)]
    assert [type(e) for e in events] == [CompletedEvent, CompletedEvent]
    assert all(e.type == "image_edit.completed" and e.size == f"{W}x{H}" for e in events)
    after = service.metrics.registry.get_sample_value(
        "inpaint_request_latency_seconds_count", {"model": "sampler"}
    )
    assert after == (before or 0) + 1


async def test_json_path_records_latency(service):
    await service.edit(request(), UPLOADS, "http://x")
    count = service.metrics.registry.get_sample_value(
        "inpaint_request_latency_seconds_count", {"model": "sampler"}
    )
    assert count == 1


async def test_single_pass_models_ignore_sampling_fields(service):
    out = await service.edit(
        request(model="opencv-telea-inpaint", steps=1000, strength=5), UPLOADS, "http://x"
    )
    assert len(out.data) == 1


def test_compositing_the_work_box_equals_compositing_the_canvas():
    """service/encode.compose composites only the work box: the crop rule leaves enough kept
    context around the edit region that the seam feather never reaches the box's edge."""
    from server import imaging

    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(100, 400, 2))
        edit = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(2, 40))
            edit[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = 1
        x0, y0, x1, y1 = imaging.plan_work_region(
            edit, native_side=64, max_work_side=96, multiple=8
        ).box
        canvas = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        patch = rng.integers(0, 255, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
        full = canvas.copy()
        full[y0:y1, x0:x1] = patch
        boxed = canvas.copy()
        boxed[y0:y1, x0:x1] = imaging.composite(
            canvas[y0:y1, x0:x1].copy(), patch, edit[y0:y1, x0:x1]
        )
        assert np.array_equal(imaging.composite(canvas, full, edit), boxed)
