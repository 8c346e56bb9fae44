"""The load test itself, short: 32 concurrent clients against a real uvicorn process (tiny ensemble)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.loadtest import cases, mri_images, run_load, verdict
from tests.utils import start_server


def test_mix_has_valid_and_invalid_uploads() -> None:
    mix = cases(mri_images())
    assert {c.expect for c in mix} == {200, 415, 422}
    assert sum(c.weight for c in mix if c.expect == 200) > sum(c.weight for c in mix if c.expect != 200)


def test_short_load_has_no_unexpected_status(tiny_models: Path) -> None:
    proc, url = start_server(tiny_models)
    try:
        result = asyncio.run(run_load(url, clients=32, total=300, pid=proc.pid, warm=100))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert result["unexpected"] == 0, result["unexpected_examples"]
    assert result["connection_errors"] == 0, result["error_examples"]
    assert result["ready_after"] == 200
    assert set(result["statuses"]) == {"200", "415", "422"}
    assert result["rss_mb_at_warm"] and result["rss_mb_end"]
    assert verdict(result, max_growth=0.5) == []
    assert verdict({**result, "unexpected": 1}, max_growth=0.5) == ["1 unexpected statuses"]
