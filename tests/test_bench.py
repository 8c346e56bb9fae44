"""The bench's raw-socket clients against a real uvicorn process (tiny ensemble): they must count real
answers and fail on wrong ones, or the speed figures would mean nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.bench import bench_images, check_response, measure_load, measure_service, predict_request
from tests.conftest import start_server


def test_predict_request_is_a_well_formed_multipart_post() -> None:
    req = predict_request(b"\xff\xd8jpegbytes")
    head, _, body = req.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/predict HTTP/1.1\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    assert length == len(body) and b"\xff\xd8jpegbytes" in body


def test_check_response_rejects_errors() -> None:
    check_response(b"HTTP/1.1 200 OK\r\n", b'{"label": "glioma"}')
    with pytest.raises(RuntimeError, match="415"):
        check_response(b"HTTP/1.1 415 Unsupported Media Type\r\n", b'{"detail": "x"}')
    with pytest.raises(RuntimeError):
        check_response(b"HTTP/1.1 200 OK\r\n", b"{}")


def test_clients_time_real_predictions(tiny_models: Path) -> None:
    proc, url = start_server(tiny_models)
    try:
        images = bench_images()
        single = measure_service(url, images, 5)
        load = asyncio.run(measure_load(url, images, clients=4, total=24, max_seconds=60))
        bad = asyncio.run(measure_load(url, [b"not an image"], clients=2, total=4, max_seconds=60))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert single["n"] == 5 and single["p50_ms"] > 0
    assert load["n"] == 24 and load["errors"] == 0 and load["rps"] > 0
    assert bad["errors"] == 4  # a 415 per request, each counted


def test_quantize_keeps_the_configured_nodes_float() -> None:
    """The int8 variants leave what they say in float: the first Conv behind the models' pixel preprocessing
    (layout, RGB→BGR, mean), or every block5 Conv of both VGG16s."""
    from bench.quantize import CONFIGS, _kept

    shipped = Path(__file__).resolve().parent.parent / "models" / "ensemble.onnx"
    assert _kept(shipped, CONFIGS["percentile-conv-first-fp32"]) == [
        "m0/vgg16_transfer_extras_1/vgg16_cam_1/block1_conv1_1/BiasAdd"
    ]
    trunk = _kept(shipped, CONFIGS["minmax-trunk"])
    assert {n for n in trunk if n.endswith("/BiasAdd") and "block5_conv" in n} == {
        f"m{m}/vgg16_transfer_extras_1/vgg16_cam_1/block5_conv{i}_1/BiasAdd" for m in (0, 1) for i in (1, 2, 3)
    }
    assert _kept(shipped, CONFIGS["minmax-conv"]) == []
