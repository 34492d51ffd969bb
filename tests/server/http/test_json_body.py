"""The JSON edit body (issue 28): data URLs cut out under a per-parse token and used once, every
decoded byte bounded by the body and reserved in the memory budget, the structure bounded
before ``json.loads`` (a body of a million entries costs no more than a bounded one, and
``/health`` keeps answering), references (``file_id``, image URLs) kept in order and resolved
with the image cap and the budget."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import tracemalloc

import numpy as np
import pytest

from server.config import Limits
from server.errors import APIError
from server.http.forms import Reference, parse_json
from server.http.jsonscan import scan_json
from server.http.references import resolve_references
from server.service import Upload
from server.service.admission import MemoryBudget
from tests.helpers import AUTH, EDITS, IMG, MASK, b64_image, expect_error, png

LIMITS = Limits()
JSON = {**AUTH, "Content-Type": "application/json"}


def url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def refused(body: bytes | str, limits: Limits = LIMITS, reservation=None) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_json(body.encode() if isinstance(body, str) else body, limits, reservation)
    assert caught.value.status == 400
    return caught.value


# ------------------------------------------------------------------ no amplification


def amplifying_body(copies: int, size: int = 300_000) -> bytes:
    """One real data URL, then ``copies`` strings that the old parser read as references to
    it: the placeholder it used, with the comma escaped so that it was not cut itself."""
    first = json.dumps({"image_url": url(b"\x89PNG" + b"x" * size)})
    forged = ',{"image_url": "data:;cut\\u002c0"}' * copies
    return f'{{"prompt": "x", "images": [{first}{forged}]}}'.encode()


def test_an_escaped_comma_cannot_repeat_an_upload():
    body = amplifying_body(15)
    err = refused(body)
    assert err.param == "images" and err.code == "invalid_image_file"


async def test_an_escaped_comma_cannot_repeat_an_upload_over_http(client):
    resp = await client.post(EDITS, data=amplifying_body(15), headers=JSON)
    await expect_error(resp, 400, code="invalid_image_file", param="images")


def test_a_placeholder_cannot_be_forged_or_used_twice():
    text = scan_json(b'{"a": "data:image/png;base64,AAAA"}', LIMITS)
    placeholder = f"data:;cut-{text.token},0"
    assert placeholder.encode() in text.text
    assert b"AAAA" not in text.text  # cut out: json.loads never copies a payload
    assert text.take(f"data:;cut-{'0' * 32},0") is None  # another token
    assert bytes(text.take(placeholder).payload) == b"AAAA"
    assert text.take(placeholder) is None  # once only
    # a client writing this parse's own placeholder (escaped, so not cut) still cannot name it
    for guess in ("data:;cut-0\\u002c0", "data:;cut\\u002c0", "data:\\u003bcut,0"):
        refused(f'{{"prompt": "x", "images": ["{url(IMG)}", "{guess}"]}}')


def test_every_decoded_byte_is_a_distinct_body_byte_and_reserved():
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), np.uint8) for i in range(3)]
    files = [png(a) for a in images]
    body = json.dumps(
        {"prompt": "x", "images": [{"image_url": url(f)} for f in files[:2]], "mask": url(files[2])}
    ).encode()
    budget = MemoryBudget(1 << 30)
    reservation = budget.reservation()
    out = parse_json(body, LIMITS, reservation)
    assert [u.data for u in out.images] == files[:2] and out.mask.data == files[2]
    decoded = sum(len(f) for f in files)
    assert decoded <= len(body)
    assert decoded <= reservation.held == budget.used <= decoded + 3 * 2  # base64 rounding


def test_decoding_past_the_budget_is_a_429():
    body = json.dumps({"prompt": "x", "images": [url(b"x" * 300_000)]}).encode()
    reservation = MemoryBudget(100_000).reservation()
    with pytest.raises(APIError) as caught:
        parse_json(body, LIMITS, reservation)
    assert caught.value.status == 429 and reservation.held == 0


# ------------------------------------------------------------------ structure bounded first


def entries(n: int, entry: str) -> bytes:
    return ('{"prompt": "x", "images": [' + (entry + ",") * n + entry + "]}").encode()


HOSTILE = {
    "1.5M tiny image entries": entries(1_500_000, '{"image_url":"data:,"}'),
    "1M tiny objects": b'{"prompt": "x", "pad": [' + b'{"a":1},' * 1_000_000 + b"1]}",
    "1M nested arrays": b'{"prompt": "x", "pad": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}",
    "1M strings": b'{"prompt": "x", "pad": [' + b'"a",' * 1_000_000 + b'"a"]}',
    "1M escaped quotes": b'{"prompt": "' + b'\\"' * 1_000_000 + b'"}',
    "20 MB number": b'{"prompt": "x", "n": ' + b"1" * 20_000_000 + b"}",
    "20 MB text field": b'{"prompt": "' + b"a" * 20_000_000 + b'"}',
    "20 MB whitespace": b'{"prompt": "x",'
    + b" " * 20_000_000
    + b'"n": 1, "pad": ['
    + b"1," * 9000
    + b"1]}",
    "unterminated 20 MB string": b'{"prompt": "x", "pad": "' + b"a" * 20_000_000,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_structure_costs_no_more_than_a_bounded_body(name):
    """Refused at the first bound passed: what the parse allocates stays far below the body
    (the old parser built one object per entry: ~1 GB for 1.5 M entries)."""
    body = HOSTILE[name]
    tracemalloc.start()
    try:
        err = refused(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.code in ("invalid_value", "string_above_max_length"), err.message
    assert peak < 2 * 2**20, f"{name}: {peak / 2**20:.1f} MiB allocated"


def test_depth_and_key_bounds():
    nested = {"prompt": "x", "images": [url(IMG)], "pad": 0}
    deep = "[" * 14 + "]" * 14
    assert parse_json(json.dumps({**nested, "pad": json.loads(deep)}).encode(), LIMITS)
    err = refused(json.dumps({**nested, "pad": json.loads("[" * 17 + "]" * 17)}))
    assert "nesting" in err.message
    err = refused(json.dumps({**nested, **{f"k{i}": 1 for i in range(100)}}))
    assert "keys" in err.message and err.param is None


def test_what_is_not_json_stays_refused():
    for body in ('{"prompt": "x", "n": 1 0}', '{"prompt": "x"', '{"prompt": "x}', "[1]", "{} {}"):
        err = refused(body)
        assert err.code == "invalid_value" and err.param is None, body


def test_a_too_long_field_is_refused_by_name_before_parsing():
    err = refused(json.dumps({"prompt": "x", "negative_prompt": "é" * 2_000_000}))
    assert err.param == "negative_prompt" and err.code == "string_above_max_length"


async def test_health_answers_while_a_hostile_json_body_is_refused(client):
    """The red team's body (1.5 M tiny image entries, ~35 MB) while /health is polled on the
    same server: each answer within a bound that holds on a busy 2-core machine."""
    body = HOSTILE["1.5M tiny image entries"]
    task = asyncio.ensure_future(client.post(EDITS, data=body, headers=JSON))
    worst, polls = 0.0, 0
    while not task.done():
        t0 = time.perf_counter()
        assert (await client.get("/health")).status == 200
        worst = max(worst, time.perf_counter() - t0)
        polls += 1
        await asyncio.sleep(0.01)
    err = await expect_error(await task, 400, code="invalid_value", param=None)
    assert "too many" in err["message"]
    assert polls >= 1 and worst < 1.0, worst


# ------------------------------------------------------------------ what the JSON says


def test_texts_and_urls_that_look_like_data_urls_are_kept():
    prompt = 'data: a, b "data:x,y" \\ end'
    doc = {"prompt": prompt, "user": "data:,", "images": [url(IMG)]}
    out = parse_json(json.dumps(doc).encode(), LIMITS)
    assert out.fields["prompt"] == prompt and out.fields["user"] == "data:,"
    assert out.images[0].data == IMG


def test_escaped_slashes_in_a_data_url_decode():
    """PHP's json_encode writes ``\\/`` for every ``/``, base64's included."""
    body = json.dumps({"prompt": "x", "images": [url(IMG)]}).replace("/", "\\/").encode()
    assert b"\\/" in body
    assert parse_json(body, LIMITS).images[0].data == IMG


def test_references_are_kept_in_order():
    doc = {
        "prompt": "x",
        "images": [
            {"image_url": url(IMG)},
            {"file_id": "file-abc"},
            {"image_url": "https://images.example.com/a.png"},
            {"image_url": {"url": "HTTP://images.example.com/b.png"}},
            url(MASK),
        ],
        "mask": {"file_id": "file-mask"},
        "markup": {"image_url": "http://example.com/m.png"},
    }
    out = parse_json(json.dumps(doc).encode(), LIMITS)
    assert out.images == [
        Upload("image", IMG),
        Reference("image", "file_id", "file-abc"),
        Reference("image", "url", "https://images.example.com/a.png"),
        Reference("image", "url", "HTTP://images.example.com/b.png"),
        Upload("image", MASK),
    ]
    assert out.mask == Reference("mask", "file_id", "file-mask")
    assert out.markup == Reference("markup", "url", "http://example.com/m.png")


@pytest.mark.parametrize(
    ("entry", "param"),
    [
        ({"image_url": 5}, "images"),
        ({"file_id": ""}, "images"),
        ({"file_id": 7}, "images"),
        ({"url": "https://example.com/a.png"}, "images"),
        ({"image_url": "ftp://example.com/a.png"}, "images"),
        ({"image_url": url(IMG), "file_id": "file-a"}, "images"),
        ("file:///etc/passwd", "images"),
    ],
)
def test_malformed_references_are_400s(entry, param):
    err = refused(json.dumps({"prompt": "x", "images": [entry]}))
    assert (err.param, err.code) == (param, "invalid_value")
    err = refused(json.dumps({"prompt": "x", "images": [url(IMG)], "mask": entry}))
    assert (err.param, err.code) == ("mask", "invalid_value")


# ------------------------------------------------------------------ resolving references


class Files:
    """The files service's reference interface, in miniature: one owner's files."""

    def __init__(self, owner: str, files: dict[str, bytes]) -> None:
        self.owner, self.files, self.calls = owner, files, []

    async def read_for_reference(self, owner, file_id, param, max_bytes):
        self.calls.append((owner, file_id, param, max_bytes))
        data = self.files.get(file_id) if owner == self.owner else None
        if data is None:
            raise APIError(400, "no such file", code="invalid_file_id", param=param)
        if len(data) > max_bytes:
            raise APIError(400, "too large", code="image_too_large", param=param)
        return data


def refs_body(*images, mask=None) -> object:
    doc = {"prompt": "x", "images": list(images)}
    if mask is not None:
        doc["mask"] = mask
    return parse_json(json.dumps(doc).encode(), LIMITS)


async def test_file_references_become_uploads_and_only_their_bytes_stay_reserved():
    body = refs_body(url(IMG), {"file_id": "file-a"}, mask={"file_id": "file-m"})
    budget = MemoryBudget(1 << 30)
    reservation = budget.reservation()
    files = Files("key-1", {"file-a": b"A" * 1000, "file-m": MASK})
    await resolve_references(
        body, owner="key-1", files=files, fetcher=None, limits=LIMITS, reservation=reservation
    )
    assert body.images == [Upload("image", IMG), Upload("image", b"A" * 1000)]
    assert body.mask == Upload("mask", MASK)
    assert [c[:3] for c in files.calls] == [
        ("key-1", "file-a", "image"),
        ("key-1", "file-m", "mask"),
    ]
    assert all(c[3] == LIMITS.max_image_bytes for c in files.calls)
    assert reservation.held == budget.used == 1000 + len(MASK)


async def test_a_file_reference_is_reserved_at_the_cap_before_it_is_read():
    body = refs_body({"file_id": "file-a"})
    reservation = MemoryBudget(LIMITS.max_image_bytes - 1).reservation()
    files = Files("k", {"file-a": b"A"})
    with pytest.raises(APIError) as caught:
        await resolve_references(
            body, owner="k", files=files, fetcher=None, limits=LIMITS, reservation=reservation
        )
    assert caught.value.status == 429 and files.calls == [] and reservation.held == 0


async def test_another_owners_file_and_missing_services_are_400s():
    budget = MemoryBudget(1 << 30)
    files = Files("key-1", {"file-a": IMG})
    body = refs_body({"file_id": "file-a"})
    with pytest.raises(APIError) as caught:
        await resolve_references(
            body,
            owner="key-2",
            files=files,
            fetcher=None,
            limits=LIMITS,
            reservation=budget.reservation(),
        )
    assert (caught.value.status, caught.value.code) == (400, "invalid_file_id")
    assert budget.used == 0  # the cap reserved for it was given back
    for ref, needs in (
        ({"file_id": "file-a"}, "/v1/files"),
        ({"image_url": "https://a.b/c"}, "--image-url-allow"),
    ):
        with pytest.raises(APIError) as caught:
            await resolve_references(
                refs_body(ref),
                owner="k",
                files=None,
                fetcher=None,
                limits=LIMITS,
                reservation=budget.reservation(),
            )
        assert (caught.value.status, caught.value.param, caught.value.code) == (
            400,
            "image",
            "invalid_value",
        )
        assert needs in caught.value.message


async def test_an_image_url_is_refused_when_the_operator_has_not_enabled_them(client):
    doc = {"prompt": "x", "images": [{"image_url": "http://127.0.0.1:9/a.png"}]}
    resp = await client.post(EDITS, json=doc, headers=AUTH)
    body = await expect_error(resp, 400, code="invalid_value", param="image")
    assert "--image-url-allow" in body["message"]


async def test_a_file_id_edit_equals_the_data_url_edit(client):
    """With the real files service: upload the image and the mask, name them by id."""
    ids = []
    for data in (IMG, MASK):
        from aiohttp import FormData

        form = FormData()
        form.add_field("purpose", "vision")
        form.add_field("file", data, filename="a.png", content_type="image/png")
        resp = await client.post("/v1/files", data=form, headers=AUTH)
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["id"])
    common = {"prompt": "x", "seed": 1}
    by_id = {**common, "images": [{"file_id": ids[0]}], "mask": {"file_id": ids[1]}}
    by_url = {**common, "images": [{"image_url": url(IMG)}], "mask": {"image_url": url(MASK)}}
    answers = []
    for doc in (by_id, by_url):
        resp = await client.post(EDITS, json=doc, headers=AUTH)
        assert resp.status == 200, await resp.text()
        answers.append(b64_image((await resp.json())["data"][0]))
    assert np.array_equal(*answers)
    resp = await client.post(
        EDITS, json={**common, "images": [{"file_id": "file-nope"}]}, headers=AUTH
    )
    await expect_error(resp, 400, code="invalid_file_id", param="image")


# ------------------------------------------------------------------ multipart copies, counted too


def test_multipart_file_copies_are_reserved():
    from server.http.forms import parse_multipart
    from tests.helpers import edit_form

    mp = edit_form(IMG, MASK)
    budget = MemoryBudget(1 << 30)
    reservation = budget.reservation()
    out = parse_multipart(mp.body, mp.BOUNDARY, LIMITS, reservation)
    assert out.images[0].data == IMG and out.mask.data == MASK
    assert reservation.held == budget.used == len(IMG) + len(MASK)
    with pytest.raises(APIError) as caught:
        parse_multipart(mp.body, mp.BOUNDARY, LIMITS, MemoryBudget(len(IMG)).reservation())
    assert caught.value.status == 429
