"""int8 experiment: statically quantise each shipped ONNX model (QDQ, calibrated on validation images),
then compare the ensemble's accuracy on the official Testing split and the compute floor with float32.

    python -m bench.quantize            # writes bench/results/quantize-*.json; models/ is not modified

Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadtest import RESULTS, ROOT
from service.ensemble import majority_vote
from service.manifest import load_manifest, sha256_file, write_manifest
from service.preprocessing import to_model_input
from service.runtime import Ensemble


class _Reader:
    """onnxruntime CalibrationDataReader over a uint8 image array."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 16) -> None:
        self.batches = iter([to_model_input(images[i : i + batch]) for i in range(0, len(images), batch)])
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        return None if x is None else {self.input_name: x}


def quantize_dir(src: Path, dst: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    shutil.copytree(src, dst, dirs_exist_ok=True)
    manifest = load_manifest(dst)
    for file in dict.fromkeys(m.file for m in manifest.models):  # a merged file is shared by several models
        path = dst / file
        quantize_static(
            str(src / file),
            str(path),
            _Reader(calib, manifest.input.name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        for entry in manifest.models:
            if entry.file == file:
                entry.sha256 = sha256_file(path)
    write_manifest(manifest, dst)


def _files(ensemble: Ensemble) -> list[str]:
    return list(dict.fromkeys(m.file for m in ensemble.manifest.models))


def accuracy(ensemble: Ensemble, x: np.ndarray, y: np.ndarray) -> float:
    labels, _, _ = majority_vote(ensemble.predict_images(x))
    return float((labels == y).mean())


def floor_ms(ensemble: Ensemble, x: np.ndarray, n: int = 40) -> float:
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        ensemble.run_raw(to_model_input(x[i % len(x)]))
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    from trainer.data import prepare
    from trainer.train import evaluation_indices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "brain-tumor-mri")
    ap.add_argument("--work", type=Path, default=ROOT / "out")
    ap.add_argument("--calibration-images", type=int, default=128)
    args = ap.parse_args(argv)
    fp32 = Ensemble.load(args.models_dir)
    p = prepare(args.data, args.work / "cache", fp32.manifest.limit_per_class)
    va, te = evaluation_indices(p, fp32.manifest.models[0].config)
    calib = p.x[np.random.default_rng(0).permutation(va)[: args.calibration_images]]
    with tempfile.TemporaryDirectory() as tmp:
        qdir = Path(tmp) / "int8"
        quantize_dir(args.models_dir, qdir, calib)
        int8 = Ensemble.load(qdir)
        r: dict[str, Any] = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "calibration": f"{len(calib)} validation images, MinMax, QDQ, per-channel int8 weights, uint8 activations",
            "fp32": {"test_accuracy": accuracy(fp32, p.x[te], p.y[te]), "floor_ms": floor_ms(fp32, p.x[te])},
            "int8": {"test_accuracy": accuracy(int8, p.x[te], p.y[te]), "floor_ms": floor_ms(int8, p.x[te])},
            "size_mb": {
                "fp32": round(sum((args.models_dir / f).stat().st_size for f in _files(fp32)) / 1e6, 1),
                "int8": round(sum((qdir / f).stat().st_size for f in _files(int8)) / 1e6, 1),
            },
        }
    drop = (r["fp32"]["test_accuracy"] - r["int8"]["test_accuracy"]) * 100
    r["accuracy_drop_points"] = round(drop, 2)
    r["speedup"] = round(r["fp32"]["floor_ms"] / r["int8"]["floor_ms"], 3)
    r["acceptable"] = drop <= 0.5
    out = RESULTS / f"quantize-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(
        f"fp32: test acc {r['fp32']['test_accuracy']:.4f}, floor {r['fp32']['floor_ms']:.1f} ms, "
        f"{r['size_mb']['fp32']} MB\nint8: test acc {r['int8']['test_accuracy']:.4f}, floor "
        f"{r['int8']['floor_ms']:.1f} ms, {r['size_mb']['int8']} MB\naccuracy drop {drop:.2f} points "
        f"(limit 0.5), speedup {r['speedup']:.2f}× → {'acceptable' if r['acceptable'] else 'rejected'}  ({out.name})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
