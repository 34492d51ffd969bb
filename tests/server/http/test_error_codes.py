"""HTTP: every 400 carries an OpenAI ``code`` (a non-empty string, never null) and says that a
retry of the same request cannot succeed (``x-should-retry: false``), whatever layer refused it:
the body reader, the multipart or JSON parser, the protocol, the model's limits, the decoders."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import (
    AUTH,
    BOX,
    EDITS,
    IMG,
    MASK,
    H,
    Multipart,
    W,
    alpha_mask,
    edit_form,
    form,
    png,
    post_edit,
)

JSON = {**AUTH, "Content-Type": "application/json"}
DATA_URL = "data:image/png;base64,"


def _raw(ctype: str, body: bytes) -> tuple[dict, bytes]:
    return {**AUTH, "Content-Type": ctype}, body


def _mp(mp: Multipart) -> tuple[dict, bytes]:
    return mp.headers(), mp.body


MULTIPART = {
    "missing image": _mp(form({"prompt": "x"})),
    "missing prompt": _mp(edit_form(IMG, prompt=None)),
    "empty prompt": _mp(edit_form(IMG, prompt="")),
    "blank prompt": _mp(edit_form(IMG, prompt="   ")),
    "prompt too long": _mp(edit_form(IMG, prompt="x" * 32001)),
    "size 16x8": _mp(edit_form(IMG, MASK, size="16x8")),
    "size 8192x8192": _mp(edit_form(IMG, MASK, size="8192x8192")),
    "size not a size": _mp(edit_form(IMG, MASK, size="huge")),
    "size not a multiple": _mp(edit_form(IMG, MASK, size="1000x1001")),
    "n zero": _mp(edit_form(IMG, MASK, n=0)),
    "n eleven": _mp(edit_form(IMG, MASK, n=11)),
    "n a word": _mp(edit_form(IMG, MASK, n="two")),
    "quality": _mp(edit_form(IMG, MASK, quality="ultra")),
    "moderation": _mp(edit_form(IMG, MASK, moderation="bogus")),
    "stream": _mp(edit_form(IMG, MASK, stream="maybe")),
    "output gif": _mp(edit_form(IMG, MASK, output_format="gif")),
    "transparent jpeg": _mp(edit_form(IMG, MASK, background="transparent", output_format="jpeg")),
    "seed negative": _mp(edit_form(IMG, MASK, seed=-1)),
    "steps a word": _mp(edit_form(IMG, MASK, steps="many")),
    "guidance not finite": _mp(edit_form(IMG, MASK, guidance_scale="nan")),
    "non-utf8 prompt": _mp(Multipart().file("image", IMG).field("prompt", b"\xff\xfe bad")),
    "undecodable image": _mp(edit_form(b"not an image")),
    "mask size mismatch": _mp(edit_form(IMG, png(alpha_mask(W + 8, H, BOX)))),
    "empty mask": _mp(edit_form(IMG, png(np.zeros((H, W), np.uint8)))),
    "no boundary": _raw("multipart/form-data", b"--x\r\n"),
    "malformed multipart": _raw(Multipart().content_type, b"--nope\r\ngarbage"),
    "plain text": _raw("text/plain", b"prompt=hello"),
    "urlencoded": _raw("application/x-www-form-urlencoded", b"prompt=hello&n=1"),
}

JSON_BODIES = {
    "not json": b"{not json",
    "not an object": b"[1, 2]",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "images an int": b'{"prompt": "x", "images": 5}',
    "images an object": b'{"prompt": "x", "images": {"image_url": 1}}',
    "no images": b'{"prompt": "x", "images": []}',
    "missing prompt": b'{"images": [{"image_url": "' + DATA_URL.encode() + b'AAAA"}]}',
    "bad data url": b'{"prompt": "x", "images": [{"image_url": "data:image/png;base64,@@"}]}',
    "n huge": b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}",
}


async def _check(resp) -> dict:
    body = await resp.json()
    assert resp.status == 400, body
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"], err
    assert resp.headers.get("x-should-retry") == "false", dict(resp.headers)
    assert "Retry-After" not in resp.headers
    return err


@pytest.mark.parametrize("case", list(MULTIPART))
async def test_every_multipart_400_has_a_code(client, case):
    headers, body = MULTIPART[case]
    await _check(await client.post(EDITS, data=body, headers=headers))


@pytest.mark.parametrize("case", list(JSON_BODIES))
async def test_every_json_400_has_a_code(client, case):
    await _check(await client.post(EDITS, data=JSON_BODIES[case], headers=JSON))


async def test_too_many_parts_has_a_code(make_client):
    cl = await make_client(max_parts=3)
    await _check(await post_edit(cl, edit_form(IMG, MASK, n=1, user="u")))


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"prompt": None}, "missing_required_parameter"),
        ({"prompt": ""}, "empty_string"),
        ({"size": "16x8"}, "invalid_value"),
        ({"size": "8192x8192"}, "invalid_value"),
    ],
)
async def test_the_client_findings_codes(client, fields, code):
    """The 400s that had ``code: null``: the code OpenAI's clients switch on."""
    err = await _check(await post_edit(client, edit_form(IMG, MASK, **fields)))
    assert err["code"] == code
