"""Builders the tests share: tiny ONNX ensembles, a live server, fixture paths (no fixtures here: conftest.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.image.preprocessing import IMAGE_SIZE, PREPROCESSING_PARAMS
from service.inference.ensemble import VOTE_RULE
from service.inference.manifest import Manifest, sha256_file, write_manifest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MRI_FIXTURES = FIXTURES / "mri"
DATASET = (ROOT / ".." / "shared" / "data" / "brain-tumor-mri").resolve()
CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def grid(name: str) -> Path:
    """A grid file of trainer/grids by its file name, wherever it lives (archived ones in grids/archive)."""
    (path,) = (ROOT / "trainer" / "grids").rglob(name)
    return path


def fixture_images() -> list[Path]:
    return sorted(MRI_FIXTURES.glob("*/*/*.jpg"))


def tiny_onnx(path: Path, weights: np.ndarray, bias: np.ndarray, size: int = IMAGE_SIZE) -> None:
    """image (N,size,size,3) → mean over H,W → (N,3) @ W(3,C) + b → softmax. A real, tiny classifier."""
    n_classes = weights.shape[1]
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_tiny_ensemble(models_dir: Path, n_models: int = 3, classes: list[str] | None = None) -> Manifest:
    classes = classes or CLASSES
    models_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n_models):
        path = models_dir / f"tiny{i}.onnx"
        tiny_onnx(path, rng.normal(0, 0.05, (3, len(classes))), rng.normal(0, 1, len(classes)))
        entries.append(
            {
                "name": f"tiny{i}",
                "file": path.name,
                "sha256": sha256_file(path),
                "family": "test",
                "weights_origin": "random (test fixture)",
                "params": 3 * len(classes) + len(classes),
                "parity_max_abs_diff": 0.0,
            }
        )
    manifest = Manifest.model_validate(
        {
            "model_version": "test-1",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "trainer_version": "test",
            "data_hash": "0" * 64,
            "training": {"grids": ["trainer/grids/smoke.toml"], "selection": "tiny test ensemble"},
            "changelog": [{"model_version": "test-1", "date": "2026-12-04", "change": "tiny test ensemble"}],
            "classes": classes,
            "input": {"name": "image", "shape": [None, IMAGE_SIZE, IMAGE_SIZE, 3], "dtype": "float32"},
            "output": {"name": "probabilities", "shape": [None, len(classes)], "dtype": "float32"},
            "preprocessing": PREPROCESSING_PARAMS,
            "models": entries,
            "ensemble": {
                "vote": {k: str(v) for k, v in VOTE_RULE.items()},
                "metrics": {},
                # a class is in the set from a mean probability of 0.25 up: sets of one or two classes
                "conformal": {
                    "level": 0.95,
                    "method": "marginal",
                    "thresholds": dict.fromkeys(classes, 0.25),
                    "n_calibration": 100,
                    "split": "test fixture",
                },
            },
        }
    )
    write_manifest(manifest, models_dir)
    return manifest


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


def make_cam_ensemble(models_dir: Path) -> Path:
    """Three bright-finders (they vote together): class maps, ood_score with threshold 150 on model 0."""
    make_tiny_ensemble(models_dir)
    tmp_path = models_dir
    raw = json.loads((tmp_path / "manifest.json").read_text())
    for entry in raw["models"]:  # three bright-finders vote together
        bright_finder_onnx(tmp_path / entry["file"])
        entry.update(sha256=sha256_file(tmp_path / entry["file"]), outputs=["class_map", "ood_score", "probabilities"])
    raw["models"][0]["ood_threshold"] = 150.0  # mean brightness above 150 is "unlike the training images"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    return tmp_path


def read_manifest(models_dir: Path) -> dict:
    return json.loads((models_dir / "manifest.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# each test server's combined output, by pid (server_output)
_SERVER_LOGS: dict[int, Path] = {}


def start_server(models_dir: Path, **env_vars: str) -> tuple[subprocess.Popen[str], str]:
    """`python -m service` on a free loopback port serving models_dir (extra environment: env_vars); waits for
    /health/ready. Its output goes to a file (server_output): a pipe nobody reads fills after ~64 KB of access log
    and then blocks the server's event loop, which looks like a server that hangs."""
    port = free_port()
    env = {**os.environ, "MRI_MODELS_DIR": str(models_dir), "PORT": str(port), "HOST": "127.0.0.1", **env_vars}
    fd, name = tempfile.mkstemp(prefix="mri-server-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    _SERVER_LOGS[proc.pid] = log_path
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {server_output(proc)}")
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready in 60 s")


def server_output(proc: subprocess.Popen[str]) -> str:
    """Everything a server from start_server has printed so far."""
    return _SERVER_LOGS[proc.pid].read_text(errors="replace")


def run_trainer(*args: str, cwd: Path, **env_vars: str) -> str:
    """`python -m trainer <args>` in a subprocess (extra environment: env_vars); fails the test with its output
    unless it exits 0."""
    env = {**os.environ, **env_vars}
    proc = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def imported_stages(path: Path, package: str, stages: list[str]) -> set[str]:
    """The stage folders of `package` (e.g. trainer's data, models, …) that the module at path imports."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == package and len(parts) > 1 and parts[1] in stages:
                found.add(parts[1])
    return found
