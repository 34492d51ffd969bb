"""A fast slice of the fuzz campaign (tests/fuzz/): 60 malformed requests from every category of
the corpus, sent as raw bytes to the app on a loopback socket. No 5xx, no hang, exact statuses
where the corpus names them, OpenAI error bodies, the key never echoed, /health OK after.
The full campaign (~680 cases + schemathesis against the real server process) is ``make fuzz``."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.fuzz.client import send
from tests.fuzz.corpus import build_corpus, fast_subset
from tests.helpers import KEY

SUBSET = fast_subset(build_corpus(), 60)


@pytest.fixture
async def port(make_client):
    client = await make_client()  # the app on 127.0.0.1, a free port
    return client.port


def test_subset_spans_every_category():
    cats = Counter(c.category for c in SUBSET)
    assert len(SUBSET) == 60
    assert set(cats) == {c.category for c in build_corpus()}


async def test_corpus_subset_no_5xx_no_hang(port):
    problems = []
    statuses = Counter()
    for case in SUBSET:
        try:
            ans = await send(case, port, auth=f"Bearer {KEY}", timeout_s=10)
        except asyncio.TimeoutError:
            problems.append(f"{case.name}: no answer in 10 s")
            continue
        statuses[ans.status] += 1
        if not 200 <= ans.status < 500:
            problems.append(f"{case.name}: status {ans.status}")
        elif case.expect is not None and ans.status not in case.expect:
            problems.append(f"{case.name}: status {ans.status}, expected {sorted(case.expect)}")
        if KEY.encode() in ans.body:
            problems.append(f"{case.name}: the key is in the response")
        if 400 <= ans.status < 500 and case.method != "HEAD" and ans.status != 431:
            # every error the app itself writes is OpenAI-shaped (aiohttp's own HTTP parser
            # answers a few unparseable requests before the app sees them)
            if ans.headers.get("content-type", "").startswith("application/json"):
                assert ans.is_openai_error(), (case.name, ans.body[:300])
    assert not problems, problems
    assert statuses[200] > 5 and statuses[400] > 10, statuses
    health = await send(SUBSET[0].__class__("health", "x", method="GET", path="/health"), port)
    assert health.status == 200
