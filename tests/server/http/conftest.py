"""Fixtures of the HTTP tests (tests/server/http/): ``client``, the default app (built-in model,
the test key) through ``make_client`` (tests/conftest.py), and the standard picture of
tests/helpers.py (``scene(W, H)`` with its red square in ``BOX``) as an array and as PNG bytes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import IMG, MASK, H, W, scene


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return scene(W, H)


@pytest.fixture(scope="module")
def img_png() -> bytes:
    return IMG


@pytest.fixture(scope="module")
def mask_png() -> bytes:
    return MASK
