"""Heatmaps (/v1/explain) and the not-an-MRI warnings, with a hand-built ONNX model whose class 0 is
'bright': its class map must peak on a bright blob, wherever the blob is."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from service.image.plausibility import COLOUR_THRESHOLD, colourfulness
from service.image.preprocessing import IMAGE_SIZE, preprocess_bytes
from tests.service.helpers import make_client
from tests.utils import CLASSES, MRI_FIXTURES, make_cam_ensemble


@pytest.fixture
def cam_models(tmp_path: Path) -> Path:
    return make_cam_ensemble(tmp_path)


def brain_with_blob(cx: int, cy: int, size: int = 512) -> bytes:
    """A grey ellipse ('brain', filling most of the frame) on black, with one bright blob at (cx, cy)."""
    img = np.zeros((size, size), np.uint8)
    cv2.ellipse(img, (size // 2, size // 2), (220, 240), 0, 0, 360, 170, -1)
    cv2.circle(img, (cx, cy), 28, 255, -1)
    ok, png = cv2.imencode(".png", img)
    assert ok
    return png.tobytes()


@pytest.mark.parametrize("blob", [(150, 150), (360, 170), (256, 380)])
def test_heatmap_peaks_on_the_blob(cam_models: Path, blob: tuple[int, int]) -> None:
    data = brain_with_blob(*blob)
    crop = preprocess_bytes(data)
    grey = crop.image[:, :, 0].astype(float)
    by, bx = np.unravel_index(np.argmax(cv2.blur(grey, (15, 15))), grey.shape)  # the blob, in the crop
    with make_client(cam_models) as client:
        r = client.post("/v1/explain", files={"file": ("b.png", data, "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-label"] == CLASSES[0] and r.headers["x-heatmap-models"] == "tiny0,tiny1,tiny2"
    assert "not for clinical use" in r.headers["x-disclaimer"]
    px, py = (float(v) for v in r.headers["x-heatmap-peak"].split(","))
    assert abs(px * IMAGE_SIZE - bx) <= 15 and abs(py * IMAGE_SIZE - by) <= 15
    overlay = np.asarray(Image.open(io.BytesIO(r.content)))
    assert overlay.shape == (2 * IMAGE_SIZE, 2 * IMAGE_SIZE, 3)
    r_, g_, b_ = (int(v) for v in overlay[2 * by, 2 * bx])
    assert r_ > g_ and r_ > b_  # the overlay is red (hot) on the blob


def test_explain_without_class_maps_is_501_and_bad_input_is_4xx(tiny_models: Path, mri_jpeg: bytes) -> None:
    with make_client(tiny_models) as client:
        r = client.post("/v1/explain", files={"file": ("a.jpg", mri_jpeg, "image/jpeg")})
        assert r.status_code == 501 and "class map" in r.json()["detail"]
        r = client.post("/v1/explain", files={"file": ("a.jpg", b"", "image/jpeg")})
        assert r.status_code == 422


def test_warnings_for_colour_and_unfamiliar_images(cam_models: Path, mri_jpeg: bytes) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    photo[:, :, 0] = 250  # strongly red "photo"
    ok, colour_png = cv2.imencode(".png", photo)
    bright = np.full((300, 300), 240, np.uint8)
    ok2, bright_png = cv2.imencode(".png", bright)
    assert ok and ok2
    with make_client(cam_models) as client:
        mri = client.post("/v1/predict", files={"file": ("a.jpg", mri_jpeg, "image/jpeg")}).json()
        col = client.post("/v1/predict", files={"file": ("c.png", colour_png.tobytes(), "image/png")}).json()
        odd = client.post("/v1/predict", files={"file": ("b.png", bright_png.tobytes(), "image/png")}).json()
    assert mri["warnings"] == []
    assert "not_grayscale" in col["warnings"]
    # ood_score: mean brightness; a flat 240 field is scaled to 175 by preprocessing v2, still above 150
    assert "unlike_training_images" in odd["warnings"]


def test_every_mri_fixture_is_grey_enough() -> None:
    for path in sorted(MRI_FIXTURES.glob("*/*/*.jpg")):
        assert colourfulness(preprocess_bytes(path.read_bytes()).image) <= COLOUR_THRESHOLD, path.name
