"""Majority vote of the ensemble: one implementation, used by the trainer's export and the service."""

from __future__ import annotations

import numpy as np

VOTE_RULE = {
    "rule": "majority",
    "tie_break": "highest_mean_probability",
    "description": (
        "Each model votes for its arg-max class; the class with most votes wins. When classes tie on "
        "votes, the tied class with the highest mean probability across the models wins."
    ),
}


def majority_vote(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probs: (models, samples, classes) → (labels (samples,), votes (samples, classes), mean probs).

    Ties on votes go to the tied class with the highest mean probability.
    """
    if probs.ndim != 3:
        raise ValueError(f"expected (models, samples, classes), got shape {probs.shape}")
    n_models, _, n_classes = probs.shape
    if n_models == 0:
        raise ValueError("no models to vote")
    picks = probs.argmax(axis=2)  # (models, samples)
    votes = np.stack([(picks == c).sum(axis=0) for c in range(n_classes)], axis=1)  # (samples, classes)
    mean = probs.mean(axis=0)
    tied = votes == votes.max(axis=1, keepdims=True)
    labels = np.where(tied, mean, -np.inf).argmax(axis=1)
    return labels, votes, mean
