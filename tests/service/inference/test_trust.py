"""service/inference/trust.py: prediction sets with their coverage, the shift score, the one rule that sets `uncertain`;
and the model card that reports them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.model_card import render
from service.config import Settings
from service.inference.manifest import load_manifest
from service.inference.trust import (
    NOT_BRAIN_MRI,
    SEVERAL_CLASSES,
    UNLIKE_TRAINING,
    conformal_thresholds,
    judge,
    prediction_sets,
    shift_scores,
)
from service.main import create_app
from tests.utils import ROOT, make_tiny_ensemble


def make_client(models_dir: Path) -> TestClient:
    return TestClient(create_app(Settings(models_dir=models_dir)))  # type: ignore[call-arg]


def _calibrated(n: int, rng: np.random.Generator, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose true class is drawn from them: a calibrated model, right on about 70 %."""
    logits = rng.normal(0, 1.5, (n, classes))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return p, y


@pytest.mark.parametrize("level", [0.9, 0.95])
@pytest.mark.parametrize("conditional", [False, True])
def test_split_conformal_sets_cover_new_images_at_the_stated_level(level: float, conditional: bool) -> None:
    rng = np.random.default_rng(1)
    p_cal, y_cal = _calibrated(2000, rng)
    p_new, y_new = _calibrated(20000, rng)
    thresholds = conformal_thresholds(p_cal, y_cal, level, conditional)
    assert len(thresholds) == 4 and (len(set(thresholds)) > 1) == conditional
    sets = prediction_sets(p_new, p_new.argmax(1), thresholds)
    covered = np.mean([y in s for y, s in zip(y_new, sets, strict=True)])
    assert level - 0.015 <= covered <= level + 0.02, covered  # finite-sample guarantee ≥ level, not far above
    if conditional:  # per class, too
        for c in range(4):
            idx = np.flatnonzero(y_new == c)
            assert np.mean([c in sets[i] for i in idx]) >= level - 0.03


def test_too_few_calibration_images_for_the_level_admit_every_class() -> None:
    p = np.full((5, 4), 0.25)
    assert conformal_thresholds(p, np.zeros(5, int), 0.95, False) == [0.0] * 4


def test_the_vote_is_always_in_its_set_most_probable_first() -> None:
    mean = np.array([[0.5, 0.3, 0.15, 0.05], [0.4, 0.35, 0.2, 0.05]])
    # image 0: only class 0 reaches 0.45; image 1: the vote is class 1 (a 2-of-3 vote against the mean's top)
    assert prediction_sets(mean, np.array([0, 1]), [0.45] * 4) == [[0], [1]]
    assert prediction_sets(mean, np.array([0, 1]), [0.3] * 4) == [[0, 1], [0, 1]]
    assert prediction_sets(mean, np.array([0, 0]), [0.0] * 4) == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_shift_score_is_the_mean_ratio_to_each_models_validation_median() -> None:
    ood = [np.array([10.0, 40.0]), None, np.array([30.0, 30.0])]
    np.testing.assert_allclose(shift_scores(ood, [20.0, None, 30.0]), [0.75, 1.5])
    assert shift_scores([None, None], [None, None]) is None
    assert shift_scores([np.array([1.0])], [None]) is None  # no reference: not scored


def test_one_meaning_of_uncertain() -> None:
    assert judge([2], []) == []
    assert judge([2], ["low_contrast"]) == []  # a quality warning alone does not flag
    assert judge([2, 0], []) == [SEVERAL_CLASSES]
    assert judge([2], [UNLIKE_TRAINING]) == [UNLIKE_TRAINING]
    for w in ("not_grayscale", "no_brain_outline", "no_dark_background"):
        assert judge([2], [w]) == [NOT_BRAIN_MRI]
    assert judge([1, 2], ["not_grayscale", UNLIKE_TRAINING]) == [SEVERAL_CLASSES, UNLIKE_TRAINING, NOT_BRAIN_MRI]


def test_model_card_renders_the_manifest_readably(tmp_path: Path) -> None:
    make_tiny_ensemble(tmp_path)
    manifest = load_manifest(tmp_path)
    html = render(manifest)
    assert "<h1>" in html and "test-1" in html and "not for clinical use" in html.lower()
    assert "no tumour" in html  # class names in words
    assert "95 %" in html  # the prediction sets' stated level
    assert f"Only {len(manifest.classes)} classes" in html  # counted from the manifest, not typed
    with make_client(tmp_path) as c:
        r = c.get("/model-card")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "test-1" in r.text
        icon = c.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_bundled_model_card_reports_coverage_set_sizes_and_flag_rates_with_their_splits() -> None:
    manifest = load_manifest(ROOT / "models")
    html = render(manifest)
    trust = manifest.ensemble.trust
    assert trust is not None and "validation" in trust
    assert "set holds the true class" in html and "mean set size" in html and "flagged" in html
    for figures in trust.values():
        assert figures["split"] in html


def test_models_endpoint_serves_the_rules_and_their_figures() -> None:
    with make_client(ROOT / "models") as c:
        body = c.get("/v1/models").json()
    ensemble = body["ensemble"]
    assert 0 < ensemble["conformal"]["level"] < 1
    assert set(ensemble["conformal"]["thresholds"]) == set(body["classes"])
    v = ensemble["trust"]["validation"]
    assert {"coverage", "mean_set_size", "flagged_share", "unflagged_accuracy", "split", "n"} <= set(v)
    assert ensemble["shift"]["threshold"] > 0


def test_model_card_names_every_source_with_its_licence_and_the_share_alike_duty(tmp_path: Path) -> None:
    import json

    make_tiny_ensemble(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["training"]["sources"] = [
        {"name": "figshare", "root": "more", "images": 10, "licence": "CC BY 4.0", "citation": "J. Cheng et al."},
        {"name": "IXI T1w", "root": "ixi", "images": 5, "licence": "CC BY-SA 3.0", "citation": "IXI dataset"},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    html = render(load_manifest(tmp_path))
    assert "CC BY 4.0" in html and "J. Cheng et al." in html and "IXI dataset" in html
    assert "licensed CC BY-SA 3.0: these models, derived from it, are shared under the same licence" in html
    raw["training"]["sources"] = raw["training"]["sources"][:1]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert "shared under the same licence" not in render(load_manifest(tmp_path))


def test_the_tie_broken_check_is_served_and_on_the_model_card(tmp_path: Path) -> None:
    """The check where sequence does not give the class: a manifest's figures reach /v1/models and the card."""
    import json

    from trainer.data.tiebroken import check_figures

    make_tiny_ensemble(tmp_path)
    y = np.array([0] * 10 + [2] * 10 + [4] * 4)
    pred = np.array([2] * 3 + [0] * 7 + [2] * 10 + [3, 2, 2, 2])
    seq = np.array(["FLAIR"] * 10 + ["T1C"] * 10 + [""] * 4)
    src = np.array(["TCGA-LGG"] * 20 + ["br35h-yes"] * 4)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["ensemble"]["tie_broken"] = check_figures(y, pred, src, seq)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    html = render(load_manifest(tmp_path))
    assert "Where sequence does not give the class" in html
    assert "70.0 % (10)" in html and "25.0 % of 4 tumours of unknown type" in html
    assert "Worst cell: glioma on FLAIR (TCGA-LGG), 70.0 % of 10" in html
    with make_client(tmp_path) as c:
        check = c.get("/v1/models").json()["ensemble"]["tie_broken"]
    assert check["worst"] == {"source": "TCGA-LGG", "class": "glioma", "sequence": "FLAIR", "n": 10, "accuracy": 0.7}
    assert check["sources"][1]["answered_tumour"] == 0.25
    raw["ensemble"].pop("tie_broken")
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert "Where sequence does not give the class" not in render(load_manifest(tmp_path))
