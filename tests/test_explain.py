"""Heatmaps (/v1/explain) and the not-an-MRI warnings, with a hand-built ONNX model whose class 0 is
'bright': its class map must peak on a bright blob, wherever the blob is."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.manifest import sha256_file
from service.plausibility import COLOUR_THRESHOLD, colourfulness
from service.preprocessing import IMAGE_SIZE, preprocess_bytes
from tests.conftest import CLASSES, MRI_FIXTURES, make_tiny_ensemble
from tests.test_service import make_client

POOL = 15  # 150 / 15 = a 10×10 class map


def bright_finder_onnx(path: Path) -> None:
    """image → mean over channels → 15×15 average pool (10×10 map) → per-location logits
    (class 0 = 0.05·brightness − 6, others 0) → class_map (softmax per location); probabilities = softmax
    of the mean logits; ood_score = mean brightness."""
    w = np.zeros((1, 4), np.float32)
    w[0, 0] = 0.05
    b = np.array([-6.0, 0, 0, 0], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image", "ax3"], ["grey"], keepdims=1),
        helper.make_node("Transpose", ["grey"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Transpose", ["pooled"], ["feat"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["feat", "W"], ["l0"]),
        helper.make_node("Add", ["l0", "b"], ["loc_logits"]),
        helper.make_node("Softmax", ["loc_logits"], ["class_map"], axis=-1),
        helper.make_node("ReduceMean", ["loc_logits", "ax12"], ["logits"], keepdims=0),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ReduceMean", ["image", "ax123"], ["ood_score"], keepdims=0),
    ]
    n = IMAGE_SIZE // POOL
    graph = helper.make_graph(
        nodes,
        "bright_finder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", IMAGE_SIZE, IMAGE_SIZE, 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("class_map", TensorProto.FLOAT, ["batch", n, n, 4]),
            helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([3], np.int64), "ax3"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "ax123"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def cam_models(tmp_path: Path) -> Path:
    make_tiny_ensemble(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    for entry in raw["models"]:  # three bright-finders vote together
        bright_finder_onnx(tmp_path / entry["file"])
        entry.update(sha256=sha256_file(tmp_path / entry["file"]), outputs=["class_map", "ood_score", "probabilities"])
    raw["models"][0]["ood_threshold"] = 200.0  # mean brightness above 200 is "unlike the training images"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    return tmp_path


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
    assert "unlike_training_images" in odd["warnings"]  # ood_score (mean brightness 240) > 200


def test_every_mri_fixture_is_grey_enough() -> None:
    for path in sorted(MRI_FIXTURES.glob("*/*/*.jpg")):
        assert colourfulness(preprocess_bytes(path.read_bytes()).image) <= COLOUR_THRESHOLD, path.name
