"""Fit an exported ensemble's prediction sets and shift check on its validation images, then measure what they do
on each split exactly as the service answers (`trainer trust`, and every export).

Research tool, not for clinical use."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.ensemble import majority_vote
from service.manifest import Manifest, write_manifest
from service.runtime import Ensemble
from service.trust import ConformalRule, ShiftRule, conformal_thresholds, prediction_sets, shift_scores
from trainer.data.dataset import CLASS_WORDS, Prepared
from trainer.evaluation.nonmri import non_mri_verdicts
from trainer.export.bundle import eval_splits

LEVEL = 0.95  # the stated coverage of the prediction sets
FLAG_SHARE = 0.05  # the share of validation images the shift check flags
HALVES = 50  # random half splits of validation for the cross-fitted coverage
CONDITIONAL_SIZE_MARGIN = 1.1  # class-conditional sets are used unless they are this much larger on average


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


def fit_rules(
    ensemble: Ensemble, p: Prepared, level: float = LEVEL, flag_share: float = FLAG_SHARE
) -> tuple[ConformalRule, ShiftRule | None, dict[str, Any]]:
    """The conformal rule (class-conditional unless its sets are over CONDITIONAL_SIZE_MARGIN times larger) and
    the shift rule, both from the ensemble's validation images; and the cross-fitted comparison of the two."""
    split, va = eval_splits(ensemble, p)["validation"]
    labels, mean, ood = _votes(ensemble, p.x[va])
    y = p.y[va]
    compared = {
        m: cross_fitted(mean, y, labels, level, m == "class_conditional") for m in ("marginal", "class_conditional")
    }
    method = (
        "class_conditional"
        if compared["class_conditional"]["mean_set_size"]
        <= CONDITIONAL_SIZE_MARGIN * compared["marginal"]["mean_set_size"]
        else "marginal"
    )
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
    return conformal, shift, compared


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
    right = label == y
    sets = [v.prediction_set or [classes[c]] for v, c in zip(verdicts, label, strict=True)]
    covered = np.array([classes[t] in s for t, s in zip(y, sets, strict=True)])
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


def apply_trust(models_dir: Any, p: Prepared, level: float = LEVEL, flag_share: float = FLAG_SHARE) -> Manifest:
    """Fit the rules on validation, write them into the manifest, then measure every split through them."""
    ensemble = Ensemble.load(models_dir)
    conformal, shift, compared = fit_rules(ensemble, p, level, flag_share)
    manifest = ensemble.manifest
    manifest.ensemble.conformal, manifest.ensemble.shift = conformal, shift
    ensemble = Ensemble(manifest, ensemble.sessions)
    trust: dict[str, dict[str, Any]] = {}
    for key, (split, idx) in eval_splits(ensemble, p).items():
        trust[key] = answer_figures(ensemble, p.x[idx], p.fallback[idx], p.y[idx], split)
    trust["validation"]["cross_fitted"] = compared
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
