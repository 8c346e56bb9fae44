"""Temperature scaling, expected calibration error and the uncertainty thresholds, fitted on validation."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.inference.confidence import UncertaintyRule, apply_temperature, normalized_entropy
from service.inference.ensemble import majority_vote
from trainer.evaluation.metrics import flag_shares, flagged_answers

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 301))
ECE_BINS = 15
TARGET_ACCURACY = 0.95
# the `uncertain` flag should catch most wrong answers while doubting few right ones: at most this share of them
MAX_RIGHT_FLAGGED = 0.10


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature (0.05–20, log grid) minimising the negative log-likelihood of probs (N, classes)."""
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on no samples")
    losses = [nll(apply_temperature(probs.astype(np.float64), float(t)), y) for t in TEMPERATURES]
    return round(float(TEMPERATURES[int(np.argmin(losses))]), 4)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (of the arg-max class)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    idx = np.clip((conf * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
    return {"confidence": mean_conf, "accuracy": acc, "count": count, "edges": np.linspace(0, 1, bins + 1)}


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ_bins (n_b / N) |accuracy_b − confidence_b|."""
    r = reliability(probs, y, bins)
    filled = r["count"] > 0
    gaps = np.abs(r["accuracy"][filled] - r["confidence"][filled])
    return float((r["count"][filled] / len(y) * gaps).sum())


def _subsets(probs: np.ndarray, y: np.ndarray, rule: UncertaintyRule) -> dict[str, float]:
    flagged, correct = flagged_answers(probs, y, rule)
    out: dict[str, float] = {"n": len(y), "accuracy": round(float(correct.mean()), 4)}
    out.update({k: round(v, 4) for k, v in flag_shares(flagged, correct).items()})
    for key, mask in (("confident", ~flagged), ("uncertain", flagged)):
        out[f"{key}_n"] = int(mask.sum())
        if mask.any():
            out[f"{key}_accuracy"] = round(float(correct[mask].mean()), 4)
    return out


def choose_rule(probs: np.ndarray, y: np.ndarray, target: float = TARGET_ACCURACY) -> UncertaintyRule:
    """Thresholds giving the confident subset of the validation predictions (optionally: unanimous vote;
    top probability ≥ t; normalised entropy ≤ h) at least `target` accuracy with as many confident
    predictions as possible; if nothing reaches the target, the rule with the best confident accuracy.
    Whether disagreement alone flags a prediction is part of the search (a weak voter that often
    dissents would otherwise flag most predictions)."""
    labels, _, _ = majority_vote(probs)
    correct = labels == y
    best: tuple[int, bool, float, float] | None = None
    fallback: tuple[float, bool, float, float] | None = None
    for flag, t, h, flagged in _candidates(probs, y):
        n = int((~flagged).sum())
        if n < max(10, len(y) // 20):
            continue
        acc = float(correct[~flagged].mean())
        if acc >= target and (best is None or n > best[0]):
            best = (n, flag, t, h)
        if fallback is None or acc > fallback[0]:
            fallback = (acc, flag, t, h)
    chosen = best or fallback
    if chosen is None:
        return UncertaintyRule(target_accuracy=target)
    return UncertaintyRule(
        min_top_probability=chosen[2],
        max_normalized_entropy=chosen[3],
        flag_disagreement=chosen[1],
        target_accuracy=target,
    )


def _candidates(probs: np.ndarray, y: np.ndarray) -> list[tuple[bool, float, float, np.ndarray]]:
    """Every rule of the search grid as (flag disagreement, min top probability, max entropy, flagged mask)."""
    labels, votes, mean = majority_vote(probs)
    unanimous = votes[np.arange(len(y)), labels] == votes.sum(axis=1)
    top = mean[np.arange(len(y)), labels]
    ent = normalized_entropy(mean)
    out = []
    for flag in (True, False):
        for t in np.round(np.arange(0.25, 1.0, 0.025), 3):
            for h in np.round(np.arange(0.05, 1.0001, 0.05), 3):
                confident = (top >= t) & (ent <= h) & (unanimous if flag else True)
                out.append((flag, float(t), float(h), ~confident))
    return out


def choose_trust_rule(
    probs: np.ndarray, y: np.ndarray, max_right_flagged: float = MAX_RIGHT_FLAGGED
) -> UncertaintyRule:
    """Thresholds that flag as many of the wrong validation answers as possible while flagging at most
    `max_right_flagged` of the right ones (ties: fewer right ones flagged). What a user of the flag wants: most
    errors caught, few right answers doubted."""
    labels, _, _ = majority_vote(probs)
    correct = labels == y
    best: tuple[float, float, bool, float, float] | None = None
    for flag, t, h, flagged in _candidates(probs, y):
        rates = flag_shares(flagged, correct)
        right, wrong = rates.get("right_flagged_rate", 0.0), rates.get("wrong_flagged_rate", 0.0)
        if right > max_right_flagged:
            continue
        key = (wrong, -right, flag, t, h)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:  # unreachable: flagging nothing flags no right answer
        return UncertaintyRule(flag_disagreement=False, max_right_flagged=max_right_flagged)
    return UncertaintyRule(
        min_top_probability=best[3],
        max_normalized_entropy=best[4],
        flag_disagreement=best[2],
        max_right_flagged=max_right_flagged,
    )


def calibration_report(
    raw: dict[str, np.ndarray], calibrated: dict[str, np.ndarray], y: dict[str, np.ndarray], rule: UncertaintyRule
) -> dict[str, dict[str, Any]]:
    """By split: ECE of the ensemble's mean probabilities before/after, and the confident/uncertain split."""
    out: dict[str, dict[str, Any]] = {}
    for split in raw:
        before = raw[split].mean(axis=0)
        after = calibrated[split].mean(axis=0)
        out[split] = {
            "ece_before": round(ece(before, y[split]), 4),
            "ece_after": round(ece(after, y[split]), 4),
            "nll_before": round(nll(before, y[split]), 4),
            "nll_after": round(nll(after, y[split]), 4),
            **_subsets(calibrated[split], y[split], rule),
        }
    return out
