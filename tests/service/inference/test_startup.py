"""A missing or corrupt model file stops the service at start-up, naming the file and the reason."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.inference.manifest import ManifestError, sha256_file
from service.inference.runtime import Ensemble, ModelLoadError
from service.main import create_app
from tests.utils import ROOT, tiny_onnx


def test_missing_model_file(models_copy: Path) -> None:
    (models_copy / "tiny1.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"tiny1\.onnx: model file missing"):
        Ensemble.load(models_copy)


def test_sha256_mismatch(models_copy: Path) -> None:
    with (models_copy / "tiny0.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match=r"tiny0\.onnx: sha256 mismatch"):
        Ensemble.load(models_copy)


def test_corrupt_onnx_with_matching_hash(models_copy: Path) -> None:
    path = models_copy / "tiny2.onnx"
    path.write_bytes(b"not an onnx model at all")
    manifest = json.loads((models_copy / "manifest.json").read_text())
    manifest["models"][2]["sha256"] = sha256_file(path)
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"tiny2\.onnx: not a loadable ONNX model"):
        Ensemble.load(models_copy)


def test_wrong_input_shape(models_copy: Path) -> None:
    import numpy as np

    path = models_copy / "tiny1.onnx"
    tiny_onnx(path, np.zeros((3, 4)), np.zeros(4), size=64)
    manifest = json.loads((models_copy / "manifest.json").read_text())
    manifest["models"][1]["sha256"] = sha256_file(path)
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"tiny1\.onnx: input shape"):
        Ensemble.load(models_copy)


def test_missing_or_invalid_manifest(tmp_path: Path, models_copy: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        Ensemble.load(tmp_path / "empty")
    manifest = json.loads((models_copy / "manifest.json").read_text())
    del manifest["classes"]
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="invalid manifest"):
        Ensemble.load(models_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda pre: pre.update(version=9), r"preprocessing version 9 is not implemented"),
        (lambda pre: pre.update(version=2), r"preprocessing version 2 differs .* in: crop \["),
        (lambda pre: pre["crop"].update(threshold=50), r"preprocessing version \d differs .* in: crop"),
        (lambda pre: pre.pop("intensity"), r"preprocessing version \d differs .* in: intensity"),
    ],
)
def test_a_manifest_asking_for_other_preprocessing_is_refused(models_copy: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((models_copy / "manifest.json").read_text())
    change(manifest["preprocessing"])
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"(?s)manifest\.json: invalid manifest .*" + message):
        Ensemble.load(models_copy)


def test_lifespan_fails_so_the_app_never_serves(models_copy: Path) -> None:
    (models_copy / "tiny0.onnx").unlink()
    with pytest.raises(ModelLoadError), TestClient(create_app(Settings(models_dir=models_copy))):
        pass


def test_process_exits_nonzero_with_the_reason(models_copy: Path) -> None:
    (models_copy / "tiny2.onnx").unlink()
    env = {**os.environ, "MRI_MODELS_DIR": str(models_copy), "PORT": "0", "HOST": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "tiny2.onnx: model file missing" in proc.stderr


def test_a_schema_1_manifest_with_free_text_notes_still_loads(models_copy: Path) -> None:
    """Ensembles exported before schema 2 kept their provenance in `notes`: it is shown as training.selection."""
    manifest = json.loads((models_copy / "manifest.json").read_text())
    for key in ("training", "changelog", "intended_use"):
        manifest.pop(key)
    manifest.update(schema_version=1, notes="chosen by hand")
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    loaded = Ensemble.load(models_copy).manifest
    assert loaded.schema_version == 1 and loaded.training.selection == "chosen by hand"
    assert loaded.changelog == [] and "not for clinical use" in loaded.intended_use


def test_python_m_service_announces_a_url_to_open(tiny_models: Path) -> None:
    """`make serve` binds 0.0.0.0; what it prints to click is the localhost address, once the models are ready."""
    from service.__main__ import local_url
    from tests.utils import server_output, start_server

    assert local_url("0.0.0.0", 8000) == "http://localhost:8000/"
    assert local_url("127.0.0.1", 9) == "http://127.0.0.1:9/" and local_url("::1", 9) == "http://[::1]:9/"
    proc, url = start_server(tiny_models, HOST="0.0.0.0")
    port = url.rsplit(":", 1)[1]
    try:
        # the line comes once the models are ready, which start_server waited for
        assert f"open http://localhost:{port}/ (upload page)" in server_output(proc)
        if platform.libc_ver()[0] == "glibc":  # service/api/memory.py
            assert "malloc arenas capped at 2" in server_output(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
