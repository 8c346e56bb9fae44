"""HTTP and operations around the models: health, /v1/models, metrics, docs and the OpenAPI examples, readiness, the API
key, CORS and request ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import DISCLAIMER
from service.config import Settings
from service.main import create_app
from tests.service.helpers import (
    LIMIT,
    assert_one_meaning_of_uncertain,
    make_client,
    post,
)
from tests.utils import CLASSES


def test_health_models_metrics_docs_page(client: TestClient, mri_jpeg: bytes) -> None:
    assert client.get("/health/live").json()["status"] == "ok"
    assert client.get("/health/ready").json()["status"] == "ready"
    info = client.get("/v1/models").json()
    assert info["classes"] == CLASSES
    assert info["input"]["shape"] == [None, 150, 150, 3]
    assert all("file" not in m and m["weights_origin"] for m in info["models"])
    assert info["disclaimer"] == DISCLAIMER
    assert "not for clinical use" in info["intended_use"]
    assert info["training"]["grids"] == ["trainer/grids/smoke.toml"]
    assert info["changelog"] == [{"model_version": "test-1", "date": "2026-12-04", "change": "tiny test ensemble"}]
    post(client, mri_jpeg)
    post(client, b"")
    text = client.get("/metrics").text
    assert 'mri_requests_total{endpoint="/v1/predict",method="POST",status="200"}' in text
    assert 'mri_requests_total{endpoint="/v1/predict",method="POST",status="422"}' in text
    assert "mri_predictions_total{label=" in text
    assert "mri_inference_seconds_count" in text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text  # no CDN
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    page = client.get("/")
    assert page.status_code == 200 and "not for clinical use" in page.text


def test_openapi_examples_come_from_the_served_ensemble_and_settings(tiny_models: Path, mri_jpeg: bytes) -> None:
    with make_client(tiny_models, request_timeout_s=12.0) as c:
        schema = c.get("/openapi.json").json()
        real = post(c, mri_jpeg).json()
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    example = responses["200"]["content"]["application/json"]["example"]
    assert example["model_version"] == "test-1" and [m["name"] for m in example["models"]] == [
        "tiny0",
        "tiny1",
        "tiny2",
    ]
    assert set(example) == set(real) and list(example["probabilities"]) == CLASSES
    assert example["prediction_set_level"] == 0.95 and example["uncertain"] is True
    assert_one_meaning_of_uncertain(example)
    batch = schema["paths"]["/v1/predict/batch"]["post"]["responses"]["200"]["content"]["application/json"]
    assert batch["example"]["results"][0]["result"] == example
    messages = {}
    for status in ("401", "408", "413", "415", "422", "503", "504"):
        examples = responses[status]["content"]["application/json"]["examples"]
        messages[status] = [e["value"]["detail"] for e in examples.values()]
    assert messages["408"] == ["The request body did not arrive within 12 s."]
    assert messages["504"] == ["The service did not finish within 12 s; try again later."]
    assert messages["413"] == [f"Request body too large: the limit is {LIMIT:,} bytes."]
    flat = [m for ms in messages.values() for m in ms]
    assert len(set(flat)) == len(flat)  # each status its own message
    # the schema states the one meaning of `uncertain`, as README and docs/api.md do (tests/test_docs.py)
    uncertain = schema["components"]["schemas"]["PredictResponse"]["properties"]["uncertain"]["description"]
    for condition in ("prediction set holds more than one class", "unlike the training images", "not a brain MRI"):
        assert condition in uncertain


def test_metrics_label_every_route_by_its_path(client: TestClient, mri_jpeg: bytes) -> None:
    client.post("/v1/predict/batch", files=[("file", ("a.jpg", mri_jpeg, "image/jpeg"))])
    client.get("/v2/models/mri-classifier")
    client.get("/model-card")
    client.get("/no/such/page")
    text = client.get("/metrics").text
    for endpoint in ("/v1/predict/batch", "/v2/models/{name}", "/model-card"):
        assert f'mri_requests_total{{endpoint="{endpoint}",method=' in text, endpoint
    assert 'endpoint="other",method="GET",status="404"' in text and "/no/such/page" not in text


def test_ready_is_503_until_models_are_loaded(tiny_models: Path) -> None:
    app = create_app(Settings(models_dir=tiny_models))
    c = TestClient(app)  # no `with`: lifespan has not run, nothing is loaded
    r = c.get("/health/ready")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    assert c.get("/health/live").status_code == 200
    assert post(c, b"x").status_code == 503


def test_api_key(tiny_models: Path, mri_jpeg: bytes) -> None:
    with make_client(tiny_models, api_key="s3cret") as c:
        assert post(c, mri_jpeg).status_code == 401
        assert post(c, mri_jpeg, headers={"X-API-Key": "wrong"}).status_code == 401
        assert post(c, mri_jpeg, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/health/ready").status_code == 200


def test_cors_closed_by_default_and_configurable(tiny_models: Path) -> None:
    origin = {"Origin": "https://app.example"}
    with make_client(tiny_models) as c:
        assert "access-control-allow-origin" not in c.get("/health/live", headers=origin).headers
    with make_client(tiny_models, cors_origins=["https://app.example"]) as c:
        assert c.get("/health/live", headers=origin).headers["access-control-allow-origin"] == "https://app.example"


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/health/live", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live", headers={"X-Request-ID": "bad id; drop"}).headers["x-request-id"]
    assert len(generated) == 32 and generated.isalnum()


def test_json_log_lines_carry_the_request_id() -> None:
    import logging

    from service.api.observability import JsonFormatter

    record = logging.makeLogRecord(
        {"msg": "POST /v1/predict %d", "args": (200,), "request_id": "r1", "levelname": "INFO"}
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "POST /v1/predict 200" and line["request_id"] == "r1" and line["level"] == "info"


def test_an_upload_goes_to_the_thread_pool_once_and_a_probe_never(
    client: TestClient, mri_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the decode and crop leave the event loop (the models have their own thread): a `def` dependency or
    probe would cost a hop each, and would leave probes waiting behind uploads when the pool is busy."""
    import anyio.to_thread

    trips: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(getattr(func, "func", func), "__name__", "?"))  # starlette passes a partial
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics", "/v1/models"):
        assert client.get(path).status_code == 200, path
    assert trips == []
    assert post(client, mri_jpeg).status_code == 200
    assert trips == ["preprocess_bytes"]
