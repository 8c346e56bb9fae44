"""Fit an exported ensemble's prediction sets and shift check on its validation images, then measure what they do
on each split exactly as the service answers (`trainer trust`, and every export).

Research tool, not for clinical use."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.inference.ensemble import majority_vote
from service.inference.manifest import Manifest, write_manifest
from service.inference.runtime import Ensemble
from service.inference.trust import (
    UNLIKE_TRAINING,
    ConformalRule,
    ShiftRule,
    conformal_thresholds,
    prediction_sets,
    shift_scores,
)
from trainer.data.dataset import CLASS_WORDS, Prepared, correct, label_sets
from trainer.data.tiebroken import SPLIT as CHECK_SPLIT
from trainer.data.tiebroken import check_indices
from trainer.evaluation.nonmri import non_mri_verdicts
from trainer.evaluation.splits import eval_splits

LEVELS = (0.9, 0.95, 0.98, 0.99)  # the coverages a prediction set may state (`level` None: chosen on validation)
FLAG_SHARE = 0.05  # the share of validation images the shift check flags
HALVES = 50  # random half splits of validation for the cross-fitted coverage
CONDITIONAL_SIZE_MARGIN = 1.1  # class-conditional sets are used unless they are this much larger on average
METHODS = ("marginal", "class_conditional")


def _votes(ensemble: Ensemble, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    raw, ood = ensemble.run_images_with(images, "ood_score")
    labels, _, mean = majority_vote(ensemble.calibrated(raw))
    return labels, mean, ood


def cross_fitted(
    mean: np.ndarray, y: np.ndarray, labels: np.ndarray, level: float, conditional: bool, seed: int = 0
) -> dict[str, float]:
    """Coverage and mean set size of sets (around the voted `labels`) fitted on one random half of the images and
    measured on the other, averaged over HALVES splits: what the rule gives on images it was not fitted on."""
    rng = np.random.default_rng(seed)
    cover, size = [], []
    for _ in range(HALVES):
        half = rng.permutation(len(y)) < len(y) // 2
        thr = conformal_thresholds(mean[half], y[half], level, conditional)
        sets = prediction_sets(mean[~half], labels[~half], thr)
        cover.append(np.mean([t in s for t, s in zip(y[~half], sets, strict=True)]))
        size.append(np.mean([len(s) for s in sets]))
    return {"coverage": round(float(np.mean(cover)), 4), "mean_set_size": round(float(np.mean(size)), 3)}


def choose_rule(mean: np.ndarray, y: np.ndarray, labels: np.ndarray, level: float | None) -> tuple[float, str, dict]:
    """The level and method of the prediction sets, from figures cross-fitted on validation. Without a `level`: the
    lowest of LEVELS that some method covers within one point of (the voted label is always in the set, so a level
    below the models' accuracy is over-covered and says less than it could); none: the level closest to its
    coverage. The method: class-conditional unless its sets are over CONDITIONAL_SIZE_MARGIN times larger (or it
    misses the level by more than a point where the marginal one does not: few images per class).
    Returns (level, method, {level: {method: cross-fitted figures}})."""
    levels = LEVELS if level is None else (level,)
    fits = {
        f"{lv:g}": {m: cross_fitted(mean, y, labels, lv, m == "class_conditional") for m in METHODS} for lv in levels
    }

    def ok(lv: float, m: str) -> bool:
        return abs(fits[f"{lv:g}"][m]["coverage"] - lv) <= 0.01

    within = [lv for lv in levels if any(ok(lv, m) for m in METHODS)]
    chosen = (
        within[0]
        if within
        else min(levels, key=lambda lv: min(abs(f["coverage"] - lv) for f in fits[f"{lv:g}"].values()))
    )
    marginal, conditional = (fits[f"{chosen:g}"][m] for m in METHODS)
    use_conditional = conditional["mean_set_size"] <= CONDITIONAL_SIZE_MARGIN * marginal["mean_set_size"] and (
        ok(chosen, "class_conditional") or not ok(chosen, "marginal")
    )
    return chosen, METHODS[1] if use_conditional else METHODS[0], fits


def fit_rules(
    ensemble: Ensemble, p: Prepared, level: float | None = None, flag_share: float = FLAG_SHARE
) -> tuple[ConformalRule, ShiftRule | None, dict[str, Any]]:
    """The conformal rule (choose_rule) and the shift rule, both from the ensemble's validation images; and the
    cross-fitted figures they were chosen by."""
    split, va = eval_splits(ensemble, p)["validation"]
    labels, mean, ood = _votes(ensemble, p.x[va])
    y = p.y[va]
    level, method, fits = choose_rule(mean, y, labels, level)
    thresholds = conformal_thresholds(mean, y, level, method == "class_conditional")
    conformal = ConformalRule(
        level=level,
        method=method,
        thresholds={c: round(t, 6) for c, t in zip(ensemble.classes, thresholds, strict=True)},
        n_calibration=len(va),
        split=split,
    )
    reference = [None if o is None else float(np.median(o)) for o in ood]
    scores = shift_scores(ood, reference)
    shift = None
    if scores is not None:
        threshold = float(np.quantile(scores, 1 - flag_share, method="higher"))
        shift = ShiftRule(
            reference=reference,
            threshold=round(threshold, 6),
            flag_share=round(float((scores > threshold).mean()), 4),
            split=split,
        )
    return conformal, shift, fits


def answer_figures(ensemble: Ensemble, images: np.ndarray, fallback: np.ndarray, y: np.ndarray, split: str) -> dict:
    """Coverage and size of the prediction sets, the share of answers flagged uncertain and how often the
    unflagged ones are right (overall and per voted class), measured as the service answers."""
    classes = ensemble.classes
    verdicts, labels = [], []
    for start in range(0, len(images), 64):
        batch = images[start : start + 64]
        for k, pred in enumerate(ensemble.predict_batch(batch)):
            verdicts.append(ensemble.assess(batch[k], bool(fallback[start + k]), pred))
            labels.append(pred.label)
    label = np.array(labels)
    flagged = np.array([v.uncertain for v in verdicts])
    right = correct(y, label, classes)  # a partial label (a tumour of unknown type) admits every tumour class
    sets = [v.prediction_set or [classes[c]] for v, c in zip(verdicts, label, strict=True)]
    admits = label_sets(classes)
    covered = np.array([any(admits[t, classes.index(c)] for c in s) for t, s in zip(y, sets, strict=True)], dtype=bool)
    reasons: dict[str, int] = {}
    for v in verdicts:
        for r in v.reasons:
            reasons[r] = reasons.get(r, 0) + 1

    def share(mask: np.ndarray) -> float | None:
        return round(float(mask.mean()), 4) if len(mask) else None

    unflagged = ~flagged
    return {
        "split": split,
        "n": len(y),
        "coverage": share(covered),
        "mean_set_size": round(float(np.mean([len(s) for s in sets])), 3),
        "singleton_share": share(np.array([len(s) == 1 for s in sets])),
        "flagged_share": share(flagged),
        "unflagged_share": share(unflagged),
        "unflagged_accuracy": share(right[unflagged]),
        "flagged_accuracy": share(right[flagged]),
        "accuracy": share(right),
        "unflagged_by_label": {
            c: {"n": int((unflagged & (label == k)).sum()), "accuracy": share(right[unflagged & (label == k)])}
            for k, c in enumerate(classes)
        },
        "reasons": reasons,
    }


def shifted_figures(ensemble: Ensemble, images: np.ndarray, y: np.ndarray) -> dict[str, dict[str, Any]]:
    """How the flags respond to acquisition shifts the models did not see as such: each shift of
    trainer.data.shifts.SHIFTS applied to the 150×150 crops (not to the uploads: no re-crop; a resolution loss is
    resized back up, as an upscaled upload would be), then answered as the service answers. Per shift: accuracy,
    the share flagged, the share the shift check alone flags, and how often the unflagged answers are right."""
    import cv2

    from trainer.data.shifts import SHIFTS

    def same_size(shifted: np.ndarray, like: np.ndarray) -> np.ndarray:  # a resolution loss, back to the crop's size
        h, w = like.shape[:2]
        return shifted if shifted.shape == like.shape else cv2.resize(shifted, (w, h), interpolation=cv2.INTER_LINEAR)

    out = {}
    for name, _family, shift in SHIFTS:
        shifted = np.stack([same_size(shift(im, i), im) for i, im in enumerate(images)])
        f = answer_figures(ensemble, shifted, np.zeros(len(y), bool), y, "")
        out[name] = {
            "accuracy": f["accuracy"],
            "flagged_share": f["flagged_share"],
            "unlike_training_share": round(f["reasons"].get(UNLIKE_TRAINING, 0) / max(1, len(y)), 4),
            "unflagged_accuracy": f["unflagged_accuracy"],
        }
    return out


def measure_check(models_dir: Any, p: Prepared) -> Manifest:
    """Measure the ensemble's prediction sets and flags, as they are, on the tie-broken check (trust["tie_broken"]);
    nothing is refitted: for an ensemble whose own validation is not among p's splits."""
    ensemble = Ensemble.load(models_dir)
    check = check_indices(p)
    if not len(check):
        raise ValueError("the data has no checked images (no root lists a `val` split)")
    manifest = ensemble.manifest
    figures = answer_figures(ensemble, p.x[check], p.fallback[check], p.y[check], CHECK_SPLIT)
    manifest.ensemble.trust = {**manifest.ensemble.trust, "tie_broken": figures}
    write_manifest(manifest, models_dir)
    return manifest


def apply_trust(models_dir: Any, p: Prepared, level: float | None = None, flag_share: float = FLAG_SHARE) -> Manifest:
    """Fit the rules on validation, write them into the manifest, then measure every split through them."""
    ensemble = Ensemble.load(models_dir)
    conformal, shift, compared = fit_rules(ensemble, p, level, flag_share)
    manifest = ensemble.manifest
    manifest.ensemble.conformal, manifest.ensemble.shift = conformal, shift
    ensemble = Ensemble(manifest, ensemble.sessions)
    trust: dict[str, dict[str, Any]] = {}
    for key, (split, idx) in eval_splits(ensemble, p).items():
        trust[key] = answer_figures(ensemble, p.x[idx], p.fallback[idx], p.y[idx], split)
    check = check_indices(p)
    if len(check):  # where sequence does not give the class: fitted elsewhere, measured here
        trust["tie_broken"] = answer_figures(ensemble, p.x[check], p.fallback[check], p.y[check], CHECK_SPLIT)
    trust["validation"]["cross_fitted"] = compared  # by level and method: what chose the rule
    _, va = eval_splits(ensemble, p)["validation"]
    trust["validation"]["under_shifts"] = shifted_figures(ensemble, p.x[va], p.y[va])
    trust["non_mri"] = {
        "split": "photographs, faces and generated images (trainer nonmri)",
        **non_mri_verdicts(ensemble),
    }
    manifest.ensemble.trust = trust
    manifest.class_words = {
        **{c: CLASS_WORDS[c] for c in manifest.classes if c in CLASS_WORDS},
        **{c: w for c, w in manifest.class_words.items() if c not in CLASS_WORDS},
    }
    write_manifest(manifest, models_dir)
    return manifest
