"""The bundled models/ directory: it loads, predicts, and its headline numbers recompute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.image.plausibility import NO_DARK_BACKGROUND, NOT_GRAYSCALE, input_warnings
from service.image.preprocessing import preprocess_bytes
from service.inference.manifest import load_manifest
from service.inference.runtime import Ensemble
from tests.utils import DATASET, ROOT, fixture_images

MODELS = ROOT / "models"


def test_bundled_ensemble_loads_and_predicts() -> None:
    ensemble = Ensemble.load(MODELS)  # verifies sha256, input and output shapes
    manifest = ensemble.manifest
    assert len(manifest.models) == 3
    assert manifest.classes == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert manifest.input.shape == [None, 150, 150, 3]
    for m in manifest.models:
        # float32 weights match Keras to 1e-4; float16-stored ones move outputs by the rounding (export's limit)
        assert m.weights_origin and m.parity_max_abs_diff <= (1e-4 if m.weights_dtype == "float32" else 1e-2)
        assert {"validation", "official_test"} <= set(m.metrics)
    assert {"validation", "official_test"} <= set(manifest.ensemble.metrics)
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total <= 120 * 1024 * 1024
    # calibration, uncertainty and the extras were fitted at export
    assert all(m.temperature != 1.0 and "official_test" in m.calibration for m in manifest.models)
    assert {"validation", "official_test"} <= set(manifest.ensemble.calibration)
    with_maps = [m for m in manifest.models if "class_map" in m.outputs]
    assert with_maps and all(m.ood_threshold is not None for m in with_maps)
    assert manifest.ensemble.background_threshold is not None
    for path in fixture_images():
        crop = preprocess_bytes(path.read_bytes(), params=manifest.preprocessing)
        pred = ensemble.predict(crop.image)
        assert 0 <= pred.label < 4 and abs(float(pred.mean.sum()) - 1) < 1e-4
        # no real MRI fixture is flagged as not grayscale or without background; the class-map models give heatmaps
        warns = input_warnings(
            crop.image, crop.fallback, pred.ood_scores, ensemble.ood_thresholds, ensemble.background_threshold
        )
        assert NOT_GRAYSCALE not in warns and NO_DARK_BACKGROUND not in warns
    _, maps = ensemble.explain(preprocess_bytes(fixture_images()[0].read_bytes(), params=manifest.preprocessing).image)
    assert [name for name, _ in maps] == [m.name for m in with_maps]


@pytest.mark.dataset
@pytest.mark.skipif(not DATASET.is_dir(), reason=f"dataset not found at {DATASET}")
def test_manifest_metrics_recompute_from_the_onnx_files(tmp_path: Path) -> None:
    manifest = load_manifest(MODELS)
    # every data root the ensemble learned from (they sit beside the original dataset), in the manifest's order
    roots = [DATASET.parent / r for r in dict.fromkeys(s.root for s in manifest.training.sources)] or [DATASET]
    missing = [r for r in roots if not r.is_dir()]
    if missing:
        pytest.skip(f"data roots not found: {missing}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "evaluate",
            "--models-dir",
            str(MODELS),
            *(a for r in roots for a in ("--data", str(r))),
            "--work",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    test = manifest.ensemble.metrics["official_test"]
    assert f"official_test: n={test.n} accuracy {test.accuracy:.4f}" in proc.stdout
    assert "DIFFERS" not in proc.stdout
