"""The Open Inference Protocol (v2) API, spoken by a client nobody here wrote: tritonclient[http]."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from service.image.preprocessing import preprocess_bytes
from tests.utils import CLASSES, MRI_FIXTURES

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

NAME = "mri-classifier"


def _images(n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((MRI_FIXTURES / "Testing").rglob("*.jpg"))[:n]]


@pytest.fixture(scope="module")
def client(live_server: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=live_server.removeprefix("http://"))


def listed(result: httpclient.InferResult, name: str, i: int) -> list[str]:
    """A comma-joined BYTES output as a list (bytes in binary, str in JSON)."""
    w = result.as_numpy(name)[i]
    text = w.decode() if isinstance(w, bytes) else w
    return text.split(",") if text else []


def _infer(client: httpclient.InferenceServerClient, images: list[bytes], binary: bool) -> httpclient.InferResult:
    # JSON carries BYTES as strings: there, images go base64-encoded
    data = np.array(images if binary else [base64.b64encode(b) for b in images], dtype=object)
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    names = ("probabilities", "label", "votes", "warnings", "uncertainty_reasons", "prediction_set")
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    outputs.append(httpclient.InferRequestedOutput("uncertain", binary_data=False))
    return client.infer(NAME, [tensor], outputs=outputs, request_id="r1")


def test_server_and_model_metadata(client: httpclient.InferenceServerClient, live_server: str) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    server = client.get_server_metadata()
    assert server["name"] == NAME and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(NAME)
    version = httpx.get(live_server + "/v1/models").json()["model_version"]
    assert meta["versions"] == [version] and meta["platform"] == "onnxruntime_onnx"
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "pixels": "FP32"}
    assert [o["name"] for o in meta["outputs"]] == [
        "probabilities",
        "model_probabilities",
        "label",
        "votes",
        "uncertain",
        "uncertainty_reasons",
        "prediction_set",
        "warnings",
    ]
    assert meta["parameters"]["classes"] == ",".join(CLASSES)
    level = httpx.get(live_server + "/v1/models").json()["ensemble"]["conformal"]["level"]
    assert float(meta["parameters"]["prediction_set_level"]) == level
    assert client.is_model_ready(NAME, model_version=version)
    assert not client.is_model_ready(NAME, model_version="nope") and not client.is_model_ready("other")
    (entry,) = client.get_model_repository_index()
    assert entry == {"name": NAME, "version": version, "state": "READY"}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_single_and_batched_matches_v1(
    client: httpclient.InferenceServerClient, live_server: str, binary: bool
) -> None:
    images = _images(3)
    for batch in (images[:1], images):
        result = _infer(client, batch, binary)
        probs, labels = result.as_numpy("probabilities"), result.as_numpy("label")
        assert probs.shape == (len(batch), len(CLASSES)) and result.as_numpy("votes").shape == probs.shape
        assert result.as_numpy("uncertain").dtype == bool and result.get_response()["id"] == "r1"
        assert "not for clinical use" in result.get_response()["parameters"]["disclaimer"]
        assert result.as_numpy("model_probabilities") is None  # not asked for
        for image, p, label in zip(batch, probs, labels, strict=True):
            v1 = httpx.post(live_server + "/v1/predict", files={"file": ("x.jpg", image, "image/jpeg")}).json()
            assert (label.decode() if binary else label) == v1["label"]  # BYTES: bytes in binary, str in JSON
            i = batch.index(image)
            assert listed(result, "warnings", i) == v1["warnings"]
            assert listed(result, "prediction_set", i) == v1["prediction_set"]
            assert listed(result, "uncertainty_reasons", i) == v1["uncertainty_reasons"]
            assert bool(result.as_numpy("uncertain")[i]) == v1["uncertain"]
            np.testing.assert_allclose(p, [v1["probabilities"][c] for c in CLASSES], atol=1e-5)


def test_infer_on_ready_crops(client: httpclient.InferenceServerClient, live_server: str) -> None:
    """`pixels`: crops the client made with the same preprocessing get the same answer as the encoded file."""
    images = _images(2)
    manifest = httpx.get(live_server + "/v1/models").json()
    crops = np.stack([preprocess_bytes(b, params=manifest["preprocessing"]).image for b in images]).astype(np.float32)
    tensor = httpclient.InferInput("pixels", list(crops.shape), "FP32")
    tensor.set_data_from_numpy(crops, binary_data=True)
    from_pixels = client.infer(NAME, [tensor]).as_numpy("probabilities")
    np.testing.assert_allclose(from_pixels, _infer(client, images, True).as_numpy("probabilities"), atol=1e-6)


def test_protocol_errors_are_the_protocols_json(client: httpclient.InferenceServerClient, live_server: str) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.get_model_metadata("other")
    with pytest.raises(InferenceServerException, match="not a JPEG, PNG or DICOM"):
        _infer(client, [b"not an image"], binary=True)
    bad = httpclient.InferInput("pixels", [1, 4, 4, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer(NAME, [bad])
    for body, message in (
        (b"{", "not JSON"),
        (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}), "base64"),
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}]}), "do not fill"),
    ):
        r = httpx.post(f"{live_server}/v2/models/{NAME}/infer", content=body)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    r = httpx.post(f"{live_server}/v2/repository/models/{NAME}/load")
    assert r.status_code == 403 and "MRI_ADMIN_KEY" in r.json()["error"]


def test_an_oversized_infer_gets_the_protocols_413(live_server: str) -> None:
    big = b"\0" * (11 * 1024 * 1024)
    r = httpx.post(f"{live_server}/v2/models/{NAME}/infer", content=big, timeout=30)
    assert r.status_code == 413 and "limit is" in r.json()["error"]
