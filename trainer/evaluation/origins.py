"""Where does the pooled protocol lose accuracy? Its held-out 20 % mixes the two collections of the dataset
(images from the official Training folder and from the official Testing folder). This splits a pooled export's
scores by origin, and compares it with the shipped (official-protocol) ensemble on the held-out images that
neither of them trained on, nor on a copy of them (duplicate groups cross the two folders).

    python -m trainer pooled --work out/v6/ms-pooled --cache out/cache     (writes <work>/report/origins.json)

Research tool, not for clinical use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.runtime import Ensemble
from trainer.data.dataset import SPLITS, Prepared
from trainer.evaluation.splits import eval_splits, test_key
from trainer.evaluation.tta import paired_counts, scored_vote
from trainer.training.recipe import Recipe
from trainer.training.train import train_val_indices

FILE = "origins.json"


def by_origin(ensemble: Ensemble, p: Prepared) -> dict[str, dict[str, dict[str, Any]]]:
    """{split key: {origin folder: n, accuracy, macro-F1, glioma recall}} of the ensemble's vote on its own
    validation and test split, each split divided by the official folder its images come from."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, (split, idx) in eval_splits(ensemble, p).items():
        probs = ensemble.predict_images(p.x[idx])
        out[key] = {}
        for code, folder in enumerate(SPLITS):
            mask = p.split[idx] == code
            if mask.any():
                scores, _ = scored_vote(probs[:, mask], p.y[idx][mask], f"{split}, {folder} folder")
                out[key][folder] = {"n": int(mask.sum()), **scores}
    return out


def unseen_by_both(pooled: Ensemble, shipped: Ensemble, p: Prepared) -> dict[str, dict[str, Any]]:
    """The pooled export against the shipped ensemble on the pooled held-out images neither trained on, by origin.
    An image counts as unseen by the shipped ensemble when no member of its duplicate group (exact or near) was in
    the shipped ensemble's training images: Training-folder images of its validation split, and the Testing-folder
    images without a near-copy in the Training folder's training part (groups cross the two folders). Both vote on
    the same images; exact McNemar test."""
    if pooled.manifest.data_hash != p.data_hash or shipped.manifest.data_hash != p.data_hash:
        raise ValueError("both ensembles must be trained on these images with this preprocessing")
    if (test_key(pooled.manifest), test_key(shipped.manifest)) != ("pooled_test", "official_test"):
        raise ValueError("compares a pooled-protocol export with an official-protocol one")
    cfg = shipped.manifest.models[0].config
    shipped_train, _ = train_val_indices(p, float(cfg["val_fraction"]), int(cfg["seed"]), Recipe.of(cfg).protocol)
    held_out = eval_splits(pooled, p)["pooled_test"][1]
    unseen = held_out[~np.isin(p.group[held_out], p.group[shipped_train])]
    subsets = {folder: unseen[p.split[unseen] == code] for code, folder in enumerate(SPLITS)}
    out: dict[str, dict[str, Any]] = {}
    for folder, idx in subsets.items():
        if not len(idx):
            continue
        y = p.y[idx]
        row: dict[str, Any] = {"n": len(idx)}
        row["pooled"], right_pooled = scored_vote(pooled.predict_images(p.x[idx]), y, f"{folder} folder")
        row["shipped"], right_shipped = scored_vote(shipped.predict_images(p.x[idx]), y, f"{folder} folder")
        only_pooled, only_shipped, pvalue = paired_counts(right_pooled, right_shipped)
        row.update(only_pooled_right=only_pooled, only_shipped_right=only_shipped, mcnemar_p=round(pvalue, 4))
        out[folder] = row
    return out


def measure_origins(pooled_dir: Path, shipped_dir: Path | None, p: Prepared, report_dir: Path) -> dict[str, Any]:
    """by_origin of the pooled export, plus unseen_by_both against the shipped ensemble when it was trained on the
    same images and preprocessing; written to <report_dir>/origins.json."""
    pooled = Ensemble.load(pooled_dir)
    r: dict[str, Any] = {"pooled": pooled.manifest.model_version, "by_origin": by_origin(pooled, p)}
    if shipped_dir is not None:
        shipped = Ensemble.load(shipped_dir)
        if shipped.manifest.data_hash == p.data_hash:
            r["shipped"] = shipped.manifest.model_version
            r["unseen_by_both"] = unseen_by_both(pooled, shipped, p)
        else:
            print(f"[origins] {shipped_dir} was trained under another preprocessing: no comparison on the same crops")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / FILE).write_text(json.dumps(r, indent=1) + "\n")
    return r


def load_origins(pooled_work: Path, pooled_version: str) -> dict[str, Any] | None:
    """<pooled_work>/report/origins.json when it describes that pooled export, else None."""
    path = pooled_work / "report" / FILE
    if not path.exists():
        return None
    r: dict[str, Any] = json.loads(path.read_text())
    return r if r.get("pooled") == pooled_version else None


def origins_lines(r: dict[str, Any]) -> list[str]:
    """The report's table of a pooled export's scores by origin folder, and the comparison on unseen images."""
    lines = [
        "By the folder each image comes from (`python -m trainer pooled` measures it):",
        "",
        "| split | folder | n | accuracy | macro-F1 | glioma recall |",
        "|---|---|---|---|---|---|",
    ]
    for key, folders in r["by_origin"].items():
        for folder, m in folders.items():
            lines.append(
                f"| {key} | {folder} | {m['n']} | {100 * m['accuracy']:.1f} % | {m['macro_f1']:.3f} | "
                f"{m['glioma_recall']:.3f} |"
            )
    unseen = r.get("unseen_by_both")
    if unseen:
        lines += [
            "",
            f"The same held-out images voted on by the shipped ensemble `{r['shipped']}` (official protocol), where "
            "it never trained on them or on a copy of them either: no image of their duplicate group (exact or "
            "near) was among its training images (Training-folder images of its validation split; Testing-folder "
            "images without a near-copy in the Training folder's training part). The Training-folder row is the "
            "shipped ensemble's validation split, on which its recipe and voters were selected, so that row "
            "favours it; nothing was selected on the Testing-folder row.",
            "",
            "| folder | n | pooled recipe | shipped ensemble | right only by pooled | right only by shipped "
            "| McNemar p |",
            "|---|---|---|---|---|---|---|",
        ]
        for folder, row in unseen.items():
            lines.append(
                f"| {folder} | {row['n']} | {100 * row['pooled']['accuracy']:.1f} % | "
                f"{100 * row['shipped']['accuracy']:.1f} % | {row['only_pooled_right']} | "
                f"{row['only_shipped_right']} | {row['mcnemar_p']:.3f} |"
            )
    return lines
