"""The REST contract, through TestClient with lifespan (models loaded from a tiny ONNX ensemble)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import DISCLAIMER
from service.config import Settings
from service.ensemble import majority_vote
from service.main import create_app
from service.preprocessing import PREPROCESSING_VERSIONS, preprocess_bytes
from service.runtime import Ensemble
from tests.utils import CLASSES, MRI_FIXTURES, make_tiny_ensemble

LIMIT = 2 * 1024 * 1024


def make_client(models_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(models_dir=models_dir, max_upload_bytes=LIMIT, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


@pytest.fixture
def client(tiny_models: Path) -> Iterator[TestClient]:
    with make_client(tiny_models) as c:
        yield c


def png_bytes(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def pil_bytes(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def post(client: TestClient, data: bytes, name: str = "scan.jpg", ctype: str = "image/jpeg", **kw: object):
    return client.post("/v1/predict", files={"file": (name, data, ctype)}, **kw)  # type: ignore[arg-type]


def assert_prediction(body: dict, classes: list[str] = CLASSES, n_models: int = 3) -> None:
    assert body["label"] in classes
    assert list(body["probabilities"]) == classes
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4
    assert sum(body["votes"].values()) == n_models
    assert body["agreement"] == pytest.approx(body["votes"][body["label"]] / n_models, abs=1e-3)
    assert len(body["models"]) == n_models
    for m in body["models"]:
        assert m["label"] == max(m["probabilities"], key=m["probabilities"].get)
    assert body["disclaimer"] == DISCLAIMER
    assert body["elapsed_ms"] > 0
    assert body["uncertain"] == bool(body["uncertainty_reasons"])
    assert_one_meaning_of_uncertain(body)


def assert_one_meaning_of_uncertain(body: dict) -> None:
    """The contract (README, docs/api.md, the schema): `uncertain` is true exactly when the prediction set holds
    more than one class, the image is unlike the training images, or it is probably not a brain MRI."""
    pset, reasons, warnings = body["prediction_set"], body["uncertainty_reasons"], body["warnings"]
    assert pset is not None and body["label"] in pset and len(set(pset)) == len(pset)
    probs = body["probabilities"]
    assert pset == sorted(pset, key=lambda c: -probs[c])  # most probable first
    expected = []
    if len(pset) > 1:
        expected.append("several_classes_possible")
    if "unlike_training_images" in warnings:
        expected.append("unlike_training_images")
    if {"not_grayscale", "no_brain_outline", "no_dark_background"} & set(warnings):
        expected.append("probably_not_brain_mri")
    assert reasons == expected
    assert body["uncertain"] == bool(expected)


def test_predict_multipart_matches_direct_ensemble(client: TestClient, tiny_models: Path, mri_jpeg: bytes) -> None:
    r = post(client, mri_jpeg)
    assert r.status_code == 200, r.text
    body = r.json()
    assert_prediction(body)
    # Same numbers as running the ensemble by hand on the shared preprocessing.
    ens = Ensemble.load(tiny_models)
    probs = ens.run(preprocess_bytes(mri_jpeg).image[None].astype(np.float32))
    labels, votes, mean = majority_vote(probs)
    assert body["label"] == CLASSES[labels[0]]
    assert [body["votes"][c] for c in CLASSES] == votes[0].tolist()
    np.testing.assert_allclose([body["probabilities"][c] for c in CLASSES], mean[0], atol=1e-5)
    assert body["model_version"] == "test-1"


def test_predict_raw_body_equals_multipart(client: TestClient, mri_jpeg: bytes) -> None:
    a = post(client, mri_jpeg).json()
    r = client.post("/v1/predict", content=mri_jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"] == a["probabilities"]


def test_include_input_returns_the_150px_crop(client: TestClient, mri_jpeg: bytes) -> None:
    r = post(client, mri_jpeg, params={"include_input": "true"})
    png = base64.b64decode(r.json()["input_png_base64"])
    crop = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (150, 150, 3)
    expected = preprocess_bytes(mri_jpeg).image
    np.testing.assert_array_equal(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), expected)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_the_crop_follows_the_manifests_preprocessing_version(tmp_path: Path, version: int) -> None:
    # Models exported under an earlier version keep getting its crops: the manifest, not the code's default,
    # decides. The image (a slice with darker darks) is one on which the three versions crop differently.
    make_tiny_ensemble(tmp_path / "m")
    path = tmp_path / "m" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preprocessing"] = PREPROCESSING_VERSIONS[version]
    path.write_text(json.dumps(manifest))
    img = cv2.imread(str(MRI_FIXTURES / "Training" / "no_tumor" / "1.jpg"))
    dark = cv2.imencode(".png", (255.0 * (np.arange(256) / 255.0) ** 1.6).astype(np.uint8)[img])[1]
    with make_client(tmp_path / "m") as c:
        r = post(c, dark.tobytes(), params={"include_input": "true"})
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["input_png_base64"])
    served = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    expected = {v: preprocess_bytes(dark.tobytes(), params=PREPROCESSING_VERSIONS[v]).image for v in (1, 2, 3, 4)}
    for a, b in ((1, 2), (2, 3), (1, 3)):
        assert np.abs(expected[a].astype(int) - expected[b].astype(int)).mean() > 10, (a, b)  # they differ here
    np.testing.assert_array_equal(served, expected[version])


def test_class_names_come_from_the_manifest(tmp_path: Path, mri_jpeg: bytes) -> None:
    classes = ["alpha", "beta", "gamma"]
    make_tiny_ensemble(tmp_path / "m", classes=classes)
    with make_client(tmp_path / "m") as c:
        body = post(c, mri_jpeg).json()
        assert_prediction(body, classes)
        assert c.get("/v1/models").json()["classes"] == classes


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda img: png_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)), id="grey-png"),
        pytest.param(
            lambda img: png_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257), id="16bit-png"
        ),
        pytest.param(lambda img: png_bytes(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)), id="rgba-png"),
        pytest.param(lambda img: pil_bytes(Image.fromarray(img[:, :, ::-1]).convert("CMYK"), "JPEG"), id="cmyk-jpeg"),
        pytest.param(lambda img: pil_bytes(Image.fromarray(img[:, :, ::-1]).convert("P"), "PNG"), id="palette-png"),
    ],
)
def test_image_variants_predict(client: TestClient, mri_jpeg: bytes, make) -> None:  # type: ignore[no-untyped-def]
    img = cv2.imdecode(np.frombuffer(mri_jpeg, np.uint8), cv2.IMREAD_COLOR)
    r = post(client, make(img), name="x.png", ctype="image/png")
    assert r.status_code == 200, r.text
    assert_prediction(r.json())


def bomb_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [
        (b"", 422, "empty"),
        (b"hello, I am a text file pretending to be a JPEG", 415, "not a JPEG, PNG or DICOM"),
        (b"%PDF-1.4\n%...", 415, "not a JPEG, PNG or DICOM"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, 422, "PNG"),
        (bomb_png(50_000, 50_000), 422, "pixels"),
    ],
    ids=["empty", "text", "pdf", "png-garbage", "bomb"],
)
def test_bad_uploads_get_4xx(client: TestClient, data: bytes, status: int, phrase: str) -> None:
    r = post(client, data)
    assert r.status_code == status, r.text
    assert phrase in r.json()["detail"]
    assert client.get("/health/ready").status_code == 200


def test_truncated_jpeg_is_422(client: TestClient, mri_jpeg: bytes) -> None:
    r = post(client, mri_jpeg[: len(mri_jpeg) // 3])
    assert r.status_code == 422
    assert "decoded" in r.json()["detail"] or "truncated" in r.json()["detail"]


def test_body_size_limit(client: TestClient) -> None:
    r = client.post("/v1/predict", content=b"\xff\xd8\xff" + b"\0" * LIMIT, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    just_under = b"\xff\xd8\xff" + b"\0" * (LIMIT - 1000)
    r = client.post("/v1/predict", content=just_under, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422  # accepted by size, then refused as a broken JPEG


def test_missing_field_two_files_and_bad_content_type(client: TestClient, mri_jpeg: bytes) -> None:
    r = client.post("/v1/predict", files={"image": ("a.jpg", mri_jpeg, "image/jpeg")})
    assert r.status_code == 422 and "Missing form field 'file'" in r.json()["detail"]
    r = client.post(
        "/v1/predict",
        files=[("file", ("a.jpg", mri_jpeg, "image/jpeg")), ("file", ("b.jpg", mri_jpeg, "image/jpeg"))],
    )
    assert r.status_code == 422 and "exactly one" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/predict")
    assert r.status_code == 422


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
    import json
    import logging

    from service.observability import JsonFormatter

    record = logging.makeLogRecord(
        {"msg": "POST /v1/predict %d", "args": (200,), "request_id": "r1", "levelname": "INFO"}
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "POST /v1/predict 200" and line["request_id"] == "r1" and line["level"] == "info"


def _encoded(ext: str) -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return cv2.imencode(ext, img)[1].tobytes()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"PK\x03\x04" + b"\0" * 100, id="zip"),
        pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', id="svg"),
        pytest.param(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", id="gif"),
        pytest.param(_encoded(".bmp"), id="bmp"),
        pytest.param(_encoded(".tiff"), id="tiff"),
        pytest.param(_encoded(".webp"), id="webp"),
    ],
)
def test_other_formats_are_415_whatever_the_name(client: TestClient, data: bytes) -> None:
    r = post(client, data, name="scan.jpg", ctype="image/jpeg")
    assert r.status_code == 415 and "not a JPEG, PNG or DICOM" in r.json()["detail"]
    assert client.get("/health/ready").status_code == 200


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.full((1, 1, 3), 128, np.uint8), id="1x1"),
        pytest.param(np.full((10, 10_000, 3), 200, np.uint8), id="10000x10"),
        pytest.param(np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8), id="colour-photo"),
    ],
)
def test_odd_but_valid_images_predict(client: TestClient, image: np.ndarray) -> None:
    r = post(client, png_bytes(image), name="x.png", ctype="image/png")
    assert r.status_code == 200, r.text
    assert_prediction(r.json())


def test_slow_work_is_504_and_the_service_stays_ready(
    tiny_models: Path, mri_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    original = Ensemble.predict_batch

    def slow(self: Ensemble, *args: object, **kwargs: object) -> object:
        time.sleep(1.5)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Ensemble, "predict_batch", slow)
    with make_client(tiny_models, request_timeout_s=0.5) as c:
        r = post(c, mri_jpeg)
        assert r.status_code == 504
        assert r.json()["detail"].startswith("The service did not finish within 0.5 s")
        # the abandoned model call finishes in the background; once it has, the service answers as before (while
        # it runs it holds both cores, and on a loaded machine even /health/ready can miss a 0.5 s deadline)
        time.sleep(2.0)
        assert c.get("/health/ready").status_code == 200
    monkeypatch.setattr(Ensemble, "predict_batch", original)
    with make_client(tiny_models, request_timeout_s=0.5) as c:
        assert post(c, mri_jpeg).status_code == 200


def test_stalled_upload_is_408() -> None:
    import asyncio

    from service.middleware import TimeoutMiddleware

    async def app(scope: dict, receive: object, send: object) -> None:
        while True:  # reads the body like the real app does
            message = await receive()  # type: ignore[operator]
            if not message.get("more_body"):
                return

    sent: list[dict] = []

    async def receive() -> dict:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b"\xff\xd8", "more_body": True}
        await asyncio.sleep(10)  # the client stops sending
        return {"type": "http.request", "body": b"", "more_body": False}

    out: list[dict] = []

    async def send(message: dict) -> None:
        out.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
    asyncio.run(TimeoutMiddleware(app, 0.2)(scope, receive, send))
    assert out[0]["status"] == 408
    assert b"did not arrive within 0.2 s" in out[1]["body"]


def test_temperature_and_uncertainty_rule_from_the_manifest_apply(tmp_path: Path, mri_jpeg: bytes) -> None:
    import json

    make_tiny_ensemble(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    with make_client(tmp_path) as c:
        before = post(c, mri_jpeg).json()
    raw["models"][0]["temperature"] = 5.0
    raw["ensemble"]["uncertainty"] = {"min_top_probability": 0.99, "max_normalized_entropy": 1.0}
    del raw["ensemble"]["conformal"]  # an ensemble from before prediction sets: its thresholds flag
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with make_client(tmp_path) as c:
        after = post(c, mri_jpeg).json()
        shown = c.get("/v1/models").json()
    p0, q0 = before["models"][0]["probabilities"], after["models"][0]["probabilities"]
    assert max(q0.values()) < max(p0.values())  # softened by T = 5
    assert max(q0, key=q0.get) == max(p0, key=p0.get)  # same arg-max
    assert after["models"][1] == before["models"][1]  # T = 1 models unchanged
    assert after["uncertain"] and "low_top_probability" in after["uncertainty_reasons"]
    assert shown["models"][0]["temperature"] == 5.0
    assert shown["ensemble"]["uncertainty"]["min_top_probability"] == 0.99
