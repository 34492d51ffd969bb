"""End to end: the official SDKs, openai-python and openai-node, with their default retries (2)
against the real server. A request that ends in the per-request deadline's 504 fails the same
way every time, so the SDK must send it once per call (``x-should-retry: false``), not three
times. Counted on the server side, by /metrics."""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
import openai
import pytest

from tests.e2e import node_sdk
from tests.helpers import KEY, alpha_mask, png, scene

SIZE = 256  # large enough that the built-in model cannot answer within the deadline
BOX = (96, 96, 160, 160)


@pytest.fixture(scope="module")
def served(start_server, tmp_path_factory):
    """The built-in model with a deadline no edit can meet (1 ms)."""
    models = tmp_path_factory.mktemp("models")
    return start_server(
        ["--api-key", KEY, "--models-dir", str(models), "--request-timeout", "0.001"],
        key=KEY,
        ready_s=60,
        stop_s=10,
    )


def requests_counted(base: str, status: int) -> int:
    """How many edit requests the server answered with ``status`` (its /metrics counter)."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    pattern = (
        rf'^inpaint_requests_total\{{route="/v1/images/edits",status="{status}"\}} ([0-9.e+]+)$'
    )
    found = re.search(pattern, text, re.M)
    return int(float(found.group(1))) if found else 0


def edit(client: openai.OpenAI):
    return client.images.edit(
        image=("a.png", png(scene(SIZE, SIZE, BOX)), "image/png"),
        mask=("m.png", png(alpha_mask(SIZE, SIZE, BOX)), "image/png"),
        prompt="remove the red square",
    )


def test_a_deadline_504_is_sent_once_per_sdk_call(served):
    server, _ = served
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, timeout=60)
    assert client.max_retries == 2  # the SDK's default: a retried 504 would be counted 3 times
    before = requests_counted(server.base, 504)
    with pytest.raises(openai.InternalServerError) as info:
        edit(client)
    assert info.value.status_code == 504 and "fewer images" in info.value.message
    assert requests_counted(server.base, 504) - before == 1  # 3 with the SDK's retries
    assert info.value.response.headers["x-should-retry"] == "false"
    client.close()


def test_validation_errors_are_sent_once(served):
    """400s are not retried by the SDK anyway; the header says so to any client."""
    server, _ = served
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, timeout=60)
    before = requests_counted(server.base, 400)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(
            image=("a.png", png(np.zeros((64, 64, 3), np.uint8)), "image/png"),
            prompt="x",
            extra_body={"moderation": "bogus"},
        )
    assert info.value.code == "invalid_value" and info.value.param == "moderation"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert requests_counted(server.base, 400) - before == 1
    client.close()


def test_openai_node_sends_a_deadline_504_once(served, tmp_path):
    """The same with openai-node (tests/e2e/node_sdk.py: the pinned SDK, maxRetries 2)."""
    reason = node_sdk.missing()
    if reason:
        pytest.skip(reason)
    server, _ = served
    image, mask = tmp_path / "a.png", tmp_path / "m.png"
    image.write_bytes(png(scene(SIZE, SIZE, BOX)))
    mask.write_bytes(png(alpha_mask(SIZE, SIZE, BOX)))
    before = requests_counted(server.base, 504)
    done = node_sdk.run_node("edit_once.js", server.base + "/v1", KEY, str(image), str(mask))
    raised = json.loads(done.stdout)
    assert raised["status"] == 504 and "fewer images" in raised["message"]
    assert requests_counted(server.base, 504) - before == 1  # 3 with the SDK's retries
    assert raised["should_retry"] == "false"
