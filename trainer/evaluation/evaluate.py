"""Evaluate every trained run on validation and on the untouched official Testing split; write the
leaderboard (CSV, Markdown, JSON) and PNG plots."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import trainer.models.builders  # noqa: F401  (registers the custom layers for loading)
from service.image.preprocessing import preprocessing_version
from trainer.data.dataset import CLASSES, Prepared
from trainer.evaluation.metrics import compute_metrics
from trainer.evaluation.plots import plot_confusion, plot_curves, plot_leaderboard
from trainer.training.recipe import Recipe
from trainer.training.train import evaluation_indices

VAL_SPLIT = "validation (carved from Training, duplicate-aware)"
TEST_SPLIT = "official Testing split"
CLEAN_VAL_SPLIT = "validation (carved from Training of every data root, duplicate-aware, nothing near a Testing image)"
POOLED_VAL_SPLIT = "validation (carved from the pooled 80 %, duplicate-aware)"
POOLED_TEST_SPLIT = "pooled held-out 20 % (Training ∪ Testing, duplicate groups kept whole)"
# metrics key and description of each protocol's (validation, test) splits
SPLIT_NAMES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "official": (("validation", VAL_SPLIT), ("official_test", TEST_SPLIT)),
    "clean": (("validation", CLEAN_VAL_SPLIT), ("official_test", TEST_SPLIT)),
    "pooled": (("validation", POOLED_VAL_SPLIT), ("pooled_test", POOLED_TEST_SPLIT)),
}


def split_names(cfg: dict[str, Any]) -> tuple[tuple[str, str], tuple[str, str]]:
    """((validation key, description), (test key, description)) of the protocol cfg was trained under."""
    return SPLIT_NAMES[Recipe.of(cfg).protocol]


def finished_runs(runs_dir: Path) -> list[Path]:
    return sorted(d for d in runs_dir.iterdir() if (d / "result.json").exists() and (d / "model.keras").exists())


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0))


def evaluate_run(run_dir: Path, p: Prepared, report_dir: Path) -> dict[str, Any]:
    """Metrics and plots of one run; reused when the run has not changed since it was last evaluated."""
    cached = report_dir / run_dir.name / "row.json"
    model_path = run_dir / "model.keras"
    if cached.exists() and cached.stat().st_mtime > model_path.stat().st_mtime:
        row = json.loads(cached.read_text())
        if row.get("data_hash") == p.data_hash:  # same files and preprocessing: rows from before these keys get them
            row.setdefault("dataset_hash", p.dataset_hash)
            row.setdefault("preprocessing_version", preprocessing_version(p.preprocessing))
            return dict(row)
    row = _evaluate_run(run_dir, p, report_dir)
    cached.write_text(json.dumps(row, indent=1))
    return row


VAL_PROBS = "val_probs.npy"


def validation_probabilities(row: dict[str, Any], p: Prepared, report_dir: Path) -> np.ndarray:
    """A leaderboard model's validation probabilities (saved by evaluate; recomputed if missing)."""
    path = report_dir / row["name"] / VAL_PROBS
    if path.exists():
        return np.asarray(np.load(path))
    va, _ = evaluation_indices(p, row["config"])
    probs = predict(keras.models.load_model(Path(row["run_dir"]) / "model.keras"), p.x[va])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, probs)
    return probs


def _evaluate_run(run_dir: Path, p: Prepared, report_dir: Path) -> dict[str, Any]:
    result = json.loads((run_dir / "result.json").read_text())
    cfg = result["config"]
    va, te = evaluation_indices(p, cfg)
    (val_key, val_split), (test_key, test_split) = split_names(cfg)
    model = keras.models.load_model(run_dir / "model.keras")
    val_probs = predict(model, p.x[va])
    val = compute_metrics(p.y[va], val_probs, CLASSES, val_split)
    test = compute_metrics(p.y[te], predict(model, p.x[te]), CLASSES, test_split)
    out = report_dir / cfg["name"]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / VAL_PROBS, val_probs)  # for choosing the ensemble by its own validation score
    history = json.loads((run_dir / "history.json").read_text())
    plot_curves(history, cfg["name"], out / "curves.png")
    plot_confusion(val["confusion_matrix"], CLASSES, f"{cfg['name']} — validation", out / "confusion_val.png")
    plot_confusion(test["confusion_matrix"], CLASSES, f"{cfg['name']} — {test_split}", out / "confusion_test.png")
    metrics = {val_key: val, test_key: test}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return {
        "name": cfg["name"],
        "family": cfg["family"],
        "params": result["params"],
        "epochs_run": result["epochs_run"],
        "train_seconds": result["train_seconds"],
        "augment": cfg["augment"],
        "weights_origin": result["weights_origin"],
        "protocol": Recipe.of(cfg).protocol,
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "val_loss": val["loss"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_loss": test["loss"],
        "test_glioma_recall": test["per_class"][CLASSES[0]]["recall"],
        "run_dir": str(run_dir),
        "data_hash": p.data_hash,
        "dataset_hash": p.dataset_hash,
        "preprocessing_version": preprocessing_version(p.preprocessing),
        "metrics": metrics,
        "config": cfg,
    }


LEADERBOARD_COLUMNS = [
    "rank",
    "name",
    "family",
    "params",
    "epochs_run",
    "train_seconds",
    "augment",
    "val_accuracy",
    "val_macro_f1",
    "val_loss",
    "test_accuracy",
    "test_macro_f1",
    "test_loss",
    "test_glioma_recall",
    "weights_origin",
]


def write_leaderboard(rows: list[dict[str, Any]], report_dir: Path) -> None:
    rows.sort(key=lambda r: (-r["val_macro_f1"], r["val_loss"] or 0.0, r["name"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    (report_dir / "leaderboard.json").write_text(json.dumps(rows, indent=1))
    with (report_dir / "leaderboard.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, LEADERBOARD_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = [
        "| " + " | ".join(LEADERBOARD_COLUMNS) + " |",
        "|" + "---|" * len(LEADERBOARD_COLUMNS),
    ]
    md += ["| " + " | ".join(str(r[c]) for c in LEADERBOARD_COLUMNS) + " |" for r in rows]
    protocols = {r.get("protocol", "official") for r in rows}
    test_side = "the official Testing split" if protocols == {"official"} else "the test side of each protocol"
    (report_dir / "leaderboard.md").write_text(
        f"Models ranked by validation macro-F1 (selection metric). The test_* columns are {test_side}, used "
        "for nothing but these columns.\n\n" + "\n".join(md) + "\n"
    )
    plot_leaderboard(rows, report_dir / "leaderboard.png")


def evaluate_all(runs_dir: Path, p: Prepared, report_dir: Path) -> list[dict[str, Any]]:
    runs = finished_runs(runs_dir) if runs_dir.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"no trained runs under {runs_dir}; run `python -m trainer train` first")
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, run in enumerate(runs, 1):
        row = evaluate_run(run, p, report_dir)
        print(
            f"[{i}/{len(runs)}] {row['name']:<32} val F1 {row['val_macro_f1']:.3f}  "
            f"test acc {row['test_accuracy']:.3f} F1 {row['test_macro_f1']:.3f}"
        )
        rows.append(row)
    write_leaderboard(rows, report_dir)
    return rows


def load_leaderboard(report_dir: Path) -> list[dict[str, Any]]:
    """The rows evaluate_all wrote to <report_dir>/leaderboard.json."""
    path = report_dir / "leaderboard.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `python -m trainer evaluate` first")
    return list(json.loads(path.read_text()))
