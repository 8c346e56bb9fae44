"""The cumulative leaderboard kept in the repository (docs/leaderboard.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.utils import ROOT
from trainer.reporting import leaderboard


def row(name: str, val_f1: float, data_hash: str = "h1", **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "family": name.split("-")[0],
        "params": 10,
        "epochs_run": 1,
        "train_seconds": 1.0,
        "augment": True,
        "val_accuracy": val_f1,
        "val_macro_f1": val_f1,
        "val_loss": 1.0,
        "test_accuracy": 0.5,
        "test_macro_f1": 0.5,
        "test_loss": 1.0,
        "test_glioma_recall": 0.1,
        "weights_origin": "random",
        "protocol": "official",
        "config": {"family": name.split("-")[0]},
        "data_hash": data_hash,
        "metrics": {"bulky": [1] * 100},
        "run_dir": "/somewhere/out/runs/" + name,
        **kw,
    }


def test_merge_keeps_old_rows_replaces_re_evaluated_ones_and_ranks() -> None:
    committed = leaderboard.merge([], [row("ann-a", 0.3), row("cnn-b", 0.6)])
    assert [r["name"] for r in committed] == ["cnn-b", "ann-a"]
    assert "metrics" not in committed[0] and "run_dir" not in committed[0]  # slim: no bulk, no machine paths
    assert committed[0]["source"].startswith("python -m trainer evaluate")
    merged = leaderboard.merge(committed, [row("ann-a", 0.9), row("cnn-c", 0.5)])
    assert [(r["rank"], r["name"], r["val_macro_f1"]) for r in merged] == [
        (1, "ann-a", 0.9),
        (2, "cnn-b", 0.6),
        (3, "cnn-c", 0.5),
    ]


def test_a_name_rerun_with_another_config_keeps_the_old_row() -> None:
    committed = leaderboard.merge([], [row("cnn-a", 0.5, config={"family": "cnn", "epochs": 1})])
    again = leaderboard.merge(committed, [row("cnn-a", 0.55, config={"family": "cnn", "epochs": 1})])
    assert [(r["name"], r["val_macro_f1"]) for r in again] == [("cnn-a", 0.55)]  # same config: re-evaluated
    longer = leaderboard.merge(again, [row("cnn-a", 0.7, config={"family": "cnn", "epochs": 15})])
    tag = leaderboard.config_tag({"family": "cnn", "epochs": 1})
    assert [(r["name"], r["val_macro_f1"], r["config"]["epochs"]) for r in longer] == [
        ("cnn-a", 0.7, 15),
        (f"cnn-a@{tag}", 0.55, 1),
    ]
    assert "superseded" in longer[1]["source"] and tag == leaderboard.config_tag({"epochs": 1, "family": "cnn"})


def test_the_same_config_trained_again_keeps_the_earlier_run() -> None:
    committed = leaderboard.merge([], [row("cnn-a", 0.5, train_seconds=100.0)])
    again = leaderboard.merge(committed, [row("cnn-a", 0.55, train_seconds=100.0)])  # re-evaluated
    assert [(r["name"], r["val_macro_f1"]) for r in again] == [("cnn-a", 0.55)]
    retrained = leaderboard.merge(again, [row("cnn-a", 0.52, train_seconds=130.0)])
    assert [(r["name"], r["val_macro_f1"]) for r in retrained] == [("cnn-a@run1", 0.55), ("cnn-a", 0.52)]
    assert "earlier training run" in retrained[0]["source"]
    third = leaderboard.merge(retrained, [row("cnn-a", 0.6, train_seconds=90.0)])
    assert [(r["name"], r["val_macro_f1"]) for r in third] == [
        ("cnn-a", 0.6),
        ("cnn-a@run1", 0.55),
        ("cnn-a@run2", 0.52),
    ]


def test_rows_of_another_preprocessing_version_are_named_apart_and_rank_together() -> None:
    # Same images and labels (dataset_hash), other preprocessing (so another data_hash): the scores rank
    # together, and a version-2 run of a name is its own row, <name>@v2.
    committed = leaderboard.merge([], [row("cnn-a", 0.5, data_hash="v1-data")])
    assert committed[0]["preprocessing_version"] == 1  # rows from before versioning are version 1
    committed = [{**r, "dataset_hash": "images"} for r in committed]
    new = row("cnn-a", 0.6, data_hash="v2-data", dataset_hash="images", preprocessing_version=2)
    merged = leaderboard.merge(committed, [new])
    assert [(r["name"], r["preprocessing_version"], r["val_macro_f1"]) for r in merged] == [
        ("cnn-a@v2", 2, 0.6),
        ("cnn-a", 1, 0.5),
    ]
    again = leaderboard.merge(merged, [{**new, "val_macro_f1": 0.65}])  # re-evaluated: replaced, not doubled
    assert [(r["name"], r["val_macro_f1"]) for r in again] == [("cnn-a@v2", 0.65), ("cnn-a", 0.5)]
    text = "\n".join(leaderboard.section(merged))
    assert "| cnn-a@v2 | v2 |" in text and "| cnn-a | v1 |" in text
    with pytest.raises(ValueError, match="different data"):
        leaderboard.merge(committed, [{**new, "dataset_hash": "other images"}])


def test_rows_from_other_data_are_refused() -> None:
    committed = leaderboard.merge([], [row("ann-a", 0.3)])
    with pytest.raises(ValueError, match="different data"):
        leaderboard.merge(committed, [row("cnn-b", 0.6, data_hash="h2")])


def test_update_merges_official_rows_and_rewrites_only_its_section(tmp_path: Path) -> None:
    docs, work = tmp_path / "docs", tmp_path / "work"
    (work / "report").mkdir(parents=True)
    docs.mkdir()
    (docs / "evaluation.md").write_text(
        f"# Evaluation\n\nkept above\n\n{leaderboard.SECTION}\n\nold table\n\n"
        f"{leaderboard.NEXT_SECTION}\n\nkept below\n"
    )
    leaderboard.save(leaderboard.merge([], [row("ann-d0-u32", 0.4)]), docs)
    fresh = [
        row("cnn-c1-f32-d0", 0.7),
        row("cnn-c1-f32-d0-pooled", 0.99, protocol="pooled"),
        row("cnn-c1-f32-d0-clean", 0.95, protocol="clean", data_hash="three roots"),
    ]
    (work / "report" / "leaderboard.json").write_text(json.dumps(fresh))
    board = leaderboard.update(work, docs)
    assert [r["name"] for r in board] == ["cnn-c1-f32-d0", "ann-d0-u32"]  # pooled and clean rows are not mixed in
    assert json.loads((docs / "leaderboard.json").read_text()) == board
    # clean rows (other data: they would be refused by the official board) keep a file and a table of their own
    clean = json.loads((docs / "leaderboard-clean.json").read_text())
    assert [r["name"] for r in clean] == ["cnn-c1-f32-d0-clean"]
    text = (docs / "evaluation.md").read_text()
    assert "kept above" in text and "kept below" in text and "old table" not in text
    assert "| 1 | cnn-c1-f32-d0 |" in text and "| 2 | ann-d0-u32 |" in text
    assert text.index("### Protocol clean") < text.index("| 1 | cnn-c1-f32-d0-clean |") < text.index("kept below")
    assert (docs / "img" / "leaderboard.png").stat().st_size > 1000


def test_committed_leaderboard_matches_the_report() -> None:
    """docs/evaluation.md's leaderboard section is exactly what docs/leaderboard.json renders to."""
    board = leaderboard.load(ROOT / "docs")
    assert board, "docs/leaderboard.json is missing or empty"
    text = (ROOT / "docs" / "evaluation.md").read_text()
    assert "\n".join(leaderboard.section(board, leaderboard.load(ROOT / "docs", "clean"))) in text


def test_ensembles_tried_section_counts_what_the_export_scored(tmp_path: Path) -> None:
    from trainer.reporting.sections import ensembles_tried_section

    (tmp_path / "report").mkdir()
    row = {"models": ["a", "b", "c"], "val_macro_f1": 0.9, "val_accuracy": 0.91, "size_mb": 85.0}
    (tmp_path / "report" / "ensembles_tried.json").write_text(json.dumps([row]))
    text = "\n".join(ensembles_tried_section(tmp_path))
    assert "had one combination to score: the 3 models" in text and "combinations" not in text
    rows = [row, {**row, "models": ["a", "b", "d"], "val_macro_f1": 0.8}]
    (tmp_path / "report" / "ensembles_tried.json").write_text(json.dumps(rows))
    text = "\n".join(ensembles_tried_section(tmp_path))
    assert "majority vote of 2 combinations of three models (from the 4 best single models" in text
    assert "| 1 | a + b + c | 0.9000 | 91.0 % | 85.0 |" in text and "The best 2:" in text
    assert ensembles_tried_section(tmp_path / "nothing") == []


def test_the_report_template_is_filled_by_renderers_and_drops_nothing() -> None:
    from trainer.reporting.report import TEMPLATE, render

    assert render("a\n{{x}}\nb", {"x": ["1", "2"]}) == "a\n1\n2\nb\n"
    with pytest.raises(KeyError, match="asks for section 'y'"):
        render("{{y}}", {})
    with pytest.raises(KeyError, match=r"sections \['z'\] have no place"):
        render("a", {"z": ["1"]})
    names = set(re.findall(r"^\{\{(\w+)\}\}$", TEMPLATE.read_text(), flags=re.M))
    assert {"headline", "ensemble", "measurements", "leaderboard", "provenance"} <= names
    assert not re.search(r"\d\.\d{3}", TEMPLATE.read_text())  # no measured score typed into the template


def test_ensembles_tried_section_of_a_named_export_claims_no_choice(tmp_path: Path) -> None:
    """An ensemble a rule named was not chosen among combinations: an earlier export's record must not show."""
    from trainer.reporting.sections import ensembles_tried_section

    (tmp_path / "report").mkdir()
    row = {"models": ["x", "y", "z"], "val_macro_f1": 0.9, "val_accuracy": 0.91, "size_mb": 85.0}
    (tmp_path / "report" / "ensembles_tried.json").write_text(json.dumps([row, row]))
    text = "\n".join(ensembles_tried_section(tmp_path, named=["a", "b", "c"]))
    assert "exported the 3 models a rule written before their training named" in text
    assert "x + y + z" not in text and "combinations of three" not in text


def test_clean_rows_on_other_data_get_a_board_of_their_own(tmp_path: Path) -> None:
    """More data roots make other validation images: those runs rank among themselves, in a file named by their
    dataset, and the committed clean board keeps its rows."""
    import json

    docs, work = tmp_path / "docs", tmp_path / "work"
    (work / "report").mkdir(parents=True)
    docs.mkdir()
    committed = leaderboard.merge([], [row("a-clean", 0.9, protocol="clean", dataset_hash="three-roots")])
    leaderboard.save(committed, docs, "clean")
    fresh = [
        row("b-clean", 0.8, data_hash="h5", protocol="clean", dataset_hash="five-roots-x"),
        row("a-clean", 0.95, protocol="clean", dataset_hash="three-roots"),
    ]
    (work / "report" / "leaderboard.json").write_text(json.dumps(fresh))
    clean = leaderboard.merged(work, docs, "clean")
    assert [(r["name"], r["val_macro_f1"]) for r in clean] == [("a-clean", 0.95)]
    boards = leaderboard.other_data_boards(work, docs)
    assert list(boards) == ["leaderboard-clean-five-roo.json"]
    assert [r["name"] for r in boards["leaderboard-clean-five-roo.json"]] == ["b-clean"]
    text = "\n".join(leaderboard.other_data_section(boards))
    assert "### Protocol clean on other data (`docs/leaderboard-clean-five-roo.json`)" in text and "| b-clean |" in text


def test_trainer_leaderboard_keeps_and_extends_the_boards_of_other_data(tmp_path: Path) -> None:
    """`trainer leaderboard` renders what `trainer report` does: a committed other-data board stays (file and
    table) when nothing new is scored on its data, and fresh rows on other data land on theirs."""
    import json

    docs, work = tmp_path / "docs", tmp_path / "work"
    (work / "report").mkdir(parents=True)
    docs.mkdir()
    (docs / "evaluation.md").write_text(f"{leaderboard.SECTION}\n\nold\n\n{leaderboard.NEXT_SECTION}\n")
    leaderboard.save(leaderboard.merge([], [row("ann-d0-u32", 0.4)]), docs)
    leaderboard.save(
        leaderboard.merge([], [row("a-clean", 0.9, protocol="clean", dataset_hash="three")]), docs, "clean"
    )
    kept = leaderboard.merge([], [row("b-clean", 0.8, protocol="clean", dataset_hash="fiveroots")])
    (docs / "leaderboard-clean-fiveroot.json").write_text(json.dumps(kept))
    (work / "report" / "leaderboard.json").write_text(json.dumps([row("cnn-c1-f32-d0", 0.7)]))
    leaderboard.update(work, docs)
    assert [r["name"] for r in json.loads((docs / "leaderboard-clean-fiveroot.json").read_text())] == ["b-clean"]
    assert "| b-clean |" in (docs / "evaluation.md").read_text()
    fresh = [row("c-clean", 0.85, data_hash="h9", protocol="clean", dataset_hash="fiveroots")]
    (work / "report" / "leaderboard.json").write_text(json.dumps(fresh))
    leaderboard.update(work, docs)
    names = [r["name"] for r in json.loads((docs / "leaderboard-clean-fiveroot.json").read_text())]
    assert names == ["c-clean", "b-clean"] and "| c-clean |" in (docs / "evaluation.md").read_text()
