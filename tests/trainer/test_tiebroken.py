"""Roots where sequence does not give the class: files.csv splits and sequences, the partial tumour label, the
tie-broken check's figures, and the split that keeps its `val` rows (and their near-copies) out of training."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.utils import MRI_FIXTURES
from trainer.data.dataset import (
    ANY_TUMOUR,
    CLASSES,
    correct,
    label_sets,
    prepare,
    report,
    scan,
)
from trainer.data.sources import source_table
from trainer.data.tiebroken import check_figures, check_indices, figures_of, headline
from trainer.training.online import balanced_weights, choose_checkpoint, online_crop, sequence_cells
from trainer.training.train import class_weights, train_val_indices

GLIOMA, NO_TUMOUR = CLASSES.index("glioma"), CLASSES.index("no_tumor")
TRAINING = MRI_FIXTURES / "Training"


def _tie_broken_root(tmp_path: Path) -> Path:
    """A root like tcga-lgg: glioma/ and no_tumor/ slices, files.csv with sequence and split; one `val` slice is a
    near-copy of a `train` slice (the sequences of one slice are), which must then not train either."""
    root = tmp_path / "tcga"
    rows = ["path,class,sha256,source,sequence,patient,slice,split"]
    for cls, src in (("glioma", "glioma_tumor"), ("no_tumor", "no_tumor")):
        (root / cls).mkdir(parents=True)
        for i, img in enumerate(sorted((TRAINING / src).glob("*.jpg"))[:2]):
            for seq in ("FLAIR", "T1"):
                name = f"{seq}__p{i}.jpg"
                pixels = cv2.imread(str(img))
                if seq == "T1":  # another look of the same slice, far from the FLAIR one by pHash
                    pixels = 255 - pixels
                cv2.imwrite(str(root / cls / name), pixels)
                rows.append(f"{cls}/{name},{cls},x,TCGA-LGG,{seq},p{i},1,{'val' if i == 0 else 'train'}")
    # a train row that is a byte copy of a val row: its near-copy, kept out of training
    shutil.copy(root / "glioma" / "FLAIR__p0.jpg", root / "glioma" / "FLAIR__copy.jpg")
    rows.append("glioma/FLAIR__copy.jpg,glioma,x,TCGA-LGG,FLAIR,p9,1,train")
    (root / "files.csv").write_text("\n".join(rows) + "\n")
    return root


def _partial_root(tmp_path: Path) -> Path:
    """A root like br35h-tumor: one tumor/ folder (type not given), files.csv with a split and no sequence."""
    root = tmp_path / "br35h"
    (root / "tumor").mkdir(parents=True)
    rows = ["path,class,sha256,source,sequence,patient,slice,split"]
    for i, img in enumerate(sorted((TRAINING / "pituitary_tumor").glob("*.jpg"))[:2]):
        shutil.copy(img, root / "tumor" / f"y{i}.jpg")
        rows.append(f"tumor/y{i}.jpg,tumor,x,br35h-yes,,,,{'val' if i == 0 else 'train'}")
    (root / "files.csv").write_text("\n".join(rows) + "\n")
    return root


def test_scan_reads_partial_labels_sequences_and_listed_splits(tmp_path: Path) -> None:
    roots = [MRI_FIXTURES, _tie_broken_root(tmp_path), _partial_root(tmp_path)]
    files = {f[0]: f for f in scan(roots, with_listing=True)}
    assert files["+tcga/glioma/FLAIR__p0.jpg"][2:] == (GLIOMA, "TCGA-LGG", "FLAIR", "val")
    assert files["+tcga/no_tumor/T1__p1.jpg"][2:] == (NO_TUMOUR, "TCGA-LGG", "T1", "train")
    assert files["+br35h/tumor/y0.jpg"][2:] == (ANY_TUMOUR, "br35h-yes", "", "val")
    assert files["Training/glioma_tumor/gg (1).jpg"][3:] == ("brain-tumor-mri", "", "")


def test_listed_val_rows_and_their_near_copies_never_train(tmp_path: Path) -> None:
    roots = [MRI_FIXTURES, _tie_broken_root(tmp_path), _partial_root(tmp_path)]
    p = prepare(roots, tmp_path / "cache")
    at = {str(rel): i for i, rel in enumerate(p.paths)}
    held = {str(r) for r in p.paths[p.held]}
    assert held == {
        "+tcga/glioma/FLAIR__p0.jpg",
        "+tcga/glioma/T1__p0.jpg",
        "+tcga/no_tumor/FLAIR__p0.jpg",
        "+tcga/no_tumor/T1__p0.jpg",
        "+br35h/tumor/y0.jpg",
    }
    tr, va = train_val_indices(p, 0.25, 42, "clean")
    trained = {str(r) for r in p.paths[tr]}
    assert not trained & held and not {str(r) for r in p.paths[va]} & held
    assert "+tcga/glioma/FLAIR__copy.jpg" not in trained  # a copy of a val slice
    assert {"+tcga/glioma/FLAIR__p1.jpg", "+br35h/tumor/y1.jpg"} <= trained  # listed train rows train
    assert not any(r.startswith("+") for r in p.paths[va])  # roots with a split are not carved
    assert set(check_indices(p)) == {at[r] for r in held}
    # the same data without the listing is other data: the listed split is part of the hash
    listing = tmp_path / "tcga" / "files.csv"
    listing.write_text(listing.read_text().replace(",val", ",train"))
    assert prepare(roots, tmp_path / "cache").data_hash != p.data_hash
    r = report(p)
    assert r["sources"]["br35h-yes"]["tumor"] == 2 and r["sources"]["TCGA-LGG"]["glioma"] == 5
    table = {row["name"]: row for row in source_table(p.source, p.paths, p.y, CLASSES)}
    assert table["br35h-yes"]["per_class"] == {"tumor": 2} and table["TCGA-LGG"]["licence"] == "CC BY 3.0"


def test_a_partial_label_admits_every_tumour_class_and_nothing_else() -> None:
    admits = label_sets()
    assert admits.shape == (len(CLASSES) + 1, len(CLASSES))
    assert (admits[: len(CLASSES)] == np.eye(len(CLASSES), dtype=bool)).all()
    assert admits[ANY_TUMOUR].tolist() == [c != "no_tumor" for c in CLASSES]
    y = np.array([ANY_TUMOUR, ANY_TUMOUR, GLIOMA, GLIOMA])
    assert correct(y, np.array([CLASSES.index("pituitary"), NO_TUMOUR, GLIOMA, NO_TUMOUR])).tolist() == [
        True,
        False,
        True,
        False,
    ]
    w = class_weights(np.array([0, 0, 1, 2, 3, ANY_TUMOUR]), len(CLASSES))
    assert set(w) == {0, 1, 2, 3, ANY_TUMOUR} and w[ANY_TUMOUR] == w[1] == 2 * w[0]


def test_check_figures_give_class_by_sequence_cells_the_worst_and_the_tumour_share() -> None:
    y = np.array([GLIOMA] * 12 + [NO_TUMOUR] * 12 + [ANY_TUMOUR] * 4)
    seq = np.array(["FLAIR"] * 6 + ["T1"] * 6 + ["FLAIR"] * 12 + [""] * 4)
    src = np.array(["TCGA-LGG"] * 24 + ["br35h-yes"] * 4)
    pred = y.copy()
    pred[:6] = NO_TUMOUR  # every FLAIR glioma called no tumour
    pred[24:] = [GLIOMA, CLASSES.index("meningioma"), NO_TUMOUR, NO_TUMOUR]
    fig = check_figures(y, pred, src, seq)
    tcga, br35h = fig["sources"]
    assert tcga["cells"]["glioma"]["FLAIR"] == {"n": 6, "accuracy": 0.0}
    assert tcga["cells"]["no_tumor"]["FLAIR"] == {"n": 12, "accuracy": 1.0}
    assert br35h == {"source": "br35h-yes", "n": 4, "accuracy": 0.5, "partial_n": 4, "answered_tumour": 0.5}
    # cells under MIN_CELL images do not make the headline
    assert fig["worst"] == {"source": "TCGA-LGG", "class": "no_tumor", "sequence": "FLAIR", "n": 12, "accuracy": 1.0}
    small = check_figures(y, pred, src, seq)
    assert "no_tumor × FLAIR 100.0% (12)" in headline(small) and "answered as a tumour 50.0% (4)" in headline(small)


def test_figures_of_a_prepared_dataset_read_its_sequences(tmp_path: Path) -> None:
    p = prepare([MRI_FIXTURES, _tie_broken_root(tmp_path), _partial_root(tmp_path)], tmp_path / "cache")
    idx = check_indices(p)
    fig = figures_of(p, np.full(len(idx), GLIOMA))
    tcga = {r["source"]: r for r in fig["sources"]}["TCGA-LGG"]
    assert tcga["cells"]["glioma"] == {"FLAIR": {"n": 1, "accuracy": 1.0}, "T1": {"n": 1, "accuracy": 1.0}}
    assert tcga["cells"]["no_tumor"]["T1"] == {"n": 1, "accuracy": 0.0}
    assert {r["source"]: r for r in fig["sources"]}["br35h-yes"]["answered_tumour"] == 1.0


def test_sequence_cells_prefer_the_root_and_balanced_weights_even_out_cells(tmp_path: Path) -> None:
    p = prepare([MRI_FIXTURES, _tie_broken_root(tmp_path)], tmp_path / "cache")
    probe = np.full(len(p.y), 2)  # the probe's T2 group for every image
    cells = sequence_cells(p, probe)
    at = {str(rel): i for i, rel in enumerate(p.paths)}
    assert cells[at["+tcga/glioma/T1__p0.jpg"]] == "T1" and cells[at["+tcga/glioma/FLAIR__p0.jpg"]] == "T2"
    assert cells[at["Training/glioma_tumor/gg (1).jpg"]] == "T2"
    w = balanced_weights(np.array(["a"] * 9 + ["b"]))
    assert w.sum() == pytest.approx(1.0) and w[-1] == pytest.approx(3 * w[0])  # 1/√9 against 1/√1


def test_online_crops_keep_shape_and_vary() -> None:
    img = cv2.cvtColor(cv2.resize(cv2.imread(str(sorted(TRAINING.glob("*/*.jpg"))[0])), (150, 150)), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    views = [online_crop(img, rng, 1.0) for _ in range(4)]
    assert all(v.shape == img.shape and v.dtype == np.uint8 for v in views)
    assert len({v.tobytes() for v in views}) == 4
    plain = [online_crop(img, np.random.default_rng(s), 0.0) for s in range(20)]
    assert any((v == img).all() for v in plain) and any((v == img[:, ::-1]).all() for v in plain)


def _scores(f1: float, worst: float, share: float) -> dict:
    return {
        "val_macro_f1": f1,
        "check": {"worst": {"accuracy": worst}, "sources": [{"answered_tumour": share}]},
    }


def test_choose_checkpoint_keeps_the_best_worst_cell_among_those_that_keep_the_original_data() -> None:
    scores = {
        "epoch-01": _scores(0.97, 0.40, 0.9),
        "epoch-02": _scores(0.93, 0.90, 1.0),  # best check, but loses the original data
        "epoch-03": _scores(0.96, 0.60, 0.8),
        "mean-3": _scores(0.955, 0.60, 0.9),  # ties on the worst cell, wins on the share
    }
    assert choose_checkpoint(scores) == "mean-3"
    assert choose_checkpoint({"a": _scores(0.5, 0.1, 0.0), "b": _scores(0.6, 0.0, 0.0)}) == "a"


def test_partial_label_loss_is_the_crossentropy_of_the_admitted_classes() -> None:
    import keras

    from trainer.models.losses import PartialLabelLoss, partial_label_accuracy

    probs = np.array([[0.5, 0.1, 0.3, 0.1], [0.1, 0.1, 0.7, 0.1]], np.float32)
    loss = PartialLabelLoss(CLASSES)
    full = float(loss(np.array([GLIOMA, GLIOMA]), probs))
    assert full == pytest.approx(-(np.log(0.5) + np.log(0.1)) / 2, rel=1e-5)  # sparse categorical cross-entropy
    partial = float(loss(np.array([ANY_TUMOUR, ANY_TUMOUR]), probs))
    assert partial == pytest.approx(-(np.log(0.7) + np.log(0.3)) / 2, rel=1e-5)  # −log(1 − p(no tumour))
    acc = np.asarray(partial_label_accuracy(np.array([ANY_TUMOUR, ANY_TUMOUR]), probs))
    assert acc.tolist() == [1.0, 0.0]
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert float(again(np.array([ANY_TUMOUR, ANY_TUMOUR]), probs)) == pytest.approx(partial)


def test_the_online_recipe_keys_need_whole_network_fine_tuning_on_images() -> None:
    from trainer.training.recipe import GridError, Recipe

    base = {
        "family": "transfer",
        "backbone": "efficientnet_lite0",
        "dense_layers": 1,
        "cache_features": True,
        "fine_tune_epochs": 6,
        "fine_tune_on": "images",
    }
    r = Recipe.of({**base, "fine_tune_all": True, "appearance_p": 0.8, "sampling": "balanced", "checkpoint": "check"})
    assert r.entry_name() == "transfer-efficientnet_lite0-d1-imagenet-ftall-app80-bal3-ckck"
    with pytest.raises(GridError, match="fine_tune_all entries only"):
        Recipe.of({**base, "appearance_p": 0.5})
    with pytest.raises(GridError, match="fine_tune_on = images"):
        Recipe.of({**base, "fine_tune_on": "cache", "fine_tune_all": True})
    with pytest.raises(GridError, match="appearance_p"):
        Recipe.of({**base, "fine_tune_all": True, "appearance_p": 1.5})


def test_a_source_never_trained_on_scores_partial_labels_as_any_tumour() -> None:
    from trainer.evaluation.groups import cross_source_figures

    y = np.array([ANY_TUMOUR] * 4 + [GLIOMA] * 2)
    pred = np.array([GLIOMA, CLASSES.index("pituitary"), NO_TUMOUR, NO_TUMOUR, GLIOMA, NO_TUMOUR])
    row = cross_source_figures("br35h-yes", "ensemble x", y, pred, np.zeros(6, int), CLASSES)
    assert row["accuracy"] == 0.5
    assert row["per_class"] == {"glioma": {"n": 2, "accuracy": 0.5}, "tumor": {"n": 4, "accuracy": 0.5}}


def test_votes_are_ranked_by_the_check_among_those_that_keep_the_original_data(tmp_path: Path) -> None:
    from trainer.export.selection import rank_votes_by_check

    p = prepare([MRI_FIXTURES, _tie_broken_root(tmp_path), _partial_root(tmp_path)], tmp_path / "cache")
    check = check_indices(p)
    y_val = np.array([0, 1, 2, 3] * 5)
    eye = np.eye(len(CLASSES))

    def val(right: int) -> np.ndarray:  # one-hot answers right on the first `right` of 20 images
        pred = np.where(np.arange(20) < right, y_val, (y_val + 1) % 4)
        return eye[pred]

    def on_check(answer: int) -> np.ndarray:
        return np.tile(eye[answer], (len(check), 1))

    tumour, clean = CLASSES.index("glioma"), CLASSES.index("no_tumor")
    # a, b, c right on validation, d and e wrong everywhere; on the check a and b call everything clean
    val_probs = {"a": val(20), "b": val(20), "c": val(20), "d": val(0), "e": val(0)}
    check_probs = {k: on_check(clean if k in "ab" else tumour) for k in val_probs}
    ranked = rank_votes_by_check(val_probs, check_probs, y_val, "validation", p, check, min_macro_f1=0.95)
    assert len(ranked) == 10
    keeps = [t["val_macro_f1"] >= 0.95 for t in ranked]
    assert keeps == sorted(keeps, reverse=True) and not all(keeps)  # votes losing the original data come last
    assert ranked[0]["models"] == ["a", "c", "d"] and ranked[0]["check_tumour_share"] == 1.0
    last_kept = ranked[keeps.count(True) - 1]  # keeps the original data but calls the tumours clean
    assert last_kept["models"][:2] == ["a", "b"] and last_kept["check_tumour_share"] == 0.0
    cheap = rank_votes_by_check(
        val_probs, check_probs, y_val, "validation", p, check, gmac=lambda names: len(names), max_gmac=2
    )
    assert cheap == []  # every vote of three over the compute budget
