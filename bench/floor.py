"""`make bench`'s compute floor: the merged graph on ready crops, the crop itself, the same models in Keras, the
test images and the baseline ensemble's models dir. Research tool, not for clinical use."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadtest import ROOT
from service.image.preprocessing import preprocess_bytes, to_model_input
from service.inference.runtime import Ensemble

FIXTURES = ROOT / "tests" / "fixtures" / "mri"


def baseline_dir(spec: str) -> Path:
    """A models dir to compare against: a path, or `git:<rev>` for the models/ folder of a commit (written to a
    temporary dir; the service verifies every file against its manifest as usual)."""
    import tempfile

    if not spec.startswith("git:"):
        return Path(spec)
    rev = spec.removeprefix("git:")
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "models/"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    out = Path(tempfile.mkdtemp(prefix="mri-baseline-"))
    for name in listing.stdout.split():
        blob = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
        (out / Path(name).name).write_bytes(blob)
    return out


def bench_images() -> list[bytes]:
    """The 512×512 fixture JPEGs, as a phone would upload them."""
    import cv2

    out = []
    for path in sorted(FIXTURES.glob("*/*/*.jpg")):
        data = path.read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is not None and img.shape[:2] == (512, 512):
            out.append(data)
    if not out:
        raise FileNotFoundError(f"no 512×512 JPEG fixtures under {FIXTURES}")
    return out


def stats(ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, float)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def timed(fn: Callable[[int], Any], n: int, warmup: int = 3) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return stats(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SIZES = (256, 512, 1024, 2048)


def measure_sizes(images: list[bytes], n: int = 40) -> dict[str, dict[str, float]]:
    """Preprocessing (decode + crop + resize to the model input) of the same slices re-encoded as JPEGs
    of each side length: what a larger upload costs before the models, which always see 150×150."""
    import cv2

    out = {}
    for side in SIZES:
        scaled = []
        for data in images:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            resized = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
            scaled.append(cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        out[str(side)] = timed(lambda i, s=scaled: preprocess_bytes(s[i % len(s)]), n)  # type: ignore[misc]
    return out


def measure_floor(models_dir: Path, images: list[bytes], threads: int, n: int) -> dict[str, float]:
    """The models alone: one ready crop per call, the outputs /v1/predict asks for."""
    ensemble = Ensemble.load(models_dir, threads=threads)
    params = ensemble.manifest.preprocessing
    crops = [to_model_input(preprocess_bytes(b, params=params).image) for b in images]

    def once(i: int) -> None:
        ensemble.run_with(crops[i % len(crops)], "ood_score")

    return timed(once, n)


def measure_crop(models_dir: Path, images: list[bytes], n: int) -> dict[str, float]:
    """Decode + crop + resize of the same uploads, under the ensemble's preprocessing."""
    params = Ensemble.load(models_dir).manifest.preprocessing
    return timed(lambda i: preprocess_bytes(images[i % len(images)], params=params), n)


def measure_keras(models_dir: Path, images: list[bytes], n: int, runs: Path) -> dict[str, Any]:
    """The original app's way: three Keras models, `model.predict` on each request (TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from service.inference.manifest import load_manifest
    from trainer.models.builders import build_from_config

    manifest = load_manifest(models_dir)
    models, origin = [], []
    for entry in manifest.models:
        saved = runs / entry.name / "model.keras"
        if saved.exists():
            models.append(keras.models.load_model(saved))
            origin.append("trained")
        else:  # same architecture, same compute; weights do not change the time
            cfg = {**entry.config, "weights": "none"} if entry.family == "transfer" else entry.config
            models.append(build_from_config(cfg, tuple(manifest.input.shape[1:]), len(manifest.classes)))  # type: ignore[arg-type]
            origin.append("same architecture, untrained weights")

    def once(i: int) -> None:
        x = to_model_input(preprocess_bytes(images[i % len(images)], params=manifest.preprocessing).image)
        for m in models:
            m.predict(x, verbose=0)

    return {**timed(once, n), "models": origin, "tensorflow": md.version("tensorflow")}


def image_size_mb(image: str) -> float | None:
    try:
        out = subprocess.run(
            ["docker", "image", "inspect", image, "--format", "{{.Size}}"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return round(int(out.stdout.strip()) / 1e6, 1) if out.returncode == 0 and out.stdout.strip().isdigit() else None
