"""What the REST tests share: a TestClient on a models dir, upload builders and the answer's contract."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import DISCLAIMER
from service.config import Settings
from service.main import create_app
from tests.utils import CLASSES

LIMIT = 2 * 1024 * 1024


def make_client(models_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(models_dir=models_dir, max_upload_bytes=LIMIT, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


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
