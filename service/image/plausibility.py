"""Is this upload plausibly a brain-MRI slice? Warnings, not refusals: the prediction is still returned.

- `not_grayscale`: MRI slices are grey; the colourfulness of the crop (mean of max−min over the RGB
  channels, 0–1) is 0 on every image of the dataset, so anything above COLOUR_THRESHOLD is a colour image.
- `no_brain_outline`: no plausible largest contour was found; the whole image was classified.
- `no_dark_background`: a brain-MRI slice cropped to the head still shows its backdrop (air) around it, and
  the backdrop is dark or at least flat. Fires when the crop's BACKGROUND_PERCENTILE-th grey-level percentile
  is above the brightest one of any training image (`ensemble.background_threshold` in the manifest, set at
  export) *and* the darkest BACKGROUND_PERCENTILE % of the crop is not one flat grey level: a viewer or export
  that renders the air mid-grey (a windowing choice) gives a flat grey backdrop, whose spread
  (BACKGROUND_PERCENTILE-th minus FLAT_PERCENTILE-th percentile) stays within FLAT_BACKDROP_SPREAD grey levels.
- `unlike_training_images`: the answer's shift score (service.inference.trust: the models' `ood_score`, the Mahalanobis
  distance of their pooled features to their training images, each over its validation median) is above the
  threshold that flags a stated share of the validation images (`ensemble.shift`); for ensembles without that
  rule, a model's `ood_score` above its own threshold (the largest among the training pool).
"""

from __future__ import annotations

import numpy as np

NOT_GRAYSCALE = "not_grayscale"
NO_BRAIN_OUTLINE = "no_brain_outline"
NO_DARK_BACKGROUND = "no_dark_background"
UNLIKE_TRAINING_IMAGES = "unlike_training_images"
COLOUR_THRESHOLD = 0.02
BACKGROUND_PERCENTILE = 10
FLAT_PERCENTILE = 1
# A flat grey field behind a noisy head, JPEG-encoded at quality 50-95 and cropped, spreads at most 2 grey levels
# between its 1st and 10th percentile after preprocessing versions 1-3 and 4 after version 4, whose crop finds the
# head and keeps less backdrop; the test fixtures' slices on a bright textured backdrop spread 6 or more
# (tests/test_plausibility.py measures both). 4 until version 4 left no room below; 5 sits between.
FLAT_BACKDROP_SPREAD = 5.0


def colourfulness(rgb: np.ndarray) -> float:
    """Mean over pixels of (max − min) over the colour channels, scaled to 0–1 (0 for a grey image)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    # element-wise over the three channel planes: numpy's reductions along a length-3 last axis cost about ten
    # times as much per request, for the same integers
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = np.maximum(np.maximum(r, g), b).astype(np.int16) - np.minimum(np.minimum(r, g), b).astype(np.int16)
    return float(spread.mean() / 255.0)


def _grey_percentiles(images: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """(len(percentiles), N) grey-level (mean over channels) percentiles of a (N, H, W, 3) uint8 batch, equal to
    np.percentile(grey, percentiles, axis=1) ('linear') to the last bit.

    Every request pays for it, so it reads the two order statistics each percentile needs off a histogram of the
    channel sums (integers 0-765) instead of sorting 22,500 floats: about ten times faster. The interpolation is
    numpy's own (its virtual index, and the lerp that switches form at t = 0.5), so that thresholds fitted with
    np.percentile at export keep their meaning.
    """
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got shape {images.shape}")
    sums = (images[..., 0].astype(np.int32) + images[..., 1] + images[..., 2]).reshape(len(images), -1)
    n = sums.shape[1]
    q = np.asarray(percentiles, np.float64) / 100
    virtual = (n - 1) * q  # numpy's virtual index for 'linear'
    below = np.floor(virtual).astype(np.int64)
    t = virtual - below
    below, above = np.clip(below, 0, n - 1), np.clip(below + 1, 0, n - 1)
    out = np.empty((len(q), len(images)), np.float64)
    for i, row in enumerate(sums):
        rank = np.cumsum(np.bincount(row, minlength=766))  # rank[s]: how many sums are ≤ s
        a = np.searchsorted(rank, below, side="right") / 3.0  # the below-th smallest grey level
        b = np.searchsorted(rank, above, side="right") / 3.0
        diff = b - a
        out[:, i] = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return out


def background_levels(images: np.ndarray) -> np.ndarray:
    """background_level of each image of a (N, H, W, 3) batch."""
    return _grey_percentiles(images, [BACKGROUND_PERCENTILE])[0]


def backdrop_spreads(images: np.ndarray) -> np.ndarray:
    """BACKGROUND_PERCENTILE-th minus FLAT_PERCENTILE-th grey-level percentile of each image of a (N, H, W, 3)
    batch: near 0 when the darkest tenth of the crop is one flat level, whatever that level is."""
    low, high = _grey_percentiles(images, [FLAT_PERCENTILE, BACKGROUND_PERCENTILE])
    return high - low


def lack_backdrop(images: np.ndarray, threshold: float) -> np.ndarray:
    """The `no_dark_background` rule for each image of a (N, H, W, 3) batch: the background is brighter than
    `threshold` and is not a flat backdrop either."""
    low, high = _grey_percentiles(images, [FLAT_PERCENTILE, BACKGROUND_PERCENTILE])
    return (high > threshold) & (high - low > FLAT_BACKDROP_SPREAD)


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
    shift: tuple[float | None, float] | None = None,
) -> list[str]:
    """The warnings of one crop. `shift`: (the answer's shift score, its threshold) from the manifest's shift rule,
    which replaces the per-model ood thresholds when given."""
    out = []
    if colourfulness(crop_rgb) > COLOUR_THRESHOLD:
        out.append(NOT_GRAYSCALE)
    if crop_fallback:
        out.append(NO_BRAIN_OUTLINE)
    if background_threshold is not None and bool(lack_backdrop(crop_rgb[None], background_threshold)[0]):
        out.append(NO_DARK_BACKGROUND)
    if shift is not None:
        if shift[0] is not None and shift[0] > shift[1]:
            out.append(UNLIKE_TRAINING_IMAGES)
    elif any(s is not None and t is not None and s > t for s, t in zip(ood_scores, thresholds, strict=True)):
        out.append(UNLIKE_TRAINING_IMAGES)
    return out
