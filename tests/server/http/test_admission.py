"""Admission control: a memory budget for the images in flight (429 + Retry-After over it, never
a spike), pixel-weighted charges in the model queue, a bounded executor."""

from __future__ import annotations

import asyncio

import numpy as np

from server.http.state import BUDGET, EXECUTOR
from server.service.admission import edit_bytes
from tests.helpers import (
    IMG,
    MASK,
    FakeModel,
    alpha_mask,
    edit_form,
    edit_ok,
    expect_error,
    png,
    post_edit,
    registry,
)


def big(side: int) -> tuple[bytes, bytes]:
    img = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    return png(img), png(alpha_mask(side, side, (side // 4, side // 4, side // 2, side // 2)))


async def test_over_the_memory_budget_is_a_quick_429(make_client):
    """A request that needs more than the whole budget would be refused by an idle server too:
    a 429 that says so, with ``x-should-retry: false`` (no SDK retry) and no Retry-After."""
    cl = await make_client(memory_budget_mb=4)
    image, mask = big(512)  # ~512*512*(20 + 40 + 8) bytes = 17 MB estimated
    assert edit_bytes(512 * 512, 512 * 512, 1) > 4 * 2**20
    resp = await post_edit(cl, edit_form(image, mask))
    err = await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert "whole budget" in err["message"] and "--memory-budget-mb" in err["message"]
    assert resp.headers["x-should-retry"] == "false" and "Retry-After" not in resp.headers
    await edit_ok(cl, edit_form(IMG, MASK))  # small requests still pass
    assert cl.app[BUDGET].used == 0  # every reservation was released


async def test_concurrent_requests_share_the_budget(make_client):
    slow = FakeModel("slow", delay=1.0)
    image, mask = big(256)
    need = edit_bytes(256 * 256, 256 * 256, 1)
    cl = await make_client(reg=registry(slow, default="slow"), memory_budget_mb=need * 1.5 / 2**20)
    first = asyncio.ensure_future(post_edit(cl, edit_form(image, mask)))
    await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 5)
    assert cl.app[BUDGET].used >= need  # the first holds its share while its model runs
    second = await post_edit(cl, edit_form(image, mask))
    await expect_error(
        second, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert int(second.headers["Retry-After"]) >= 1  # busy now: waiting helps
    assert second.headers.get("x-should-retry") != "false"
    assert (await first).status == 200
    assert cl.app[BUDGET].used == 0
    assert (await post_edit(cl, edit_form(image, mask))).status == 200


async def test_errors_release_their_reservation(make_client):
    cl = await make_client(memory_budget_mb=64)
    for mp in (
        edit_form(IMG, png(alpha_mask(10, 10, (0, 0, 5, 5)))),  # mask size mismatch
        edit_form(b"not an image", MASK),
        edit_form(IMG, MASK, model="nope"),
    ):
        assert (await post_edit(cl, mp)).status in (400, 404)
    assert cl.app[BUDGET].used == 0


async def test_queue_is_charged_by_pixels_not_requests(make_client):
    fake = FakeModel("fake")  # native side 512: a 1024x1024 row costs 4 native rows
    cl = await make_client(reg=registry(fake, default="fake"), max_queue=4)
    image, mask = big(1024)
    resp = await post_edit(cl, edit_form(image, mask, n=2))
    await expect_error(
        resp, 429, type="rate_limit_exceeded", code="rate_limit_exceeded", param=None
    )
    assert fake.calls == 0
    assert (await post_edit(cl, edit_form(image, mask, n=1))).status == 200
    assert (await post_edit(cl, edit_form(IMG, MASK, n=4))).status == 200


async def test_request_threads_are_bounded_by_configuration(make_client):
    cl = await make_client(request_threads=3)
    assert cl.app[EXECUTOR]._max_workers == 3


def test_the_allocator_is_told_to_return_freed_memory():
    from server.service.admission import return_freed_memory

    assert return_freed_memory() is True  # glibc (Debian): large blocks come from mmap
