"""Appearance randomisation (training/appearance.py) and class × group balancing (no TensorFlow model)."""

from __future__ import annotations

import numpy as np
import pytest

from service.image.preprocessing import preprocess_bytes
from tests.utils import fixture_images
from trainer.training.appearance import free_curve, head_mask, monotone_curve, random_appearance, remap_head


def _crop() -> np.ndarray:
    return preprocess_bytes(fixture_images()[0].read_bytes()).image


def test_curves_map_the_unit_range_and_monotone_ones_keep_the_order() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        up, free = monotone_curve(rng), free_curve(rng)
        assert up.shape == free.shape == (256,)
        assert (np.diff(up) >= 0).all() and up[0] == 0 and up[-1] == 1
        assert free.min() >= 0 and free.max() <= 1
    assert any((np.diff(free_curve(np.random.default_rng(s))) < 0).any() for s in range(5))


def test_the_head_is_remapped_and_the_background_stays_black() -> None:
    crop = _crop()
    grey = crop[..., 0]
    mask = head_mask(grey)
    assert 0.2 < mask.mean() < 0.95
    inverted = remap_head(grey, mask, 1.0 - np.linspace(0, 1, 256))
    assert np.array_equal(inverted[~mask], grey[~mask])
    inside = mask & (grey > 0)
    # inversion: what was bright in the head is now dark, and the other way round
    assert np.corrcoef(inverted[inside].astype(float), grey[inside].astype(float))[0, 1] < -0.9


def test_random_appearance_is_seeded_varied_and_keeps_the_shape() -> None:
    crop = _crop()
    first = random_appearance(crop, np.random.default_rng(3))
    assert first.dtype == np.uint8 and first.shape == crop.shape
    assert np.array_equal(first, random_appearance(crop, np.random.default_rng(3)))
    draws = [random_appearance(crop, np.random.default_rng(s)) for s in range(10)]
    assert len({d.tobytes() for d in draws}) == 10
    # the grey order of tissues changes in some draws: the crop's rank correlation with itself falls below 0
    inside = head_mask(crop[..., 0])
    corr = [np.corrcoef(d[..., 0][inside].astype(float), crop[..., 0][inside].astype(float))[0, 1] for d in draws]
    assert min(corr) < 0 < max(corr)
    with pytest.raises(ValueError, match="uint8"):
        random_appearance(crop.astype(np.float32), np.random.default_rng(0))


def test_cell_weights_balance_class_by_group_cells() -> None:
    from trainer.training.train import cell_weights

    y = np.array([0] * 90 + [0] * 10 + [1] * 10 + [1] * 40)
    groups = np.array([0] * 90 + [1] * 10 + [0] * 10 + [1] * 40)
    w = cell_weights(y, groups, np.arange(len(y)))
    assert w.mean() == pytest.approx(1.0)
    # a cell's total weight grows as √count: rarer cells weigh more per image, common ones more in all
    assert w[95] / w[0] == pytest.approx(3.0) and w[100] / w[110] == pytest.approx(2.0)
    only = np.arange(100)  # the weights follow the cells of the indexed images
    assert cell_weights(y, groups, only)[only].mean() == pytest.approx(1.0)
