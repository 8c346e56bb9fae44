"""The malloc arena cap of `python -m service` (service/api/memory.py)."""

from __future__ import annotations

import platform

import pytest

from service.api.memory import limit_malloc_arenas
from service.config import Settings


def test_the_cap_is_left_alone_when_off_or_when_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limit_malloc_arenas(0) is False
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_on_glibc_the_default_setting_caps_the_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert Settings().malloc_arenas == 2 and limit_malloc_arenas(Settings().malloc_arenas) is True
