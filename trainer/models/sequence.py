"""Sequence groups: which MRI sequence a slice looks like (T1, T1 with contrast, T2/FLAIR), to see whether a model
tells the classes by anatomy or by sequence.

In the training collections sequence and class are tied (many no-tumour slices are T2/FLAIR, most gliomas T1 with
contrast); accuracy per class × sequence group shows a model that learned "T2-looking → no tumour". The groups
come from a softmax regression (a linear probe) on frozen ImageNet EfficientNet-Lite0 features of the prepared
crop, fitted on slices labelled by eye (trainer/data/sequence_labels.csv; T2 and FLAIR are one group: CSF bright
or lesions bright on a grey brain). Hand-made intensity features (histograms of the head, its centre and its rim)
agreed less with the labels under cross-validation (docs/experiments.md). `trainer sequences` reports the probe's
cross-validated agreement with the labels and draws a contact sheet of each group for a look.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEQUENCE_GROUPS: tuple[str, ...] = ("T1", "T1C", "T2")
GROUP_WORDS = {"T1": "T1-like", "T1C": "T1 with contrast-like", "T2": "T2/FLAIR-like"}
LABELS_FILE = Path(__file__).resolve().parent.parent / "data" / "sequence_labels.csv"
LITE0_WEIGHTS = Path("out/weights/efficientnet_lite0_imagenet_notop.weights.h5")
L2 = 1.0  # chosen by 5-fold cross-validated agreement with the labels (0.01, 0.1 and 1.0 compared)


def read_labels(path: Path = LABELS_FILE) -> dict[str, str]:
    """{prepared path: group} of the slices labelled by eye (rows labelled anything else, e.g. CT, are left out)."""
    with path.open(newline="") as f:
        return {row["path"]: row["sequence"] for row in csv.DictReader(f) if row["sequence"] in SEQUENCE_GROUPS}


def embed(crops: np.ndarray, weights: str | Path = LITE0_WEIGHTS, batch_size: int = 64) -> np.ndarray:
    """Pooled features of frozen ImageNet EfficientNet-Lite0 (`python -m trainer weights efficientnet_lite0`) for
    prepared crops (uint8 N×150×150×3): what the sequence classifier reads."""
    from trainer.models.builders import build_transfer
    from trainer.models.features import pooled_feature_model

    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: run `python -m trainer weights efficientnet_lite0` first")
    model = build_transfer(tuple(crops.shape[1:]), len(SEQUENCE_GROUPS), "efficientnet_lite0", str(weights), 0, 8, 0.0)
    extractor = pooled_feature_model(model)
    return np.asarray(extractor.predict(crops.astype(np.float32), batch_size=batch_size, verbose=0))


@dataclass
class SequenceClassifier:
    """Softmax regression on standardised features (L2-regularised, full-batch gradient descent, groups weighted
    equally)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (features + 1, groups)

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 1500, lr: float = 0.1
    ) -> SequenceClassifier:
        mean, scale = x.mean(0), x.std(0) + 1e-6
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        k = len(SEQUENCE_GROUPS)
        onehot = np.eye(k)[y]
        # each group weighs the same whatever its count: T2 and T1 slices are fewer than T1C ones
        sample_w = (len(y) / (k * np.bincount(y, minlength=k).clip(1)))[y][:, None]
        w = np.zeros((z.shape[1], k))
        for _ in range(steps):
            p = _softmax(z @ w)
            grad = z.T @ ((p - onehot) * sample_w) / len(z) + l2 * np.vstack([w[:-1], np.zeros((1, k))])
            w -= lr * grad
        return cls(mean, scale, w)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = np.hstack([(x - self.mean) / self.scale, np.ones((len(x), 1))])
        return _softmax(z @ self.weights)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x).argmax(1)


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def cross_validate(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions (stratified folds): how a classifier fitted without an image labels it."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        fold[idx] = np.arange(len(idx)) % folds
    out = np.empty(len(y), int)
    for f in range(folds):
        model = SequenceClassifier.fit(x[fold != f], y[fold != f])
        out[fold == f] = model.predict(x[fold == f])
    return out


def labelled_indices(paths: np.ndarray, labels: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(indices into paths, group indices) of the labelled images present."""
    where = {str(p): i for i, p in enumerate(paths)}
    found = [(where[p], SEQUENCE_GROUPS.index(g)) for p, g in labels.items() if p in where]
    if not found:
        return np.zeros(0, int), np.zeros(0, int)
    idx, grp = zip(*sorted(found), strict=True)
    return np.array(idx), np.array(grp)


PROBE_FILE = Path(__file__).resolve().parent.parent / "data" / "sequence_probe.npz"


def save_probe(model: SequenceClassifier, path: Path = PROBE_FILE) -> Path:
    np.savez(path, mean=model.mean.astype(np.float32), scale=model.scale.astype(np.float32), weights=model.weights)
    return path


def load_probe(path: Path = PROBE_FILE) -> SequenceClassifier:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fit it with `python -m trainer sequences` (all data roots)")
    with np.load(path) as z:
        return SequenceClassifier(z["mean"], z["scale"], z["weights"])


def prepared_groups(
    crops: np.ndarray, data_hash: str, cache_dir: Path, weights: str | Path = LITE0_WEIGHTS
) -> np.ndarray:
    """The sequence group (index into SEQUENCE_GROUPS) of every prepared crop by the committed probe, cached per
    data hash and probe."""
    import hashlib

    probe_digest = hashlib.sha256(PROBE_FILE.read_bytes()).hexdigest()[:8] if PROBE_FILE.is_file() else "none"
    path = Path(cache_dir) / f"sequence-groups-{data_hash[:16]}-{probe_digest}.npy"
    if path.exists():
        return np.asarray(np.load(path))
    groups = load_probe().predict(embed(crops, weights))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, groups)
    return groups


def contact_sheet(crops: np.ndarray, groups: np.ndarray, path: Path, per_group: int = 16, seed: int = 0) -> Path:
    """One row block per group of `per_group` random crops (numbered within the group), for checking the groups by
    eye; the numbers let a reviewer write down which ones look wrong."""
    import cv2

    rng = np.random.default_rng(seed)
    cols, side = 8, 112
    blocks = []
    for j, name in enumerate(SEQUENCE_GROUPS):
        members = np.nonzero(groups == j)[0]
        pick: Any = rng.choice(members, min(per_group, len(members)), replace=False) if len(members) else []
        tiles = [cv2.resize(crops[i], (side, side)) for i in pick]
        tiles += [np.zeros((side, side, 3), np.uint8)] * (-len(tiles) % cols or (0 if tiles else cols))
        for t, tile in enumerate(tiles):
            cv2.putText(tile, f"{name} {t}", (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 0), 1)
        blocks += [np.hstack(tiles[r : r + cols]) for r in range(0, len(tiles), cols)]
        blocks.append(np.full((6, cols * side, 3), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(blocks[:-1]), cv2.COLOR_RGB2BGR))
    return path


def study(
    crops: np.ndarray,
    paths: np.ndarray,
    y: np.ndarray,
    source: np.ndarray,
    classes: list[str],
    weights: str | Path = LITE0_WEIGHTS,
    probe_path: Path = PROBE_FILE,
) -> tuple[dict, np.ndarray]:
    """Fit the probe on every labelled image among the crops (saved at probe_path), with its 5-fold
    cross-validated agreement with the labels; then group every crop. Returns (report, groups)."""
    labels = read_labels()
    idx, grp = labelled_indices(paths, labels)
    if len(np.unique(grp)) < len(SEQUENCE_GROUPS):
        raise ValueError(f"labelled images of every group are needed; found {np.bincount(grp).tolist()}")
    feats = embed(crops, weights)
    oof = cross_validate(feats[idx], grp)
    confusion = np.zeros((len(SEQUENCE_GROUPS),) * 2, int)
    for a, b in zip(grp, oof, strict=True):
        confusion[a, b] += 1
    model = SequenceClassifier.fit(feats[idx], grp)
    save_probe(model, probe_path)
    groups = model.predict(feats)
    counts = {
        str(s): {
            c: {g: int(((source == s) & (y == k) & (groups == j)).sum()) for j, g in enumerate(SEQUENCE_GROUPS)}
            for k, c in enumerate(classes)
            if ((source == s) & (y == k)).any()
        }
        for s in dict.fromkeys(source.tolist())
    }
    report = {
        "labelled": len(idx),
        "labelled_per_group": {g: int((grp == j).sum()) for j, g in enumerate(SEQUENCE_GROUPS)},
        "cv_agreement": round(float((oof == grp).mean()), 4),
        "cv_confusion": {
            "rows": "label",
            "columns": "probe",
            "groups": list(SEQUENCE_GROUPS),
            "matrix": confusion.tolist(),
        },
        "counts": counts,
    }
    return report, groups
