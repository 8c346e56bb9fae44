"""Micro-batching: batched results equal one-by-one results; failures and cancellations are contained."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.inference.batching import MicroBatcher
from service.inference.runtime import Ensemble


@pytest.fixture
def ensemble(tiny_models: Path) -> Ensemble:
    return Ensemble.load(tiny_models)


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 150, 150, 3), dtype=np.uint8)


def test_concurrent_requests_form_batches_with_the_same_answers(ensemble: Ensemble, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    original = Ensemble.predict_batch

    def held(self: Ensemble, x: np.ndarray) -> list:  # type: ignore[type-arg]
        gate.wait(5)  # the first batch runs while the others queue up
        return original(self, x)

    monkeypatch.setattr(Ensemble, "predict_batch", held)
    batcher = MicroBatcher(ensemble, max_batch=8)
    xs = images(9)
    futures = [batcher.submit(x) for x in xs]
    time.sleep(0.1)
    gate.set()
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert batcher.images == 9 and batcher.batches < 9  # 1 + 8: the queued ones ran together
    for x, got in zip(xs, results, strict=True):
        alone = ensemble.predict(x)
        assert got.label == alone.label and got.uncertain == alone.uncertain
        np.testing.assert_allclose(got.per_model, alone.per_model, atol=1e-5)


def test_a_failing_batch_fails_its_requests_and_the_thread_survives(ensemble: Ensemble, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    batcher = MicroBatcher(ensemble)
    monkeypatch.setattr(Ensemble, "predict_batch", lambda self, x: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(images(1)[0]).result(timeout=10)
    monkeypatch.undo()
    assert batcher.submit(images(1)[0]).result(timeout=10).label >= 0
    batcher.close()


def test_cancelled_requests_are_skipped(ensemble: Ensemble, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    seen: list[int] = []
    original = Ensemble.predict_batch

    def held(self: Ensemble, x: np.ndarray) -> list:  # type: ignore[type-arg]
        gate.wait(5)
        seen.append(len(x))
        return original(self, x)

    monkeypatch.setattr(Ensemble, "predict_batch", held)
    batcher = MicroBatcher(ensemble)
    first = batcher.submit(images(1)[0])
    time.sleep(0.1)
    abandoned = batcher.submit(images(1)[0])
    kept = batcher.submit(images(1)[0])
    assert abandoned.cancel()  # e.g. the request timed out while queued
    gate.set()
    first.result(timeout=10)
    kept.result(timeout=10)
    batcher.close()
    assert seen == [1, 1]
    with pytest.raises(ValueError):
        MicroBatcher(ensemble, max_batch=0)
