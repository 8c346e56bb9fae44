"""Sequence groups: the probe, its labels, the per class × group figures (no TensorFlow)."""

from __future__ import annotations

import numpy as np

from trainer.evaluation.groups import cross_source_figures, format_groups, group_figures
from trainer.models.sequence import (
    LABELS_FILE,
    PROBE_FILE,
    SEQUENCE_GROUPS,
    SequenceClassifier,
    cross_validate,
    labelled_indices,
    load_probe,
    read_labels,
    save_probe,
)


def test_the_labels_cover_every_group_and_name_real_files() -> None:
    from tests.utils import ROOT

    labels = read_labels(LABELS_FILE)
    counts = {g: sum(v == g for v in labels.values()) for g in SEQUENCE_GROUPS}
    assert all(n >= 30 for n in counts.values()), counts
    shared = ROOT.parent / "shared" / "data"
    if shared.is_dir():  # the labelled paths are prepared paths of the three roots
        from trainer.data.dataset import image_path

        roots = [shared / "brain-tumor-mri", shared / "brain-tumor-mri-more", shared / "ixi-t1-normal"]
        assert all(image_path(roots, p).is_file() for p in labels)


def test_the_probe_learns_separable_groups_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 20))
    y = np.repeat([0, 1, 2], [20, 60, 20])  # unequal counts, as the labels are
    x = centres[y] + rng.normal(0, 1, (len(y), 20))
    assert (cross_validate(x, y) == y).mean() > 0.95
    probe = SequenceClassifier.fit(x, y)
    path = save_probe(probe, tmp_path / "probe.npz")
    again = load_probe(path)
    assert np.array_equal(again.predict(x), probe.predict(x))
    assert np.allclose(again.probabilities(x).sum(1), 1)
    # noise carries no group: cross-validated agreement falls to about chance
    noise = rng.normal(0, 1, (len(y), 20))
    assert (cross_validate(noise, y) == y).mean() < 0.7


def test_the_committed_probe_matches_the_labels_it_was_fitted_on() -> None:
    probe = load_probe(PROBE_FILE)
    assert probe.weights.shape[1] == len(SEQUENCE_GROUPS) and probe.mean.shape == probe.scale.shape


def test_labelled_indices_find_labelled_paths() -> None:
    paths = np.array(["a.jpg", "b.jpg", "c.jpg"])
    idx, grp = labelled_indices(paths, {"c.jpg": "T2", "a.jpg": "T1", "zzz.jpg": "T1C"})
    assert idx.tolist() == [0, 2] and grp.tolist() == [0, 2]


def test_group_figures_find_the_worst_cell_with_enough_images() -> None:
    classes = ["glioma", "no_tumor"]
    y = np.array([0] * 30 + [1] * 30)
    groups = np.array([0] * 20 + [2] * 10 + [2] * 25 + [0] * 5)
    pred = y.copy()
    pred[20:28] = 1  # glioma on T2: 2 of 10 right
    pred[55:58] = 0  # no_tumor on T1: 2 of 5 right, too few images to be the worst cell
    fig = group_figures(y, pred, groups, classes, "test", min_n=10)
    assert fig["cells"]["glioma"]["T2"] == {"n": 10, "accuracy": 0.2}
    assert fig["cells"]["no_tumor"]["T1"] == {"n": 5, "accuracy": 0.4}
    assert fig["cells"]["glioma"]["T1C"] == {"n": 0, "accuracy": None}
    assert fig["worst"] == {"class": "glioma", "group": "T2", "n": 10, "accuracy": 0.2}
    assert fig["by_group"]["T2"]["n"] == 35
    table = format_groups(fig)
    assert table[2].startswith("| glioma | 100.0 % (20) | – | 20.0 % (10) |")
    cross = cross_source_figures("ixi", "m", y, pred, groups, classes)
    assert cross["n"] == 60 and cross["accuracy"] == round(49 / 60, 4)
    assert cross["per_class"]["glioma"] == {"n": 30, "accuracy": round(22 / 30, 4)}


def test_recipe_means_pool_the_seeds_of_a_recipe_and_keep_ensembles_apart() -> None:
    from trainer.evaluation.groups import recipe_means, recipe_of, unseen_label

    def row(model: str, source: str, accuracy: float) -> dict:
        return {"model": model, "source": source, "accuracy": accuracy}

    cross = [
        row("t-ft-sh4-no-IXI_T1w-clean", "IXI T1w", 0.9),
        row("t-ft-sh4-no-br35h-clean", "br35h", 0.8),
        row("t-ft-sh4-no-IXI_T1w-s7-clean", "IXI T1w", 1.0),
        row("t-ft-sh4-no-br35h-s7-clean", "br35h", 0.7),
        row("t-ft-sh6-app-no-br35h-s11-clean", "br35h", 0.6),
        row(unseen_label("v1", "br35h"), "br35h", 0.5),
    ]
    from trainer.training.recipe import SEED_TAG, seed_tag

    assert SEED_TAG.sub("", f"t-ft-sh4-{seed_tag(7)}-clean") == "t-ft-sh4-clean"  # the pattern finds the tag
    assert recipe_of(cross[2]) == "t-ft-sh4-clean" and recipe_of(cross[4]) == "t-ft-sh6-app-clean"
    means = recipe_means(cross)
    assert means["t-ft-sh4-clean"] == {"sources": ["IXI T1w", "br35h"] * 2, "seeds": 2, "mean": 0.85}
    assert means["t-ft-sh6-app-clean"] == {"sources": ["br35h"], "seeds": 1, "mean": 0.6}
    assert means["ensemble v1"]["mean"] == 0.5
