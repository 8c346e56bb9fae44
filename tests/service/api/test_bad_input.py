"""Bad input gets a clear 4xx, never a 5xx: broken and oversized uploads, other formats, missing fields, limits, stalled
uploads (408) and slow work (504)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.inference.runtime import Ensemble
from tests.service.helpers import (
    LIMIT,
    make_client,
    post,
)


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

    from service.api.middleware import TimeoutMiddleware

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
