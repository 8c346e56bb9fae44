"""How an ensemble generalises: its vote per class × MRI sequence group on its validation and test splits, and
each data source scored by a model that never saw it (the recipe's leave-one-source-out runs, or the ensemble
itself for sources outside its training data).

    python -m trainer generalisation --models-dir out/v8/models --work out/v8 --data A --data B ...

Research tool, not for clinical use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.ensemble import majority_vote
from service.inference.manifest import Manifest
from service.inference.runtime import Ensemble
from trainer.data.dataset import CLASSES, PRIMARY_SOURCE, Prepared
from trainer.evaluation.groups import cross_source_figures, group_figures, unseen_label
from trainer.evaluation.splits import eval_splits

FILE = "generalisation.json"


def vote(ensemble: Ensemble, images: np.ndarray) -> np.ndarray:
    return majority_vote(ensemble.predict_images(images))[0] if len(images) else np.zeros(0, int)


def trained_sources(manifest: Manifest) -> set[str]:
    """The sources an ensemble learned from (ensembles from before sources were recorded: the original dataset)."""
    return {s.name for s in manifest.training.sources} or {PRIMARY_SOURCE}


def split_groups(ensemble: Ensemble, p: Prepared, groups: np.ndarray) -> dict[str, dict[str, Any]]:
    """{split key: group_figures} of the ensemble's vote on its validation and test splits (p: its own data)."""
    out = {}
    for key, (split, idx) in eval_splits(ensemble, p).items():
        out[key] = group_figures(p.y[idx], vote(ensemble, p.x[idx]), groups[idx], CLASSES, split)
    return out


def unseen_sources(ensemble: Ensemble, p: Prepared, groups: np.ndarray) -> list[dict[str, Any]]:
    """Every source of p outside the ensemble's training data, scored by its vote (p: any data roots)."""
    seen = trained_sources(ensemble.manifest)
    out = []
    for name in dict.fromkeys(p.source.tolist()):
        if name in seen:
            continue
        idx = np.nonzero(p.source == name)[0]
        model = unseen_label(ensemble.manifest.model_version, str(name))
        out.append(cross_source_figures(str(name), model, p.y[idx], vote(ensemble, p.x[idx]), groups[idx], CLASSES))
    return out


def loso_runs(runs_dir: Path, recipe_of: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(run dir, config) of every finished leave-one-source-out run (config key exclude_source)."""
    out = []
    for result in sorted(Path(runs_dir).glob("*/result.json")):
        cfg = json.loads(result.read_text())["config"]
        if cfg.get("exclude_source") and (result.parent / "model.keras").exists():
            out.append((result.parent, cfg))
    return out


def held_out_sources(runs_dir: Path, p: Prepared, groups: np.ndarray) -> list[dict[str, Any]]:
    """Each leave-one-source-out run scored on every image of the source it was trained without."""
    import keras

    import trainer.models.builders  # noqa: F401  (registers the custom layers for loading)

    out = []
    for run_dir, cfg in loso_runs(runs_dir):
        idx = np.nonzero(p.source == cfg["exclude_source"])[0]
        if not len(idx):
            continue
        model = keras.models.load_model(run_dir / "model.keras")
        pred = np.asarray(model.predict(p.x[idx].astype(np.float32), batch_size=64, verbose=0)).argmax(1)
        out.append(cross_source_figures(cfg["exclude_source"], cfg["name"], p.y[idx], pred, groups[idx], CLASSES))
    return out


def run_groups(report_dir: Path, p: Prepared, groups: np.ndarray) -> list[dict[str, Any]]:
    """Each evaluated run that may vote (not a leave-one-source-out run): its validation accuracy and its worst
    class × sequence group on validation, best worst cell first — what each recipe buys where it fails most."""
    from trainer.evaluation.evaluate import load_leaderboard, validation_probabilities
    from trainer.training.train import evaluation_indices

    try:
        rows = load_leaderboard(report_dir)
    except FileNotFoundError:  # nothing evaluated in this work dir
        return []
    out = []
    for row in rows:
        if row["config"].get("exclude_source"):
            continue
        va, _ = evaluation_indices(p, row["config"])
        pred = validation_probabilities(row, p, report_dir).argmax(1)
        fig = group_figures(p.y[va], pred, groups[va], CLASSES, "validation")
        out.append(
            {
                "name": row["name"],
                "val_accuracy": round(float((pred == p.y[va]).mean()), 4),
                "val_macro_f1": row.get("val_macro_f1"),
                "worst": fig["worst"],
                "by_group": fig["by_group"],
            }
        )
    return sorted(out, key=lambda r: -(r["worst"].get("accuracy") or 0.0))


def tie_broken(ensemble: Ensemble, p: Prepared) -> dict[str, Any] | None:
    """The ensemble's vote on the tie-broken check (data.tiebroken; None when p holds no checked images)."""
    from trainer.data.tiebroken import check_indices, figures_of

    idx = check_indices(p)
    if not len(idx):
        return None
    return figures_of(p, vote(ensemble, p.x[idx]), idx)


def run_checks(runs_dir: Path, p: Prepared, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Each trained run that may vote (not leave-one-source-out) on the tie-broken check, best worst cell first:
    its kept checkpoint's scores where training recorded them on the same data, else computed here."""
    import keras

    import trainer.models.builders  # noqa: F401  (registers the custom layers for loading)
    from trainer.data.tiebroken import check_indices, figures_of

    idx = check_indices(p)
    if not len(idx):
        return []
    out = []
    for result in sorted(Path(runs_dir).glob("*/result.json")):
        done = json.loads(result.read_text())
        cfg = done["config"]
        if cfg.get("exclude_source") or not (result.parent / "model.keras").exists():
            continue
        if names is not None and cfg["name"] not in names:
            continue
        stored = done.get("checkpoint_scores")
        if stored and done.get("data_hash") == p.data_hash:
            fig = stored["check"]
        else:
            model = keras.models.load_model(result.parent / "model.keras")
            pred = np.asarray(model.predict(p.x[idx].astype(np.float32), batch_size=64, verbose=0)).argmax(1)
            fig = figures_of(p, pred, idx)
        out.append({"name": cfg["name"], "checkpoint": done.get("checkpoint"), **fig})
    return sorted(out, key=lambda r: -((r["worst"] or {}).get("accuracy") or 0.0))


FRESH_TEST = "official Testing images with no exact or near duplicate among the Training images of any data root"


def fresh_test(ensembles: list[Ensemble], p: Prepared) -> dict[str, Any]:
    """The ensembles compared on the Testing images none of them can have trained on, nor on a copy of them
    (an official-protocol ensemble trains on near-duplicates of 192 Testing groups, a clean one on none): per
    ensemble accuracy, macro-F1 and glioma recall, and the paired counts with the exact McNemar p of the first
    two."""
    from trainer.data.dataset import TEST, TRAIN
    from trainer.evaluation.tta import paired_counts, scored_vote

    trained_groups = np.unique(p.group[p.split == TRAIN])
    idx = np.nonzero((p.split == TEST) & ~np.isin(p.group, trained_groups))[0]
    out: dict[str, Any] = {"split": FRESH_TEST, "n": len(idx), "of": int((p.split == TEST).sum()), "ensembles": {}}
    right = []
    for ensemble in ensembles:
        summary, ok = scored_vote(ensemble.predict_images(p.x[idx]), p.y[idx], FRESH_TEST)
        out["ensembles"][ensemble.manifest.model_version] = summary
        right.append(ok)
    if len(right) >= 2:
        first, second, pvalue = paired_counts(right[0], right[1])
        out["only_first_right"], out["only_second_right"], out["mcnemar_p"] = first, second, round(pvalue, 4)
    return out


def write(report_dir: Path, figures: dict[str, Any]) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / FILE
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return path
