"""Crop stability: how far each preprocessing version's crop box moves under acquisition shifts (no model
involved; `python -m trainer crops`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from service.image.preprocessing import PREPROCESSING_VERSIONS, crop_and_resize, decode_image
from trainer.data.dataset import DataRoots
from trainer.data.shifts import SHIFTS
from trainer.evaluation.robustness import box_iou
from trainer.progress import progress


def _relative_box(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[float, ...]:
    h, w = shape[:2]
    return (box[0] / w, box[1] / h, box[2] / w, box[3] / h)


def crop_stability(images: list[np.ndarray], versions: dict[str, dict[str, Any]], moved: float = 0.8) -> dict[str, Any]:
    """How far each preprocessing version's crop box moves when a shift is applied before it: per shift and
    version, the mean IoU of the box with the same version's box on the unshifted image (boxes as fractions of
    the image, so downscaling compares too) and the share of images whose box moved (IoU < `moved`).
    Rotations are left out (the head's extent changes with them). Also, per version, how its unshifted boxes
    compare with the first version's (what retraining under it changes), and every unshifted box. No model
    involved: this measures the crop."""
    base = {
        name: [_relative_box(crop_and_resize(im, params=pre).box, im.shape) for im in images]
        for name, pre in versions.items()
    }
    first = next(iter(base.values()))

    def summary(ious: np.ndarray) -> dict[str, float]:
        return {"mean_iou": round(float(ious.mean()), 4), "moved": round(float((ious < moved).mean()), 4)}

    shifts: dict[str, dict[str, dict[str, float]]] = {}
    for shift_name, family, shift in progress(SHIFTS[1:], len(SHIFTS) - 1, "crop stability"):
        if family == "geometry":
            continue
        shifted = [shift(im, i) for i, im in enumerate(images)]
        shifts[shift_name] = {
            name: summary(
                np.array(
                    [
                        box_iou(_relative_box(crop_and_resize(sh, params=pre).box, sh.shape), base[name][i])
                        for i, sh in enumerate(shifted)
                    ]
                )
            )
            for name, pre in versions.items()
        }
    unshifted = {
        name: summary(np.array([box_iou(a, b) for a, b in zip(boxes, first, strict=True)]))
        for name, boxes in base.items()
    }
    return {"shifts": shifts, "unshifted_vs_first": unshifted, "boxes": base}


def measure_crops(
    data: DataRoots, versions: list[int], n: int, seed: int, limit_per_class: int | None, report_dir: Path
) -> tuple[Path, list[str]]:
    """crop_stability of `n` random Training images (seeded) under each version: writes
    <report_dir>/crop_stability.json and crop_boxes.png (the 8 images whose first two versions' boxes differ
    most); returns the JSON's path and a table of mean IoU / share moved per shift and version."""
    from trainer.data.dataset import image_path, scan
    from trainer.evaluation.plots import plot_crop_boxes

    unknown = [v for v in versions if v not in PREPROCESSING_VERSIONS]
    if unknown or len(versions) < 2:
        raise ValueError(f"--versions: two or more of {sorted(PREPROCESSING_VERSIONS)}, got {versions}")
    files = [rel for rel, split, _ in scan(data, limit_per_class) if split == 0]
    random.Random(seed).shuffle(files)
    files = files[:n]
    images = [decode_image(image_path(data, rel).read_bytes()) for rel in files]
    named = {f"v{v}": PREPROCESSING_VERSIONS[v] for v in versions}
    r = crop_stability(images, named)
    report_dir.mkdir(parents=True, exist_ok=True)
    first, second = (r["boxes"][f"v{v}"] for v in versions[:2])
    shown = sorted(range(len(images)), key=lambda i: box_iou(first[i], second[i]))[:8]  # differ most
    plot_crop_boxes(images, r["boxes"], shown, report_dir / "crop_boxes.png")
    out = report_dir / "crop_stability.json"
    r["boxes"] = {name: [[round(c, 4) for c in b] for b in boxes] for name, boxes in r["boxes"].items()}
    out.write_text(json.dumps({"n": len(images), "seed": seed, "files": files, **r}, indent=1) + "\n")
    lines = [
        f"crop box against the unshifted image's, {len(images)} Training images: mean IoU / share moved (IoU < 0.8)",
        f"{'shift':28s} " + " ".join(f"{name:>14s}" for name in named),
    ]
    reference = f"unshifted, vs v{versions[0]}"  # the first version against itself: 1.000 by definition
    for shift_name, row in [*r["shifts"].items(), (reference, r["unshifted_vs_first"])]:
        cells = [f"{row[name]['mean_iou']:.3f} / {row[name]['moved']:.2f}" for name in named]
        if shift_name == reference:
            cells[0] = "(reference)"
        lines.append(f"{shift_name:28s} " + " ".join(cell.rjust(14) for cell in cells))
    lines.append(f"written {out}; the {len(shown)} images whose boxes differ most: {report_dir / 'crop_boxes.png'}")
    return out, lines
