"""How the exported ensemble holds up when the same slices look different.

Images from other scanners, protocols and exports differ from this dataset in brightness, contrast, sharpness,
noise, orientation, resolution and compression. Each shift below is applied to the decoded image *before* the
shared crop (as it would be on an uploaded file), then the service's own code path runs: crop → ensemble →
vote → warnings. Measured on the validation split (the official Testing split carries a shift of its own,
which would mix with these); nothing is selected or tuned on these numbers.

    python -m trainer robustness --docs docs    # ~15 min on 2 cores (430 images); <work>/report/robustness.json + plot

Research tool, not for clinical use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.image.plausibility import input_warnings
from service.image.preprocessing import (
    crop_and_resize,
    decode_image,
    preprocessing_version,
)
from service.inference.runtime import Ensemble
from trainer.data.dataset import DataRoots, image_path
from trainer.data.shifts import SHIFTS
from trainer.evaluation.metrics import compute_metrics
from trainer.progress import progress

SMALL_BOX = 0.2  # a crop box under 20 % of the image is a failed crop (18 of 3264 dataset images, unshifted)


def scale_box(
    box: tuple[int, int, int, int], shape: tuple[int, ...], new_shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1) of an image of `shape` on the same image resized to `new_shape` (at least 1 px)."""
    sx, sy = new_shape[1] / shape[1], new_shape[0] / shape[0]
    x0, y0 = min(int(box[0] * sx), new_shape[1] - 1), min(int(box[1] * sy), new_shape[0] - 1)
    x1, y1 = max(round(box[2] * sx), x0 + 1), max(round(box[3] * sy), y0 + 1)
    return (x0, y0, min(x1, new_shape[1]), min(y1, new_shape[0]))


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def measure(
    ensemble: Ensemble,
    data: DataRoots,
    paths: list[str],
    y: np.ndarray,
    batch: int = 32,
) -> dict[str, Any]:
    """For each shift: accuracy and macro-F1 of the vote, agreement with the unshifted vote, the share of
    failed crops (box < SMALL_BOX of the image) and of images given a not-an-MRI warning. The crop is the
    preprocessing the ensemble's manifest declares. Except for rotations, also the vote's accuracy with the
    crop box held at the unshifted image's (scaled to a downscaled image): the gap between the two accuracies
    is what the crop's movement costs, the rest of the drop is the models' response to the shifted pixels."""
    if SHIFTS[0][0] != "none":
        raise ValueError("the first shift must be 'none' (the reference)")
    originals = [decode_image(image_path(data, p).read_bytes()) for p in paths]
    params = ensemble.manifest.preprocessing
    labels: list[list[int]] = [[] for _ in SHIFTS]
    held: list[list[int]] = [[] for _ in SHIFTS]
    boxes: list[tuple[int, int, int, int]] = []  # the unshifted crop boxes (SHIFTS[0] runs first)
    small, flagged = [0] * len(SHIFTS), [0] * len(SHIFTS)
    jobs = [(k, start) for k in range(len(SHIFTS)) for start in range(0, len(paths), batch)]
    for k, start in progress(jobs, len(jobs), "robustness"):
        shift, crops, held_crops = SHIFTS[k][2], [], []
        for i in range(start, min(start + batch, len(paths))):
            shifted = shift(originals[i], i)
            crop = crop_and_resize(shifted, params=params)
            x0, y0, x1, y1 = crop.box
            small[k] += (x1 - x0) * (y1 - y0) < SMALL_BOX * shifted.shape[0] * shifted.shape[1]
            crops.append(crop)
            if k == 0:
                boxes.append(crop.box)
            elif SHIFTS[k][1] != "geometry":
                box = scale_box(boxes[i], originals[i].shape, shifted.shape)
                held_crops.append(crop_and_resize(shifted, params=params, box=box).image)
        for crop, pred in zip(crops, ensemble.predict_batch(np.stack([c.image for c in crops])), strict=True):
            labels[k].append(pred.label)
            warns = input_warnings(
                crop.image, crop.fallback, pred.ood_scores, ensemble.ood_thresholds, ensemble.background_threshold
            )
            flagged[k] += bool(warns)
        if held_crops:
            held[k] += [pred.label for pred in ensemble.predict_batch(np.stack(held_crops))]
    reference = np.asarray(labels[0])
    manifest = ensemble.manifest
    out: dict[str, Any] = {
        "n": len(paths),
        "model_version": manifest.model_version,
        "preprocessing_version": preprocessing_version(manifest.preprocessing),
        "validation_macro_f1": manifest.ensemble.metrics["validation"].macro_f1
        if "validation" in manifest.ensemble.metrics
        else None,
        "shifts": {},
    }
    for k, (name, family, _) in enumerate(SHIFTS):
        pred_y = np.asarray(labels[k])
        m = compute_metrics(y, None, ensemble.manifest.classes, "validation", y_pred=pred_y)
        out["shifts"][name] = {
            "family": family,
            "accuracy": round(float(m["accuracy"]), 4),
            "macro_f1": round(float(m["macro_f1"]), 4),
            "agreement_with_unshifted": round(float((pred_y == reference).mean()), 4),
            "accuracy_box_held": round(float((np.asarray(held[k]) == y).mean()), 4) if held[k] else None,
            "failed_crops": round(small[k] / len(paths), 4),
            "flagged": round(flagged[k] / len(paths), 4),
        }
    return out


def mean_shifted_accuracy(r: dict[str, Any]) -> float:
    """The vote's accuracy averaged over every shift but 'none' (each shift weighs the same)."""
    accs = [m["accuracy"] for name, m in r["shifts"].items() if name != "none"]
    if not accs:
        raise ValueError("no shifted measurement in this robustness result")
    return float(np.mean(accs))


def ensemble_label(r: dict[str, Any], quote: str = "") -> str:
    """How a robustness result names its ensemble, in the plot and in docs/evaluation.md (quote="`")."""
    return f"{quote}{r.get('model_version', '?')}{quote} (preprocessing v{r.get('preprocessing_version', 1)})"


def plot_robustness(r: dict[str, Any], path: Path, other: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["shifts"])[::-1]
    acc = [r["shifts"][n]["accuracy"] for n in names]
    agree = [r["shifts"][n]["agreement_with_unshifted"] for n in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * len(names)))
    ax.barh(y + 0.2, acc, height=0.4, label="accuracy of the vote")
    ax.barh(y - 0.2, agree, height=0.4, label="vote unchanged by the shift")
    if other:
        acc_other = [other["shifts"].get(n, {}).get("accuracy", np.nan) for n in names]
        label = f"accuracy, ensemble {ensemble_label(other)}"
        ax.scatter(acc_other, y + 0.2, marker="|", s=160, color="crimson", zorder=3, label=label)
    ax.axvline(r["shifts"]["none"]["accuracy"], color="k", lw=0.8, ls="--", label="accuracy, unshifted")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=2, fontsize=7)
    version = r.get("preprocessing_version", 1)
    ax.set_title(f"Robustness to acquisition shifts (validation, n = {r['n']}, preprocessing v{version})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def measure_shipped(
    models_dir: Path, data: DataRoots, files: list[str], y: np.ndarray, report_dir: Path
) -> dict[str, Any]:
    """`measure` of an exported ensemble on these files (its validation images), written to
    <report_dir>/robustness.json."""
    import json

    r = measure(Ensemble.load(models_dir), data, files, y)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "robustness.json").write_text(json.dumps(r, indent=1) + "\n")
    return r


def shift_table(r: dict[str, Any]) -> list[str]:
    """One line per shift (accuracy, macro-F1, agreement, failed crops, flagged) and the mean over the shifts."""
    lines = [
        f"{name:28s} acc {m['accuracy']:.3f}  F1 {m['macro_f1']:.3f}  unchanged {m['agreement_with_unshifted']:.3f}"
        f"  failed crops {m['failed_crops']:.3f}  flagged {m['flagged']:.3f}"
        + (f"  box held {m['accuracy_box_held']:.3f}" if m.get("accuracy_box_held") is not None else "")
        for name, m in r["shifts"].items()
    ]
    return [*lines, f"mean accuracy over the {len(r['shifts']) - 1} shifts: {mean_shifted_accuracy(r):.4f}"]
