"""The not-an-MRI checks that need no model: colour, and the dark background around a cropped head."""

from __future__ import annotations

import numpy as np
import pytest

from service.plausibility import (
    NO_DARK_BACKGROUND,
    NOT_GRAYSCALE,
    background_level,
    background_levels,
    input_warnings,
)
from service.preprocessing import preprocess_bytes
from tests.conftest import MRI_FIXTURES

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
    colour[..., 0] = 255  # red, and no dark grey level (mean of channels is 85)
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
