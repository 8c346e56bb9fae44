"""One merged ONNX file for the ensemble: shared layers stored and run once, outputs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.image.preprocessing import preprocess_bytes
from service.inference.manifest import ManifestError, load_manifest, sha256_file
from service.inference.runtime import Ensemble, ModelLoadError
from service.main import create_app
from tests.utils import fixture_images, make_cam_ensemble, tiny_onnx
from trainer.export.merge import MERGED_FILE, merge_models_dir


def _mixed_ensemble(models_dir: Path) -> Path:
    """Two identical bright-finders (class_map, ood_score) and a different tiny classifier."""
    make_cam_ensemble(models_dir)
    raw = json.loads((models_dir / "manifest.json").read_text())
    third = raw["models"][2]
    tiny_onnx(models_dir / third["file"], np.full((3, 4), 0.01), np.arange(4.0))
    third.update(sha256=sha256_file(models_dir / third["file"]), outputs=["probabilities"])
    (models_dir / "manifest.json").write_text(json.dumps(raw))
    return models_dir


def _crops() -> np.ndarray:
    return np.stack([preprocess_bytes(p.read_bytes()).image for p in fixture_images()[:6]])


def test_merged_file_gives_identical_outputs_and_stores_shared_layers_once(tmp_path: Path) -> None:
    models = _mixed_ensemble(tmp_path / "models")
    crops = _crops()
    before = Ensemble.load(models)
    raw0, ood0 = before.run_images_with(crops, "ood_score")
    assert not np.allclose(raw0[0], raw0[2])  # each model's own outputs, not one model's thrice
    pred0, maps0 = before.explain(crops[0])
    size0 = sum(f.stat().st_size for f in models.glob("*.onnx"))

    stats = merge_models_dir(models, crops)
    assert sorted(p.name for p in models.glob("*.onnx")) == [MERGED_FILE]  # the separate files are gone
    manifest = load_manifest(models)
    assert {m.file for m in manifest.models} == {MERGED_FILE}
    assert [m.output_prefix for m in manifest.models] == ["m0/", "m1/", "m2/"]
    assert manifest.ensemble.merge == stats and stats["max_abs_diff"] == 0.0
    # the two bright-finders' weights and nodes exist once; their output nodes stay separate
    assert stats["initializers_after"] < stats["initializers_before"]
    assert stats["nodes_after"] < stats["nodes_before"]
    assert (models / MERGED_FILE).stat().st_size < size0

    after = Ensemble.load(models)
    assert len(after.sessions) == 1 and after.n_models == 3
    assert after.output_names == before.output_names
    raw1, ood1 = after.run_images_with(crops, "ood_score")
    np.testing.assert_array_equal(raw1, raw0)
    assert ood1[2] is None and ood0[2] is None
    np.testing.assert_array_equal(ood1[0], ood0[0])
    pred1, maps1 = after.explain(crops[0])
    assert pred1.label == pred0.label and [n for n, _ in maps1] == [n for n, _ in maps0] == ["tiny0", "tiny1"]
    np.testing.assert_array_equal(maps1[0][1], maps0[0][1])
    with TestClient(create_app(Settings(models_dir=models))) as client:
        data = fixture_images()[0].read_bytes()
        r = client.post("/v1/predict", files={"file": ("x.jpg", data, "image/jpeg")})
        assert r.status_code == 200 and len(r.json()["models"]) == 3
        assert client.post("/v1/explain", files={"file": ("x.jpg", data, "image/jpeg")}).status_code == 200
    with pytest.raises(ValueError, match="already share"):
        merge_models_dir(models, crops)


def test_merged_file_errors_name_the_file_and_the_model(tmp_path: Path) -> None:
    models = _mixed_ensemble(tmp_path / "models")
    merge_models_dir(models, _crops())
    raw = json.loads((models / "manifest.json").read_text())
    raw["models"][1]["output_prefix"] = "m9/"
    (models / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"ensemble\.onnx: no output named 'm9/probabilities' for model 'tiny1'"):
        Ensemble.load(models)
    raw["models"][1]["output_prefix"] = "m1/"
    raw["models"][1]["sha256"] = "0" * 64
    (models / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="two sha256"):
        Ensemble.load(models)
    raw["models"][1]["sha256"] = raw["models"][0]["sha256"]
    (models / "manifest.json").write_text(json.dumps(raw))
    Ensemble.load(models)
    with (models / MERGED_FILE).open("ab") as f:
        f.write(b"x")
    with pytest.raises(ManifestError, match=r"ensemble\.onnx: sha256 mismatch"):
        Ensemble.load(models)


def test_merge_refuses_models_that_do_not_share_the_input(tmp_path: Path) -> None:
    import onnx

    from trainer.export.merge import merge_models

    tiny_onnx(tmp_path / "a.onnx", np.ones((3, 4)), np.zeros(4))
    tiny_onnx(tmp_path / "b.onnx", np.ones((3, 4)), np.zeros(4), size=64)
    a, b = onnx.load(str(tmp_path / "a.onnx")), onnx.load(str(tmp_path / "b.onnx"))
    with pytest.raises(ValueError, match="model 1: input"):
        merge_models([a, b], "image")
    with pytest.raises(ValueError, match="single input 'pixels'"):
        merge_models([a], "pixels")
    merged, stats = merge_models([a, a], "image")  # identical models: everything but the outputs is shared
    assert stats["initializers_after"] == 3 and [o.name for o in merged.graph.output] == [
        "m0/probabilities",
        "m1/probabilities",
    ]


def test_random_operators_are_never_merged() -> None:
    from onnx import TensorProto, helper

    from trainer.export.merge import merge_models

    nodes = [
        helper.make_node("RandomUniform", [], ["noise"], shape=[1, 4], dtype=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Add", ["m", "noise"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "noisy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    merged, _ = merge_models([model, model], "image")
    ops = [n.op_type for n in merged.graph.node]
    assert ops.count("RandomUniform") == 2 and ops.count("ReduceMean") == 1
