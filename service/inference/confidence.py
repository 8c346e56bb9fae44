"""Calibrated probabilities and the `uncertain` flag: one implementation, used by the service and by the
trainer (which fits the temperatures and thresholds on the validation split at export)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

EPS = 1e-12

# the reasons a prediction is flagged, in the order they are reported
MODELS_DISAGREE = "models_disagree"
LOW_TOP_PROBABILITY = "low_top_probability"
HIGH_ENTROPY = "high_entropy"


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) along the last axis: the same as dividing the model's logits by T (softmax is
    shift-invariant, and log p = logits − logsumexp). T > 1 softens over-confident models."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs, EPS, 1.0)) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(probs.dtype)


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy / log(classes) along the last axis: 0 = certain, 1 = uniform."""
    p = np.clip(probs, EPS, 1.0)
    return np.asarray(-(p * np.log(p)).sum(axis=-1) / np.log(probs.shape[-1]))


class UncertaintyRule(BaseModel):
    """When a prediction is reported as uncertain. Thresholds are fitted on the validation split."""

    min_top_probability: float = Field(
        0.0, description="Flag when the ensemble's mean probability of its label is below this."
    )
    max_normalized_entropy: float = Field(
        1.0, description="Flag when the entropy of the mean probabilities, / log(classes), is above this."
    )
    flag_disagreement: bool = Field(True, description="Flag when the models do not all vote for the label.")
    target_accuracy: float | None = Field(
        None, description="The validation accuracy the thresholds were chosen to give the confident subset."
    )
    max_right_flagged: float | None = Field(
        None,
        description="Instead: the thresholds flag as many of the wrong validation answers as possible while "
        "flagging at most this share of the right ones.",
    )


def uncertainty_reasons(
    votes: np.ndarray, mean: np.ndarray, label: np.ndarray, rule: UncertaintyRule
) -> list[list[str]]:
    """For each sample: the reasons its prediction is uncertain (empty list: confident).

    votes: (N, classes) vote counts; mean: (N, classes) mean probabilities; label: (N,) voted class.
    """
    n_models = votes.sum(axis=1)
    rows = np.arange(len(label))
    disagree = votes[rows, label] < n_models
    low = mean[rows, label] < rule.min_top_probability
    high = normalized_entropy(mean) > rule.max_normalized_entropy
    out: list[list[str]] = []
    for d, lo, h in zip(disagree, low, high, strict=True):
        reasons = []
        if d and rule.flag_disagreement:
            reasons.append(MODELS_DISAGREE)
        if lo:
            reasons.append(LOW_TOP_PROBABILITY)
        if h:
            reasons.append(HIGH_ENTROPY)
        out.append(reasons)
    return out
