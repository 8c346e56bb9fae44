"""The not-an-MRI checks that need no model: colour, and the dark background around a cropped head."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.image.plausibility import (
    FLAT_BACKDROP_SPREAD,
    NO_DARK_BACKGROUND,
    NOT_GRAYSCALE,
    backdrop_spreads,
    background_level,
    background_levels,
    colourfulness,
    input_warnings,
    lack_backdrop,
)
from service.image.preprocessing import PREPROCESSING_VERSIONS, preprocess_bytes
from tests.utils import MRI_FIXTURES

FIXTURES = sorted(MRI_FIXTURES.rglob("*.jpg"))


def test_mri_crops_have_dark_background_and_a_flat_grey_page_does_not() -> None:
    crops = np.stack([preprocess_bytes(p.read_bytes()).image for p in FIXTURES])
    levels = background_levels(crops)
    assert levels == pytest.approx([background_level(c) for c in crops])
    # most fixture slices keep ≥ 10 % near-black background after the crop; none is brighter than 49
    assert np.median(levels) < 30 and levels.max() <= 49, levels.round(1)
    page = np.full((150, 150, 3), 200, np.uint8)
    page[40:60, 20:130] = 30  # dark text on a light page: < 10 % dark
    assert background_level(page) == 200
    assert NO_DARK_BACKGROUND in input_warnings(page, False, [], [], background_threshold=49.0)
    assert input_warnings(page, False, [], [], background_threshold=None) == []  # check off (old manifests)
    for crop in crops:
        assert NO_DARK_BACKGROUND not in input_warnings(crop, False, [], [], background_threshold=49.0)


def test_warnings_keep_their_order_and_reject_non_rgb() -> None:
    colour = np.zeros((150, 150, 3), np.uint8)
    colour[..., 0] = 255  # red to yellow: no dark grey level (mean of channels 85-170) and no flat one
    colour[..., 1] = np.linspace(0, 255, 150).astype(np.uint8)[None, :]
    assert input_warnings(colour, True, [3.0], [2.0], 49.0) == [
        NOT_GRAYSCALE,
        "no_brain_outline",
        NO_DARK_BACKGROUND,
        "unlike_training_images",
    ]
    with pytest.raises(ValueError, match="RGB"):
        background_level(np.zeros((150, 150), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        background_levels(np.zeros((2, 150, 150), np.uint8))


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def test_a_flat_grey_backdrop_spreads_at_most_four_grey_levels_after_jpeg_and_crop() -> None:
    """Where FLAT_BACKDROP_SPREAD comes from: a flat field behind a noisy bright head, JPEG at quality 50-95,
    prepared by every preprocessing version the service implements. Versions 1-3 find no head on such a
    synthetic image and keep all of it (2 grey levels at most); version 4's gamma-normalised mask finds the head,
    so less backdrop stays in the crop and its darkest tenth reaches the JPEG ringing at the head's edge."""
    widest = {}
    for version, params in PREPROCESSING_VERSIONS.items():
        rng = np.random.default_rng(0)
        spreads = []
        for level in (50, 60, 80, 100, 120):
            for quality in (50, 75, 90, 95):
                for size in (256, 512):
                    img = np.full((size, size), level, np.uint8)
                    axes = (int(size * 0.4), int(size * 0.45))
                    cv2.ellipse(img, (size // 2, size // 2), axes, 0, 0, 360, level + 90, -1)
                    head = img > level
                    noisy = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                    img = np.where(head, noisy, img)
                    crop = preprocess_bytes(_jpeg(img, quality), params=params).image
                    spreads.append(float(backdrop_spreads(crop[None])[0]))
        widest[version] = max(spreads)
    assert all(widest[v] <= 2 for v in (1, 2, 3)) and widest[4] <= 4 < FLAT_BACKDROP_SPREAD, widest


def test_mri_slices_on_a_flat_grey_backdrop_pass_and_on_a_textured_bright_one_do_not() -> None:
    """A real slice shown with a mid-grey window floor (everything below it, air included, rendered as one grey,
    as some viewers do) keeps no_dark_background quiet; the same slice with bright noise below that floor is
    flagged."""
    rng = np.random.default_rng(1)
    for path in FIXTURES:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        crop = preprocess_bytes(_jpeg(np.maximum(grey, 80).astype(np.uint8), 90)).image
        assert background_level(crop) > 49  # the rule without the flat-backdrop exception flags it
        assert NO_DARK_BACKGROUND not in input_warnings(crop, False, [], [], background_threshold=49.0), path
        textured = np.maximum(grey, rng.integers(60, 200, grey.shape)).astype(np.uint8)
        crop = preprocess_bytes(_jpeg(textured, 90)).image
        assert backdrop_spreads(crop[None])[0] >= 6 > FLAT_BACKDROP_SPREAD, path  # the margin above the tolerance
        assert NO_DARK_BACKGROUND in input_warnings(crop, False, [], [], background_threshold=49.0), path
    crops = np.stack([preprocess_bytes(p.read_bytes()).image for p in FIXTURES])
    expected = [NO_DARK_BACKGROUND in input_warnings(c, False, [], [], background_threshold=20.0) for c in crops]
    assert lack_backdrop(crops, 20.0).tolist() == expected


def test_channel_measures_equal_numpys_reductions_along_the_channel_axis() -> None:
    """colourfulness and the grey percentiles work on channel planes for speed; the values are the reductions'."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 40, 50, 3), dtype=np.uint8)
    images[0] = images[0, :, :, :1]  # a grey one
    for im in images:
        spread = im.max(axis=2).astype(np.int16) - im.min(axis=2).astype(np.int16)
        assert colourfulness(im) == float(spread.mean() / 255.0)
    grey = images.mean(axis=3).reshape(len(images), -1)
    assert np.array_equal(background_levels(images), np.percentile(grey, [10], axis=1)[0])
    assert colourfulness(images[0]) == 0.0


def test_grey_percentiles_equal_numpys_to_the_last_bit() -> None:
    """The histogram shortcut must give what np.percentile gave when the export fitted the thresholds."""
    from service.image.plausibility import _grey_percentiles

    rng = np.random.default_rng(3)
    crops = np.stack([preprocess_bytes(p.read_bytes()).image for p in FIXTURES])
    batches = [crops] + [
        rng.integers(0, 256, (2, *rng.integers(1, 160, 2), 3), dtype=np.uint8) for _ in range(200)
    ]  # odd sizes, a single pixel, ties
    batches += [(rng.integers(0, 3, (2, 40, 31, 3)) * 100).astype(np.uint8)]
    percentiles = [0.0, 1.0, 10.0, 33.3, 50.0, 99.9, 100.0]
    for images in batches:
        grey = (images[..., 0].astype(np.float64) + images[..., 1] + images[..., 2]) / 3.0
        expected = np.percentile(grey.reshape(len(images), -1), percentiles, axis=1)
        assert np.array_equal(_grey_percentiles(images, percentiles), expected)
