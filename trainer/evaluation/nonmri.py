"""How well the service's not-an-MRI warnings work: false flags on real MRI slices (the official Testing
split) and catches on images that are not brain MRI (scikit-image's bundled photographs and scans, 200
grayscale LFW face crops, and generated images: colour and grey noise, gradients, text, shapes, blanks)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.image.preprocessing import CropResult, ImageDecodeError, preprocess_bytes
from service.inference.runtime import Assessment, Ensemble

# scikit-image's Shepp–Logan phantom is a synthetic head slice: excluded from the non-MRI set
NOT_COUNTED = {"phantom.png"}


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def generated(seed: int = 0) -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        yield "generated/colour-noise", _png(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        yield "generated/grey-noise", _png(rng.integers(0, 256, (256, 256), dtype=np.uint8))
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, 256)[None, :, None]
        yield "generated/colour-gradient", _png(np.broadcast_to(a + (b - a) * t, (256, 256, 3)).astype(np.uint8))
        page = np.full((400, 300), 245, np.uint8)
        for line in range(12):
            words = "".join(chr(c) for c in rng.integers(97, 123, 18))
            cv2.putText(page, words, (10, 30 + 30 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 20, 1)
        yield "generated/text-page", _png(page)
        shapes = np.full((256, 256, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(6):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.circle(shapes, tuple(int(v) for v in rng.integers(0, 256, 2)), int(rng.integers(10, 60)), colour, -1)
        yield "generated/colour-shapes", _png(shapes)
        grey_shapes = np.full((256, 256), int(rng.integers(0, 256)), np.uint8)
        for _ in range(6):
            p0, p1 = (tuple(int(v) for v in rng.integers(0, 256, 2)) for _ in range(2))
            cv2.rectangle(grey_shapes, p0, p1, int(rng.integers(0, 256)), -1)
        yield "generated/grey-rectangles", _png(grey_shapes)
        board = ((np.indices((256, 256)) // int(rng.integers(8, 64))).sum(axis=0) % 2 * 255).astype(np.uint8)
        yield "generated/checkerboard", _png(board)
    for value in (0, 128, 255):
        yield "generated/blank", _png(np.full((256, 256), value, np.uint8))


def skimage_images() -> Iterator[tuple[str, bytes]]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    for path in sorted([*data.glob("*.png"), *data.glob("*.jpg")]):
        if path.name not in NOT_COUNTED:
            yield f"scikit-image/{path.name}", path.read_bytes()
    faces = np.load(data / "lfw_subset.npy")
    for face in faces:
        grey = np.clip(face * 255 if face.max() <= 1 else face, 0, 255).astype(np.uint8)
        yield "scikit-image/lfw-face", _png(cv2.resize(grey, (200, 200), interpolation=cv2.INTER_CUBIC))


def non_mri_set() -> list[tuple[str, bytes]]:
    return [*skimage_images(), *generated()]


def flag(ensemble: Ensemble, items: list[tuple[str, bytes]], batch: int = 32) -> list[tuple[str, list[str]]]:
    """(name, warnings) for each item, exactly as /v1/predict computes them."""
    crops, names = [], []
    out: list[tuple[str, list[str]]] = []
    for name, data in items:
        try:
            crops.append(preprocess_bytes(data, params=ensemble.manifest.preprocessing))
            names.append(name)
        except ImageDecodeError as e:
            out.append((name, [f"refused ({e.status})"]))
    for name, verdict in assess_all(ensemble, crops, names, batch):
        out.append((name, verdict.warnings))
    return out


def assess_all(
    ensemble: Ensemble, crops: list[CropResult], names: list[str], batch: int = 32
) -> list[tuple[str, Assessment]]:
    """(name, the service's assessment) of each crop."""
    out = []
    for i in range(0, len(crops), batch):
        part = crops[i : i + batch]
        preds = ensemble.predict_batch(np.stack([c.image for c in part]))
        out += [
            (name, ensemble.assess(crop.image, crop.fallback, pred))
            for name, crop, pred in zip(names[i : i + batch], part, preds, strict=True)
        ]
    return out


def non_mri_verdicts(ensemble: Ensemble) -> dict[str, Any]:
    """How the non-MRI set is answered: the share flagged uncertain, and the share flagged as probably not a
    brain MRI (whose page shows no tumour label as its headline)."""
    from service.inference.trust import NOT_BRAIN_MRI

    crops, names = [], []
    for name, data in non_mri_set():
        try:
            crops.append(preprocess_bytes(data, params=ensemble.manifest.preprocessing))
            names.append(name)
        except ImageDecodeError:
            continue  # refused with a 4xx: no answer to flag
    verdicts = [v for _, v in assess_all(ensemble, crops, names)]
    return {
        "n": len(verdicts),
        "flagged_share": round(float(np.mean([v.uncertain for v in verdicts])), 4),
        "not_brain_mri_share": round(float(np.mean([NOT_BRAIN_MRI in v.reasons for v in verdicts])), 4),
    }


def measure(ensemble: Ensemble, dataset: Path | Sequence[Path]) -> dict[str, Any]:
    """False-flag rate on the official Testing split, catch rate on the non-MRI set, by source."""
    root = Path(dataset) if isinstance(dataset, str | Path) else Path(dataset[0])  # the root with Testing/
    testing = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted((root / "Testing").glob("*/*.jpg"))]
    mri = flag(ensemble, testing)
    other = flag(ensemble, non_mri_set())
    by_source: dict[str, list[int]] = {}
    for name, warns in other:
        source = name.split("/")[0] + "/" + ("lfw-face" if "lfw" in name else name.split("/")[1])
        by_source.setdefault(source, [0, 0])
        by_source[source][0] += int(bool(warns))
        by_source[source][1] += 1
    reasons: Counter[str] = Counter(w for _, warns in other for w in warns)
    mri_reasons: Counter[str] = Counter(w for _, warns in mri for w in warns)
    return {
        "mri_n": len(mri),
        "mri_flagged": sum(bool(w) for _, w in mri),
        "mri_false_flag_rate": round(sum(bool(w) for _, w in mri) / max(1, len(mri)), 4),
        "mri_reasons": dict(mri_reasons),
        "mri_flagged_images": {name: warns for name, warns in mri if warns},
        "non_mri_n": len(other),
        "non_mri_caught": sum(bool(w) for _, w in other),
        "non_mri_catch_rate": round(sum(bool(w) for _, w in other) / max(1, len(other)), 4),
        "non_mri_reasons": dict(reasons),
        "by_source": {k: {"caught": v[0], "n": v[1]} for k, v in sorted(by_source.items())},
        "missed": sorted({name for name, w in other if not w}),
    }
