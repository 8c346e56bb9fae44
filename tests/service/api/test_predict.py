"""The prediction contract through TestClient with lifespan (models loaded from a tiny ONNX ensemble): the answer, the
crop, the manifest's classes, preprocessing and rules, image variants that must predict."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.image.preprocessing import PREPROCESSING_VERSIONS, preprocess_bytes
from service.inference.ensemble import majority_vote
from service.inference.runtime import Ensemble
from tests.service.helpers import (
    assert_prediction,
    make_client,
    pil_bytes,
    png_bytes,
    post,
)
from tests.utils import CLASSES, MRI_FIXTURES, make_tiny_ensemble


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
