"""Is this upload plausibly a brain-MRI slice? Warnings, not refusals: the prediction is still returned.

- `not_grayscale`: MRI slices are grey; the colourfulness of the crop (mean of max−min over the RGB
  channels, 0–1) is 0 on every image of the dataset, so anything above COLOUR_THRESHOLD is a colour image.
- `no_brain_outline`: no plausible largest contour was found; the whole image was classified.
- `no_dark_background`: a brain-MRI slice cropped to the head still shows dark background (air) around it;
  the crop's BACKGROUND_PERCENTILE-th grey-level percentile is above the brightest one of any training
  image (`ensemble.background_threshold` in the manifest, set at export).
- `unlike_training_images`: a model's `ood_score` (Mahalanobis distance of its pooled features to the
  nearest class of its training images) is above its threshold (the largest on the validation split).
"""

from __future__ import annotations

import numpy as np

NOT_GRAYSCALE = "not_grayscale"
NO_BRAIN_OUTLINE = "no_brain_outline"
NO_DARK_BACKGROUND = "no_dark_background"
UNLIKE_TRAINING_IMAGES = "unlike_training_images"
COLOUR_THRESHOLD = 0.02
BACKGROUND_PERCENTILE = 10


def colourfulness(rgb: np.ndarray) -> float:
    """Mean over pixels of (max − min) over the colour channels, scaled to 0–1 (0 for a grey image)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2).astype(np.int16)
    return float(spread.mean() / 255.0)


def background_levels(images: np.ndarray) -> np.ndarray:
    """background_level of each image of a (N, H, W, 3) batch."""
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got shape {images.shape}")
    grey = images.mean(axis=3).reshape(len(images), -1)
    return np.asarray(np.percentile(grey, BACKGROUND_PERCENTILE, axis=1), np.float64)


def background_level(rgb: np.ndarray) -> float:
    """The BACKGROUND_PERCENTILE-th percentile of the grey level (mean over channels), 0–255: low when at
    least that share of the crop is dark background."""
    if rgb.ndim != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    return float(background_levels(rgb[None])[0])


def input_warnings(
    crop_rgb: np.ndarray,
    crop_fallback: bool,
    ood_scores: list[float | None],
    thresholds: list[float | None],
    background_threshold: float | None = None,
) -> list[str]:
    out = []
    if colourfulness(crop_rgb) > COLOUR_THRESHOLD:
        out.append(NOT_GRAYSCALE)
    if crop_fallback:
        out.append(NO_BRAIN_OUTLINE)
    if background_threshold is not None and background_level(crop_rgb) > background_threshold:
        out.append(NO_DARK_BACKGROUND)
    if any(s is not None and t is not None and s > t for s, t in zip(ood_scores, thresholds, strict=True)):
        out.append(UNLIKE_TRAINING_IMAGES)
    return out
