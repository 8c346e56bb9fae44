"""Is this upload plausibly a brain-MRI slice? Warnings, not refusals: the prediction is still returned.

- `not_grayscale`: MRI slices are grey; the colourfulness of the crop (mean of max−min over the RGB
  channels, 0–1) is 0 on every image of the dataset, so anything above COLOUR_THRESHOLD is a colour image.
- `no_brain_outline`: no plausible largest contour was found; the whole image was classified.
- `unlike_training_images`: a model's `ood_score` (Mahalanobis distance of its pooled features to the
  nearest class of its training images) is above its threshold (99.5th percentile on validation).
"""

from __future__ import annotations

import numpy as np

NOT_GRAYSCALE = "not_grayscale"
NO_BRAIN_OUTLINE = "no_brain_outline"
UNLIKE_TRAINING_IMAGES = "unlike_training_images"
COLOUR_THRESHOLD = 0.02


def colourfulness(rgb: np.ndarray) -> float:
    """Mean over pixels of (max − min) over the colour channels, scaled to 0–1 (0 for a grey image)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    return float(spread.mean() / 255.0)


def input_warnings(
    crop_rgb: np.ndarray, crop_fallback: bool, ood_scores: list[float | None], thresholds: list[float | None]
) -> list[str]:
    out = []
    if colourfulness(crop_rgb) > COLOUR_THRESHOLD:
        out.append(NOT_GRAYSCALE)
    if crop_fallback:
        out.append(NO_BRAIN_OUTLINE)
    if any(s is not None and t is not None and s > t for s, t in zip(ood_scores, thresholds, strict=True)):
        out.append(UNLIKE_TRAINING_IMAGES)
    return out
