"""service/api/admission.py: a bounded number of images wait for the models; past it, a fast 503 with Retry-After in
each API's error shape, counted per route; a batch counts its images; nothing leaks; a burst of simultaneous
uploads on a live server gets only 200s and 503s, and the server stays ready."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.burst import run_burst, verdict
from service.api.admission import Admission, model_route
from service.config import Settings
from service.main import create_app
from tests.utils import start_server

NAME = "mri-classifier"


def _client(models_dir: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(models_dir=models_dir, **settings)))  # type: ignore[arg-type]


def _v2_body(images: list[bytes]) -> str:
    data = [base64.b64encode(b).decode() for b in images]
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": data}]})


def test_admission_counts_units_and_refuses_past_the_limit() -> None:
    a = Admission(3, retry_after_s=2)
    assert a.try_acquire(2) and a.try_acquire(1) and not a.try_acquire(1)
    a.release(2)
    assert a.waiting == 1 and a.try_acquire(2) and not a.try_acquire(1)
    with pytest.raises(ValueError, match="≥ 1"):
        Admission(0)
    assert model_route("/v1/predict") == "/v1/predict" and model_route("/v1/predict/batch") == "/v1/predict/batch"
    assert model_route("/v2/models/x/versions/1/infer") == "/v2/models/{name}/infer"
    assert model_route("/v1/models") is None and model_route("/health/ready") is None


def test_a_full_service_answers_503_with_retry_after_in_each_apis_shape(tiny_models: Path, mri_jpeg: bytes) -> None:
    with _client(tiny_models, max_waiting=2, retry_after_s=3) as c:
        admission = c.app.state.mri.admission  # type: ignore[attr-defined]
        admission.waiting = 2  # two images already admitted
        r = c.post("/v1/predict", files={"file": ("a.jpg", mri_jpeg, "image/jpeg")})
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert "busy" in r.json()["detail"] and "2 images" in r.json()["detail"]
        r = c.post(f"/v2/models/{NAME}/infer", content=_v2_body([mri_jpeg]))
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and "busy" in r.json()["error"]
        assert c.get("/health/ready").status_code == 200  # ready stays true: the models are there, only busy
        metrics = c.get("/metrics").text
        assert 'mri_refused_requests_total{endpoint="/v1/predict"} 1.0' in metrics
        assert 'mri_refused_requests_total{endpoint="/v2/models/{name}/infer"} 1.0' in metrics
        assert 'mri_requests_total{endpoint="/v1/predict",method="POST",status="503"} 1.0' in metrics
        admission.waiting = 0
        assert c.post("/v1/predict", files={"file": ("a.jpg", mri_jpeg, "image/jpeg")}).status_code == 200
        assert admission.waiting == 0


def test_a_batch_counts_its_images_and_every_unit_is_released(tiny_models: Path, mri_jpeg: bytes) -> None:
    files = [("file", (f"{i}.jpg", mri_jpeg, "image/jpeg")) for i in range(3)]
    with _client(tiny_models, max_waiting=2) as c:
        admission = c.app.state.mri.admission  # type: ignore[attr-defined]
        r = c.post("/v1/predict/batch", files=files)
        assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["retry-after"] == "1"
        r = c.post(f"/v2/models/{NAME}/infer", content=_v2_body([mri_jpeg] * 3))
        assert r.status_code == 503 and "busy" in r.json()["error"]
        assert c.post("/v1/predict/batch", files=files[:2]).status_code == 200
        assert c.post("/v1/predict", content=b"not an image", headers={"content-type": "image/jpeg"}).status_code == 415
        assert admission.waiting == 0  # refused, answered and failed requests all gave their units back
        assert 'mri_refused_requests_total{endpoint="/v1/predict/batch"} 1.0' in c.get("/metrics").text


def test_a_burst_of_simultaneous_uploads_gets_200s_and_fast_503s_and_the_server_stays_ready(
    tiny_models: Path, mri_jpeg: bytes
) -> None:
    """Short version of `make burst` (docs/operations.md): 300 uploads at once, 8 admitted at a time."""
    proc, url = start_server(tiny_models, MRI_MAX_WAITING="8", MRI_RETRY_AFTER_S="2")
    try:
        summary = asyncio.run(run_burst(url, 300, [mri_jpeg]))
        assert verdict(summary) == [], summary  # only 200/503, no reset or hang, 503s within 1 s, ready after
        assert summary["accepted"]["n"] >= 8 and summary["refused"]["n"] > 0, summary
        assert summary["refused"]["retry_after"] == ["2"]
        assert httpx.get(url + "/health/ready").status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert f'mri_refused_requests_total{{endpoint="/v1/predict"}} {summary["refused"]["n"]}.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
