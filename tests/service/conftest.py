"""Fixtures of the service tests (their helpers: tests/service/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import make_client


@pytest.fixture
def client(tiny_models: Path) -> Iterator[TestClient]:
    with make_client(tiny_models) as c:
        yield c
