"""The soak run, short: a fixed rate against a real uvicorn process (tiny ensemble), measured per bucket; and the
verdict, which must fail on memory growth, descriptor growth, p99 drift and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.soak import plot, run_soak, verdict
from tests.utils import start_server


def _bucket(i: int, rss: float, fds: int, p99: float) -> dict:
    return {
        "bucket": i,
        "t_s": 60.0 * (i + 1),
        "answers": 100,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "rss_mb": rss,
        "fds": fds,
    }


def _result(buckets: list[dict], statuses: dict | None = None) -> dict:
    return {
        "buckets": buckets,
        "statuses": statuses or {"200": 1000},
        "connection_errors": {},
        "ready_after": 200,
        "rate": 48.0,
    }


def test_the_verdict_passes_a_flat_run_and_fails_each_kind_of_drift() -> None:
    flat = [_bucket(i, 460.0 if i < 2 else 500.0 + i % 2, 30, 180.0) for i in range(14)]
    failed, figures = verdict(_result(flat))
    assert failed == [] and figures["rss_growth"] < 0.01 and figures["p99_drift"] == 1.0
    leak = [_bucket(i, 500.0 + 5 * i, 30, 180.0) for i in range(14)]
    assert any("memory grew" in f for f in verdict(_result(leak))[0])
    fds = [_bucket(i, 500.0, 30 + 2 * i, 180.0) for i in range(14)]
    assert any("descriptors" in f for f in verdict(_result(fds))[0])
    swing = [_bucket(i, 500.0, 30 + (40 if i == 13 else 0), 180.0) for i in range(14)]  # connections at the instant
    assert verdict(_result(swing))[0] == []
    slower = [_bucket(i, 500.0, 30, 180.0 + 10 * i) for i in range(14)]
    assert any("p99 drifted" in f for f in verdict(_result(slower))[0])
    assert any("other than 200" in f for f in verdict(_result(flat, {"200": 990, "504": 10}))[0])


def test_a_short_soak_measures_every_bucket(tiny_models: Path, tmp_path: Path) -> None:
    proc, url = start_server(tiny_models)
    try:
        result = asyncio.run(run_soak(url, proc.pid, seconds=6, rate=20, bucket_s=2))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert len(result["buckets"]) == 3 and result["sent"] >= 110
    assert all(b["answers"] > 0 and b["rss_mb"] > 0 and b["fds"] > 0 for b in result["buckets"])
    assert result["statuses"] == {"200": result["sent"]} and result["ready_after"] == 200
    failed, _ = verdict(result)
    assert not [f for f in failed if "other than 200" in f]
    plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 1000


def test_the_default_rate_comes_from_a_measured_burst(tiny_models: Path) -> None:
    from bench.soak import throughput

    proc, url = start_server(tiny_models)
    try:
        rps = throughput(url, seconds=2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert rps > 5  # the tiny models answer hundreds a second; errors would count as none
