"""POST /v1/predict/batch: one result per file in order, each bad file with its own error, one model batch."""

from __future__ import annotations

from pathlib import Path

from tests.service.helpers import make_client
from tests.utils import MRI_FIXTURES


def _files() -> list[tuple[str, bytes]]:
    paths = sorted((MRI_FIXTURES / "Testing").rglob("*.jpg"))[:3]
    return [(p.name, p.read_bytes()) for p in paths]


def test_several_files_give_one_result_each_in_order(tiny_models: Path) -> None:
    good = _files()
    parts = [
        ("file", (good[0][0], good[0][1], "image/jpeg")),
        ("file", ("notes.jpg", b"not an image", "image/jpeg")),
        ("file", (good[1][0], good[1][1], "image/jpeg")),
        ("file", ("empty.png", b"", "image/png")),
        ("file", (good[2][0], good[2][1], "image/jpeg")),
    ]
    with make_client(tiny_models) as client:
        batches_before = client.app.state.mri.batcher.batches  # type: ignore[attr-defined]
        r = client.post("/v1/predict/batch", files=parts)
        batches_after = client.app.state.mri.batcher.batches  # type: ignore[attr-defined]
        body = r.json()
        assert r.status_code == 200 and body["n_ok"] == 3 and body["n_failed"] == 2
        assert [x["index"] for x in body["results"]] == [0, 1, 2, 3, 4]
        assert [x["filename"] for x in body["results"]] == [
            good[0][0],
            "notes.jpg",
            good[1][0],
            "empty.png",
            good[2][0],
        ]
        assert [x["status"] for x in body["results"]] == [200, 415, 200, 422, 200]
        assert "not a JPEG, PNG or DICOM" in body["results"][1]["error"] and body["results"][1]["result"] is None
        assert batches_after - batches_before == 1  # the three good files ran through the models together
        assert "not for clinical use" in body["disclaimer"]
        for (name, data), item in zip(good, [body["results"][i] for i in (0, 2, 4)], strict=True):
            single = client.post("/v1/predict", files={"file": (name, data, "image/jpeg")}).json()
            assert item["result"]["label"] == single["label"]
            assert item["result"]["probabilities"] == single["probabilities"]


def test_the_batch_limits_and_errors(tiny_models: Path) -> None:
    (name, data), *_ = _files()
    with make_client(tiny_models, max_files=2) as client:
        r = client.post("/v1/predict/batch", files=[("file", (name, data, "image/jpeg"))] * 3)
        assert r.status_code == 413 and "the limit is 2 per request" in r.json()["detail"]
        r = client.post("/v1/predict/batch", files={"other": (name, data, "image/jpeg")})
        assert r.status_code == 422 and "Missing form field 'file'" in r.json()["detail"]
        r = client.post("/v1/predict/batch", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["n_ok"] == 1 and r.json()["results"][0]["filename"] is None
        r = client.post("/v1/predict", files=[("file", (name, data, "image/jpeg"))] * 2)
        assert r.status_code == 422 and "/v1/predict/batch" in r.json()["detail"]


def test_a_batch_of_only_bad_files_is_a_422_with_every_reason(tiny_models: Path) -> None:
    parts = [("file", ("a.jpg", b"nope", "image/jpeg")), ("file", ("b.png", b"", "image/png"))]
    with make_client(tiny_models) as client:
        r = client.post("/v1/predict/batch", files=parts)
        assert r.status_code == 422
        assert [(d["index"], d["filename"], d["status"]) for d in r.json()["detail"]] == [
            (0, "a.jpg", 415),
            (1, "b.png", 422),
        ]
