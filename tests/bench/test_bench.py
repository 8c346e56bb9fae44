"""The bench's raw-socket clients against a real uvicorn process (tiny ensemble): they must count real
answers and fail on wrong ones, or the speed figures would mean nothing."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.clients import check_response, measure_load, measure_service, predict_request
from bench.floor import bench_images
from service.inference.manifest import load_manifest
from tests.utils import ROOT, start_server


def test_predict_request_is_a_well_formed_multipart_post() -> None:
    req = predict_request(b"\xff\xd8jpegbytes")
    head, _, body = req.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/predict HTTP/1.1\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    assert length == len(body) and b"\xff\xd8jpegbytes" in body


def test_check_response_rejects_errors() -> None:
    check_response(200, b'{"label": "glioma"}')
    with pytest.raises(RuntimeError, match="415"):
        check_response(415, b'{"detail": "x"}')
    with pytest.raises(RuntimeError):
        check_response(200, b"{}")


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


E_COMMIT = "dc93c9d"


def test_quantize_keeps_the_configured_nodes_float() -> None:
    """The int8 variants leave what they say in float: the first Conv behind the models' pixel preprocessing
    (layout, RGB→BGR, mean), or every block5 Conv of the VGG16 voters. The merged file computes shared frozen
    layers once (in voter m0): block1 always, block5 too unless the voters fine-tuned it."""
    from bench.floor import baseline_dir
    from bench.quantize import CONFIGS, _kept

    # the int8 experiment is about the VGG16 ensembles: E, the last of them, from git history
    if subprocess.run(["git", "cat-file", "-e", f"{E_COMMIT}^{{commit}}"], cwd=ROOT).returncode != 0:
        pytest.skip(f"commit {E_COMMIT} (ensemble E) not in this clone's history")
    models = baseline_dir(f"git:{E_COMMIT}")
    shipped = models / "ensemble.onnx"
    first = _kept(shipped, CONFIGS["percentile-conv-first-fp32"])
    assert len(first) == 1
    assert re.fullmatch(r"m0/vgg16_transfer_extras_1/vgg16_\w*cam_1/block1_conv1_1/BiasAdd", first[0])
    tuned = any(m.config.get("fine_tune_epochs") for m in load_manifest(models).models)
    voters = {"m0", "m1", "m2"} if tuned else {"m0"}
    trunk = _kept(shipped, CONFIGS["minmax-trunk"])
    block5 = [n for n in trunk if n.endswith("/BiasAdd") and "block5_conv" in n]
    assert len(block5) == 3 * len(voters) and {n.split("/")[0] for n in block5} == voters
    assert all(re.search(r"/block5_conv[123]_1/BiasAdd$", n) for n in block5)
    assert _kept(shipped, CONFIGS["minmax-conv"]) == []


def test_fp16_weights_halve_the_file_and_keep_float32_outputs(tmp_path: Path) -> None:
    """Large initializers are stored as float16 and cast back inside the graph; small ones stay float32; the
    outputs stay float32 and move only by the float16 rounding of the weights."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from trainer.export.merge import halve_weights

    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (256, 64)).astype(np.float32)
    b = rng.normal(0, 1, (64,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    src, dst = tmp_path / "f32.onnx", tmp_path / "f16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert halve_weights(src, dst) == 1
    inits = {i.name: i.data_type for i in onnx.load(str(dst)).graph.initializer}
    assert inits == {"w__fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    x = rng.normal(0, 1, (3, 256)).astype(np.float32)
    y32 = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    y16 = ort.InferenceSession(str(dst)).run(None, {"x": x})[0]
    expected = x @ w.astype(np.float16).astype(np.float32) + b
    assert y16.dtype == np.float32 and np.allclose(y16, expected, atol=1e-4)
    assert 0 < np.abs(y16 - y32).max() < 0.05


def test_transform_dir_rewrites_each_distinct_file_once_and_its_hashes(tiny_models: Path, tmp_path: Path) -> None:
    from bench.quantize import transform_dir
    from service.inference.manifest import load_manifest, sha256_file

    calls: list[str] = []

    def transform(src: Path, dst: Path) -> None:
        calls.append(src.name)
        dst.write_bytes(src.read_bytes() + b"changed")

    transform_dir(tiny_models, tmp_path / "out", transform, weights_dtype="float16")
    manifest = load_manifest(tmp_path / "out")
    files = [m.file for m in manifest.models]
    assert sorted(calls) == sorted(set(files))
    for m in manifest.models:
        assert m.sha256 == sha256_file(tmp_path / "out" / m.file) != sha256_file(tiny_models / m.file)
        assert m.weights_dtype == "float16"
    assert load_manifest(tiny_models).models[0].sha256 == sha256_file(tiny_models / files[0])  # source untouched


def test_baseline_dir_reads_the_models_of_a_commit() -> None:
    """`--baseline git:<rev>` serves the models/ of that commit: the same bytes git holds, beside a plain path."""
    from bench.floor import baseline_dir

    out = baseline_dir("git:HEAD")
    committed = subprocess.run(
        ["git", "show", "HEAD:models/manifest.json"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    assert (out / "manifest.json").read_bytes() == committed
    assert {p.name for p in out.iterdir()} >= {"manifest.json", "README.md"}
    assert baseline_dir(str(ROOT / "models")) == ROOT / "models"


def test_bench_judges_overhead_budget_and_speedup_and_only_reports_efficiency(capsys: pytest.CaptureFixture) -> None:
    from bench.bench import verdicts

    good = {"overhead": 1.14, "service_p50_ms": 12.5, "efficiency": 0.31, "vs_baseline": 0.7, "speedup": 9.0}
    assert verdicts(good) == []
    out = capsys.readouterr().out
    assert "efficiency       0.310  (reported, not judged)" in out and "FAIL" not in out
    assert verdicts({**good, "overhead": 1.25}) == ["overhead"]
    assert verdicts({**good, "service_p50_ms": 31.0, "speedup": 4.0}) == ["service_p50_ms", "speedup"]
