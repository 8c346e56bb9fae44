"""Opportunistic micro-batching: one inference thread takes whatever requests are waiting (up to
`max_batch`) and runs them as one batch through each model, with all intra-op threads.

A lone request runs immediately as a batch of one (no added wait), so single-client latency is the
compute floor; under load, requests that arrive while a batch is running form the next batch, which keeps
every core busy without the thread oversubscription of many concurrent `session.run` calls.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from service.inference.runtime import Ensemble, Prediction

log = logging.getLogger("service.inference.batching")


@dataclass
class _Job:
    image: np.ndarray
    future: Future[Prediction]


class MicroBatcher:
    def __init__(self, ensemble: Ensemble, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.ensemble = ensemble
        self.max_batch = max_batch
        self._queue: queue.Queue[list[_Job] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self.batches = 0
        self.images = 0
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future[Prediction]:
        """Queue one uint8 RGB image (the model input size); the future resolves to its Prediction."""
        if not self._thread.is_alive():
            raise RuntimeError("the inference thread has stopped")
        return self.submit_many([image])[0]

    def submit_many(self, images: list[np.ndarray]) -> list[Future[Prediction]]:
        """Queue several images at once (one upload's files): they enter the same batch (or consecutive ones,
        past `max_batch`), never interleaved with another request's."""
        if not self._thread.is_alive():
            raise RuntimeError("the inference thread has stopped")
        jobs = [_Job(image, Future()) for image in images]
        if jobs:
            self._queue.put(jobs)
        return [j.future for j in jobs]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = list(first)
            while len(jobs) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.extend(more)
            for start in range(0, len(jobs), self.max_batch):
                self._run([j for j in jobs[start : start + self.max_batch] if j.future.set_running_or_notify_cancel()])

    def _run(self, live: list[_Job]) -> None:
        if not live:
            return
        try:
            preds = self.ensemble.predict_batch(np.stack([j.image for j in live]))
        except Exception as e:  # one bad batch must not kill the thread
            log.exception("inference failed for a batch of %d", len(live))
            for j in live:
                j.future.set_exception(e)
            return
        self.batches += 1
        self.images += len(live)
        for j, p in zip(live, preds, strict=True):
            j.future.set_result(p)
