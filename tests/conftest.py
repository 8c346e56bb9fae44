"""Fixtures shared by every test folder; the builders they use live in tests/utils.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils import MRI_FIXTURES, make_tiny_ensemble, start_server


@pytest.fixture(scope="session")
def mri_jpeg() -> bytes:
    return (MRI_FIXTURES / "Training" / "glioma_tumor" / "gg (1).jpg").read_bytes()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_models")
    make_tiny_ensemble(d)
    return d


@pytest.fixture
def models_copy(tiny_models: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy a test may damage."""
    d = tmp_path / "models"
    shutil.copytree(tiny_models, d)
    yield d


@pytest.fixture(scope="module")
def live_server(tiny_models: Path) -> Iterator[str]:
    """uvicorn in a subprocess (`python -m service`) on a free loopback port, serving the tiny ensemble."""
    proc, url = start_server(tiny_models)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
