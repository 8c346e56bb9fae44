"""Classification metrics in plain numpy (matching the manifest's Metrics schema)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.inference.confidence import UncertaintyRule, uncertainty_reasons
from service.inference.ensemble import majority_vote
from trainer.data.dataset import CLASSES


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray | None,
    classes: list[str],
    split: str,
    y_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix and (given probs) log loss.

    y_pred defaults to the arg-max of probs (pass it for a vote whose label is not the arg-max).
    """
    if y_pred is None:
        if probs is None:
            raise ValueError("need probs or y_pred")
        y_pred = probs.argmax(axis=1)
    n = len(classes)
    cm = confusion(y_true, y_pred, n)
    per_class = {}
    f1s = []
    for c, name in enumerate(classes):
        tp = cm[c, c]
        precision = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        recall = tp / cm[c, :].sum() if cm[c, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[name] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
            "support": int(cm[c, :].sum()),
        }
    loss = None
    if probs is not None:
        p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-7, 1.0)
        loss = round(float(-np.log(p_true).mean()), 4)
    return {
        "split": split,
        "n": len(y_true),
        "accuracy": round(float((y_true == y_pred).mean()), 4),
        "macro_f1": round(float(np.mean(f1s)), 4),
        "loss": loss,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def vote_metrics(probs: np.ndarray, y: np.ndarray, split: str) -> dict[str, Any]:
    """Metrics of the majority vote of probs (models, N, classes) against labels y."""
    labels, _, mean = majority_vote(probs)
    return compute_metrics(y, mean, CLASSES, split, y_pred=labels)


def flagged_answers(probs: np.ndarray, y: np.ndarray, rule: UncertaintyRule) -> tuple[np.ndarray, np.ndarray]:
    """(flagged uncertain, voted label is right) per image of probs (models, N, classes)."""
    labels, votes, mean = majority_vote(probs)
    return np.array([bool(r) for r in uncertainty_reasons(votes, mean, labels, rule)]), labels == y


def flag_shares(flagged: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """The share of wrong answers flagged and of right ones flagged (a key is missing when there are none)."""
    out = {}
    if (~correct).any():
        out["wrong_flagged_rate"] = float(flagged[~correct].mean())
    if correct.any():
        out["right_flagged_rate"] = float(flagged[correct].mean())
    return out


def flag_rates(probs: np.ndarray, y: np.ndarray, rule: UncertaintyRule) -> dict[str, float]:
    """The trust figures: the share of wrong answers the `uncertain` flag catches, and of right ones it doubts."""
    return {k: round(v, 4) for k, v in flag_shares(*flagged_answers(probs, y, rule)).items()}
