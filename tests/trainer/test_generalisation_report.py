"""The evaluation.md sections on generalisation and trust, rendered from figures and the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.inference.manifest import load_manifest
from tests.utils import ROOT
from trainer.data.dataset import CLASSES
from trainer.evaluation.groups import cross_source_figures, group_figures
from trainer.reporting.generalisation import (
    GENERALISATION_SECTION,
    TRUST_SECTION,
    generalisation_section,
    trust_section,
)
from trainer.reporting.report import update_generalisation_docs


def _figures(version: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 400)
    groups = rng.integers(0, 3, 400)
    pred = np.where(rng.random(400) < 0.8, y, (y + 1) % 4)
    pred[(y == 2) & (groups == 1)] = 0  # one cell always wrong: the worst
    return {
        "model_version": version,
        "sequence_groups": {"validation": group_figures(y, pred, groups, CLASSES, "validation (test)")},
        "cross_source": [
            cross_source_figures("IXI T1w", "app-no-IXI_T1w-clean", y[:50], pred[:50], groups[:50], CLASSES),
            cross_source_figures("br35h", "app-no-br35h-clean", y[50:80], y[50:80], groups[50:80], CLASSES),
            cross_source_figures("IXI T1w", "base-no-IXI_T1w-clean", y[:50], y[:50], groups[:50], CLASSES),
            cross_source_figures("IXI T1w", "base-no-IXI_T1w-s7-clean", y[:50], y[:50], groups[:50], CLASSES),
        ],
        "runs": [
            {
                "name": "run-a",
                "val_accuracy": 0.9,
                "worst": {"class": "glioma", "group": "T2", "n": 12, "accuracy": 0.5},
            }
        ],
    }


def test_generalisation_section_names_the_worst_cell_sources_and_the_replaced_ensemble(tmp_path: Path) -> None:
    now, before = _figures("new-1", 0), _figures("old-1", 1)
    now["fresh_test"] = {
        "split": "fresh Testing images",
        "n": 200,
        "of": 394,
        "ensembles": {
            "new-1": {"accuracy": 0.7, "macro_f1": 0.69, "glioma_recall": 0.5},
            "old-1": {"accuracy": 0.65, "macro_f1": 0.6, "glioma_recall": 0.4},
        },
        "only_first_right": 20,
        "only_second_right": 10,
        "mcnemar_p": 0.09,
    }
    lines = generalisation_section(now, tmp_path / "img", before)
    text = "\n".join(lines)
    assert lines[0] == GENERALISATION_SECTION
    assert "worst cell no tumor × T1C: 0.0 %" in text
    assert "| IXI T1w | 50 | `app-no-IXI_T1w-clean` |" in text and "`old-1` (never trained on it)" in text
    # one mean per recipe, over the sources its runs held out
    app = now["cross_source"][0]["accuracy"]
    assert f"- `app-clean`: mean over its 2 held-out sources {100 * (app + 1) / 2:.1f} %." in text
    assert "- `base-clean`: mean over its 1 held-out source and 2 seeds 100.0 %." in text
    assert "| `run-a` | 90.0 % | glioma × T2: 50.0 % (12) |" in text
    assert (tmp_path / "img" / "sequence-groups-accuracy.png").stat().st_size > 0
    assert "| `new-1` | 70.0 % | 0.690 | 0.50 |" in text
    assert "Right only by `new-1`: 20, only by `old-1`: 10 (exact McNemar p 0.09)" in text


def test_trust_section_reports_coverage_and_flags_per_split() -> None:
    manifest = load_manifest(ROOT / "models")
    lines = trust_section(manifest)
    assert lines[0] == TRUST_SECTION
    text = "\n".join(lines)
    for key, t in manifest.ensemble.trust.items():
        assert f"| {key.replace('_', ' ')} | {t.get('split', '')} | {t['n']} |" in text
    shifted = manifest.model_copy(deep=True)
    shifted.ensemble.trust["validation"]["under_shifts"] = {
        "blur σ 4 px": {"accuracy": 0.9, "flagged_share": 0.2, "unlike_training_share": 0.1, "unflagged_accuracy": 0.95}
    }
    text = "\n".join(trust_section(shifted))
    assert text.count("How the flags respond to acquisition shifts") == 1
    assert "| blur σ 4 px | 90.0 % | 20.0 % | 10.0 % | 95.0 % |" in text


def test_update_replaces_the_sections_in_place(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "evaluation.md").write_text("# Evaluation\n\n## The ensemble\n\nx\n\n## Calibration and uncertainty\n\ny\n")
    manifest = load_manifest(ROOT / "models")
    for _ in range(2):  # a second run replaces, it does not add
        update_generalisation_docs(_figures("new-1", 0), manifest, docs)
    text = (docs / "evaluation.md").read_text()
    assert text.count(GENERALISATION_SECTION) == 1 and text.count(TRUST_SECTION) == 1
    assert text.index(GENERALISATION_SECTION) < text.index(TRUST_SECTION) < text.index("## Calibration")


def test_fresh_test_scores_ensembles_on_testing_images_no_training_image_copies(tmp_path: Path) -> None:
    import json
    import shutil

    from service.inference.runtime import Ensemble
    from tests.utils import MRI_FIXTURES, make_tiny_ensemble
    from trainer.data.dataset import TEST, prepare
    from trainer.evaluation.generalisation import fresh_test

    data = tmp_path / "data"
    shutil.copytree(MRI_FIXTURES, data)
    copied = sorted((data / "Testing" / "glioma_tumor").glob("*.jpg"))[0]
    shutil.copy(copied, data / "Training" / "glioma_tumor" / "copy of a test image.jpg")
    p = prepare(data, tmp_path / "cache")
    make_tiny_ensemble(tmp_path / "a")
    make_tiny_ensemble(tmp_path / "b", n_models=1)
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({**raw, "model_version": "test-2"}))
    r = fresh_test([Ensemble.load(tmp_path / "a"), Ensemble.load(tmp_path / "b")], p)
    assert r["of"] == int((p.split == TEST).sum()) and r["n"] == r["of"] - 1  # the copied one is left out
    assert list(r["ensembles"]) == ["test-1", "test-2"]
    assert r["only_first_right"] + r["only_second_right"] <= r["n"] and 0 <= r["mcnemar_p"] <= 1


def test_the_tie_broken_check_is_shown_beside_the_ensemble_it_replaces_with_every_candidate(tmp_path: Path) -> None:
    from trainer.data.tiebroken import check_figures

    y = np.array([0] * 12 + [2] * 12 + [4] * 5)
    seq = np.array(["FLAIR"] * 12 + ["T1C"] * 12 + [""] * 5)
    src = np.array(["TCGA-LGG"] * 24 + ["br35h-yes"] * 5)
    good, bad = y.copy(), y.copy()
    good[24:] = 1
    bad[:12], bad[24:] = 2, 2  # gliomas on FLAIR called no tumour, tumours of unknown type too
    now = {**_figures("new-1", 0), "tie_broken": check_figures(y, good, src, seq)}
    now["tie_broken_baseline"] = {"model_version": "old-1", **check_figures(y, bad, src, seq)}
    now["run_checks"] = [{"name": "run-a", "checkpoint": "mean-3", **check_figures(y, good, src, seq)}]
    text = "\n".join(generalisation_section(now, tmp_path / "img"))
    assert "### The tie-broken check" in text
    assert "| TCGA-LGG | glioma | FLAIR | 100.0 % (12) | 0.0 % (12) |" in text
    assert "| br35h-yes | any tumour (answered as one) | mixed | 100.0 % (5) | 0.0 % (5) |" in text
    assert "Worst cell: glioma × FLAIR: 100.0 % (12) (old-1: glioma × FLAIR: 0.0 % (12))." in text
    assert "| `run-a` | mean-3 | glioma × FLAIR: 100.0 % (12) | 100.0 % (5) |" in text
    assert (tmp_path / "img" / "tie-broken-check.png").stat().st_size > 1000
    without = "\n".join(generalisation_section(_figures("new-1", 0), tmp_path / "img2"))
    assert "tie-broken" not in without


def test_writing_figures_into_a_manifest_keeps_cross_source_rows_measured_on_other_data(tmp_path: Path) -> None:
    import json

    from tests.utils import make_tiny_ensemble
    from trainer.data.tiebroken import check_figures
    from trainer.export.bundle import write_generalisation

    make_tiny_ensemble(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    for entry in raw["models"]:  # what an export records of each model's recipe
        entry["config"] = {"family": "ann", "dense_layers": 0, "units": 8, "protocol": "clean"}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    y, groups = np.array([0, 1, 2, 3]), np.zeros(4, int)
    loso = cross_source_figures("IXI T1w", "run-no-IXI_T1w", y, y, groups, CLASSES)
    write_generalisation(tmp_path, {"cross_source": [loso]})
    unseen = cross_source_figures("TCGA-LGG", "ensemble test-1", y, (y + 1) % 4, groups, CLASSES)
    check = check_figures(np.array([0] * 10), np.array([2] * 10), np.array(["TCGA-LGG"] * 10), np.array(["T1"] * 10))
    m = write_generalisation(tmp_path, {"cross_source": [unseen], "tie_broken": check})
    assert [(r.source, r.accuracy) for r in m.ensemble.cross_source] == [("IXI T1w", 1.0), ("TCGA-LGG", 0.0)]
    assert m.ensemble.tie_broken is not None and m.ensemble.tie_broken.worst["accuracy"] == 0.0
    again = write_generalisation(tmp_path, {"cross_source": [{**loso, "accuracy": 0.5}]})
    assert [(r.source, r.accuracy) for r in again.ensemble.cross_source] == [("TCGA-LGG", 0.0), ("IXI T1w", 0.5)]
    assert "Tie-broken check" in (tmp_path / "README.md").read_text()
