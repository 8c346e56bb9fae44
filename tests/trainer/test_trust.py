"""trainer/export/trust.py: the level and method of the prediction sets chosen on validation, and the figures
measured through the service's own verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.inference.runtime import Ensemble
from tests.utils import make_cam_ensemble
from trainer.export.trust import LEVELS, answer_figures, choose_rule, cross_fitted, shifted_figures


def _model(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probabilities, labels (their arg-max) and truths of a model right on about `accuracy` of n images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    label = np.where(rng.random(n) < accuracy, y, (y + rng.integers(1, 4, n)) % 4)
    mean = rng.dirichlet(np.ones(4) * 0.5, n) * 0.4
    mean[np.arange(n), label] += 0.6
    mean[np.arange(n), y] += 0.15 * (label != y)  # the truth is often second
    return mean / mean.sum(1, keepdims=True), label, y


def test_the_lowest_level_the_sets_meet_is_chosen() -> None:
    mean, label, y = _model(600, 0.8)
    level, method, fits = choose_rule(mean, y, label, None)
    assert level == 0.9 and set(fits) == {f"{lv:g}" for lv in LEVELS}
    assert abs(fits["0.9"][method]["coverage"] - 0.9) <= 0.01


def test_an_accurate_model_over_covers_low_levels_so_a_higher_one_is_stated() -> None:
    """The vote is always in the set: a model right on 99.7 % of images covers that much at any level."""
    mean, label, y = _model(1000, 0.997)
    level, _, fits = choose_rule(mean, y, label, None)
    assert fits["0.9"]["marginal"]["coverage"] > 0.95
    assert level == 0.99


def test_a_stated_level_is_kept_and_cross_fitting_measures_on_the_other_half() -> None:
    mean, label, y = _model(600, 0.8)
    level, _, fits = choose_rule(mean, y, label, 0.95)
    assert level == 0.95 and list(fits) == ["0.95"]
    fit = cross_fitted(mean, y, label, 0.95, False)
    assert 0.93 <= fit["coverage"] <= 0.97 and fit["mean_set_size"] > 1


def test_figures_and_shifts_are_measured_as_the_service_answers(tmp_path: Path) -> None:
    ensemble = Ensemble.load(make_cam_ensemble(tmp_path / "models"))  # bright images are unlike the training ones
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (6, 150, 150, 3), dtype=np.uint8)
    y = np.zeros(6, int)
    f = answer_figures(ensemble, dark, np.zeros(6, bool), y, "test")
    assert f["n"] == 6 and f["split"] == "test" and f["flagged_share"] + f["unflagged_share"] == 1.0
    shifts = shifted_figures(ensemble, dark, y)
    assert shifts["none"]["accuracy"] == f["accuracy"]
    assert shifts["brightness ×1.4"]["unlike_training_share"] >= shifts["none"]["unlike_training_share"]
    assert all(0 <= v["flagged_share"] <= 1 for v in shifts.values())


def test_a_partial_label_is_right_and_covered_by_any_tumour_class(tmp_path: Path) -> None:
    """Br35H tumours of unknown type (label ANY_TUMOUR): right when the vote is any tumour class, covered when the
    prediction set holds one; the same images labelled no tumour score the opposite."""
    from trainer.data.dataset import ANY_TUMOUR, CLASSES

    ensemble = Ensemble.load(make_cam_ensemble(tmp_path / "models"))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 60, (6, 150, 150, 3), dtype=np.uint8)
    voted = np.array([p.label for p in ensemble.predict_batch(images)])
    tumour = np.array([CLASSES[k] != "no_tumor" for k in voted])
    partial = answer_figures(ensemble, images, np.zeros(6, bool), np.full(6, ANY_TUMOUR), "check")
    assert partial["accuracy"] == round(float(tumour.mean()), 4)
    no_tumour = answer_figures(ensemble, images, np.zeros(6, bool), np.full(6, CLASSES.index("no_tumor")), "check")
    assert no_tumour["accuracy"] == round(1 - float(tumour.mean()), 4)
    assert partial["coverage"] >= partial["accuracy"]  # a set covers whenever its answer is right


def test_an_ensemble_from_other_data_gets_its_flags_measured_on_the_check_without_a_refit(tmp_path: Path) -> None:
    from service.inference.manifest import load_manifest
    from tests.trainer.test_tiebroken import _partial_root, _tie_broken_root
    from tests.utils import MRI_FIXTURES
    from trainer.data.dataset import prepare
    from trainer.export.trust import measure_check

    models = make_cam_ensemble(tmp_path / "models")
    before = load_manifest(models)
    p = prepare([MRI_FIXTURES, _tie_broken_root(tmp_path), _partial_root(tmp_path)], tmp_path / "cache")
    after = measure_check(models, p)
    check = after.ensemble.trust["tie_broken"]
    assert check["n"] == int(p.held.sum()) and "never trained on" in check["split"]
    assert after.ensemble.conformal == before.ensemble.conformal  # nothing refitted
    assert set(before.ensemble.trust) < set(load_manifest(models).ensemble.trust)
