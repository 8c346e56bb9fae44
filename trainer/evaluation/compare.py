"""Is one exported ensemble better than another, or only different? Both vote on the same images (validation
and test split of their protocol), and an exact McNemar test asks whether the images only one of them gets
right lean to one side more than chance would. Writes <work>/report/compare.json.

    python -m trainer compare --models-dir models --candidate out/v4/models

Shipping rules ask for this paired test, not only a higher validation macro-F1: 0.005 of
macro-F1 is a handful of the 430 validation images. Research tool, not for clinical use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.runtime import Ensemble
from trainer.data.dataset import DataRoots, Prepared
from trainer.evaluation.splits import eval_splits
from trainer.evaluation.tta import MCNEMAR_ALPHA, paired_counts, scored_vote


def compare_ensembles(
    reference_dir: Path, candidate_dir: Path, p: Prepared, p_candidate: Prepared | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and glioma recall of both ensembles' votes on each split, the discordant counts and
    the McNemar p-value. Both must be trained on the same images and validation split. `p` holds the images as
    the reference's preprocessing crops them; when the candidate's preprocessing differs, `p_candidate` holds
    the same images (same order) as the candidate's crops them, so each ensemble sees its own input."""
    reference, candidate = Ensemble.load(reference_dir), Ensemble.load(candidate_dir)
    a, b = reference.manifest, candidate.manifest
    p_b = p if p_candidate is None else p_candidate
    for manifest, prepared, where in ((a, p, reference_dir), (b, p_b, candidate_dir)):
        if manifest.data_hash != prepared.data_hash:
            raise ValueError(
                f"{where} was trained on other data or preprocessing than the images given for it; no paired comparison"
            )
    if p.dataset_hash != p_b.dataset_hash or not np.array_equal(p.paths, p_b.paths):
        raise ValueError(f"{reference_dir} and {candidate_dir} were trained on different images; no paired comparison")
    splits_a, splits_b = eval_splits(reference, p), eval_splits(candidate, p_b)
    if splits_a.keys() != splits_b.keys() or any(not np.array_equal(splits_a[k][1], splits_b[k][1]) for k in splits_a):
        raise ValueError(f"{reference_dir} and {candidate_dir} were selected on different splits")
    out: dict[str, Any] = {
        "reference": a.model_version,
        "candidate": b.model_version,
        "preprocessing": {"reference": a.preprocessing.get("version"), "candidate": b.preprocessing.get("version")},
        "splits": {},
    }
    for key, (split, idx) in splits_a.items():
        y = p.y[idx]
        row: dict[str, Any] = {"n": len(idx)}
        right = {}
        for name, ensemble, prepared in (("reference", reference, p), ("candidate", candidate, p_b)):
            row[name], right[name] = scored_vote(ensemble.predict_images(prepared.x[idx]), y, split)
        only_a, only_b, pvalue = paired_counts(right["reference"], right["candidate"])
        row.update(only_reference_right=only_a, only_candidate_right=only_b, mcnemar_p=round(pvalue, 4))
        row["significant"] = row["mcnemar_p"] < MCNEMAR_ALPHA
        out["splits"][key] = row
        print(
            f"[compare] {key:<14} acc {row['reference']['accuracy']:.4f} → {row['candidate']['accuracy']:.4f}, "
            f"macro-F1 {row['reference']['macro_f1']:.4f} → {row['candidate']['macro_f1']:.4f}; right only by the "
            f"reference {only_a}, only by the candidate {only_b}, McNemar p {row['mcnemar_p']:.3f}",
            flush=True,
        )
    return out


def write_comparison(r: dict[str, Any], report_dir: Path) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "compare.json"
    path.write_text(json.dumps(r, indent=1) + "\n")
    return path


def compare_shipped(
    models_dir: Path, candidate_dir: Path, p: Prepared, data: DataRoots, cache: Path, limit_per_class: int | None
) -> dict[str, Any]:
    """compare_ensembles of two exported ensembles, each voting on the images as its own preprocessing crops
    them (same images, same split)."""
    from service.inference.manifest import load_manifest
    from trainer.data.dataset import prepare

    candidate = load_manifest(candidate_dir)
    p_candidate = p
    if candidate.preprocessing != load_manifest(models_dir).preprocessing:
        p_candidate = prepare(data, cache, limit_per_class, candidate.preprocessing)
    return compare_ensembles(models_dir, candidate_dir, p, p_candidate)
