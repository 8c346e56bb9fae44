"""`make burst`'s judge: each way a burst can go wrong fails it."""

from __future__ import annotations

from bench.burst import summarise, verdict


def _answers(ok: int = 10, refused: int = 20, ok_s: float = 1.0, refused_s: float = 0.2) -> list[dict]:
    return [{"outcome": "200", "seconds": ok_s}] * ok + [
        {"outcome": "503", "seconds": refused_s, "retry_after": "1"}
    ] * refused


def test_a_burst_of_200s_and_prompt_503s_with_the_server_ready_after_passes() -> None:
    summary = summarise(_answers(), wall=1.5, ready_s=0.01)
    assert verdict(summary) == []
    assert summary["outcomes"] == {"200": 10, "503": 20} and summary["refused"]["retry_after"] == ["1"]
    assert summary["accepted"]["p99_s"] == 1.0


def test_each_failure_of_the_target_is_named() -> None:
    hang = summarise([*_answers(), {"outcome": "hang", "seconds": 60.0}], 60, 0.01)
    assert verdict(hang) == ["answers other than 200/503: {'hang': 1}"]
    bare = summarise([*_answers(), {"outcome": "503", "seconds": 0.1, "retry_after": None}], 1, 0.01)
    assert verdict(bare) == ["1 503s without Retry-After"]
    assert verdict(summarise(_answers(refused_s=1.5), 2, 0.01)) == ["slowest 503 1.5 s > 1.0 s"]
    assert verdict(summarise(_answers(ok_s=6.0), 6, 0.01)) == ["accepted p99 6.0 s > 5.0 s"]
    assert verdict(summarise(_answers(), 1, None)) == ["/health/ready after the burst: None s (limit 5.0 s)"]
