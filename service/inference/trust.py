"""When an answer can be relied on: prediction sets with a stated coverage (split conformal prediction), a shift
score against the validation images, and the one rule that sets `uncertain`.

- Prediction set: the classes whose mean calibrated probability reaches their conformal threshold. The thresholds
  are fitted on held-out validation images (split conformal, LAC score 1 − p(true class), class-conditional when
  that keeps the sets as small): the set holds the true class with probability `level` *for images like the
  calibration images*; on images from elsewhere the guarantee does not hold. The voted label is always in it.
- Shift score: the mean over the models of each model's `ood_score` (Mahalanobis distance of its pooled features
  to its training images) divided by its median on validation; `unlike_training_images` when above the threshold
  that flags `flag_share` of the validation images.
- `uncertain` is true when the prediction set holds more than one class, or the image is unlike the training
  images, or it is probably not a brain MRI (`uncertainty_reasons` says which).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

# the reasons an answer is flagged, in the order they are reported
SEVERAL_CLASSES = "several_classes_possible"
UNLIKE_TRAINING = "unlike_training_images"
NOT_BRAIN_MRI = "probably_not_brain_mri"
# the input warnings (service.image.plausibility) that say an upload is probably not a brain-MRI slice
NOT_MRI_WARNINGS = ("not_grayscale", "no_brain_outline", "no_dark_background")
REASON_WORDS = {
    SEVERAL_CLASSES: "the models cannot single out one class: more than one is plausible",
    UNLIKE_TRAINING: "the image looks unlike the images the models learned from",
    NOT_BRAIN_MRI: "the upload is probably not a brain-MRI slice",
}


class ConformalRule(BaseModel):
    """Split conformal prediction sets, fitted on validation (`trainer trust`)."""

    level: float = Field(gt=0, lt=1, description="The stated coverage: the set holds the true class this often.")
    method: Literal["marginal", "class_conditional"] = Field(
        description="One threshold for all classes, or one per class (coverage holds for each class)."
    )
    thresholds: dict[str, float] = Field(
        description="A class is in the set when its mean calibrated probability is at least its threshold."
    )
    n_calibration: int = Field(description="Validation images the thresholds were fitted on.")
    split: str = Field("", description="Which images they were fitted on.")


class ShiftRule(BaseModel):
    """The `unlike_training_images` check, fitted on validation (`trainer trust`)."""

    reference: list[float | None] = Field(
        description="Per model: the median ood_score of the validation images (None: the model has none)."
    )
    threshold: float = Field(description="Shift scores above this are unlike the training images.")
    flag_share: float = Field(description="The share of validation images the threshold flags.")
    split: str = ""


def conformal_thresholds(mean: np.ndarray, y: np.ndarray, level: float, class_conditional: bool) -> list[float]:
    """Per class, the lowest mean probability that still admits it to the set (1 − the conformal quantile of
    the scores 1 − p(true class)): the ⌈(n+1)·level⌉-th smallest score of the calibration images (of that class
    when class_conditional). Too few images for the level: 0 (the class is always in the set)."""
    n_classes = mean.shape[1]
    scores = 1.0 - mean[np.arange(len(y)), y]

    def threshold(s: np.ndarray) -> float:
        k = math.ceil((len(s) + 1) * level)
        return 0.0 if k > len(s) else float(1.0 - np.sort(s)[k - 1])

    if not class_conditional:
        return [threshold(scores)] * n_classes
    return [threshold(scores[y == c]) for c in range(n_classes)]


def prediction_sets(mean: np.ndarray, labels: np.ndarray, thresholds: list[float]) -> list[list[int]]:
    """For each image, the classes in its prediction set, most probable first; the voted label always included."""
    inside = mean >= np.asarray(thresholds)[None, :]
    inside[np.arange(len(labels)), labels] = True
    return [[int(c) for c in np.argsort(-row) if ok[c]] for row, ok in zip(mean, inside, strict=True)]


def shift_scores(ood: list[np.ndarray | None], reference: list[float | None]) -> np.ndarray | None:
    """Mean over the models with an ood_score of ood / its validation median; None when no model has one."""
    parts = [o / r for o, r in zip(ood, reference, strict=True) if o is not None and r]
    return np.mean(parts, axis=0) if parts else None


def judge(prediction_set: list[int], warnings: list[str]) -> list[str]:
    """The reasons an answer is uncertain (empty: it is not)."""
    reasons = []
    if len(prediction_set) > 1:
        reasons.append(SEVERAL_CLASSES)
    if UNLIKE_TRAINING in warnings:
        reasons.append(UNLIKE_TRAINING)
    if any(w in warnings for w in NOT_MRI_WARNINGS):
        reasons.append(NOT_BRAIN_MRI)
    return reasons
