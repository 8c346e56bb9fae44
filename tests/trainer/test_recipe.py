"""Typed recipes: grid errors name the file, table and key; every stored config still reads as a Recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.utils import ROOT
from trainer.training.grid import expand, load_grid
from trainer.training.recipe import GridError, Recipe


def test_grid_errors_name_the_file_the_table_and_the_key(tmp_path: Path) -> None:
    grid = tmp_path / "bad.toml"
    grid.write_text(
        '[[cnn]]\nconv_layers = 1\nfilters = 8\ndense_layers = 0\n\n[[transfer]]\nbackbone = "vgg16"\n'
        "dense_layers = [0, 1]\nshift_views = -2\n"
    )
    with pytest.raises(GridError, match=r"bad\.toml: \[\[transfer\]\] table 1: shift_views: Input should be greater"):
        load_grid(grid)
    grid.write_text("[[ann]]\ndense_layers = 1\nunit = 32\n")  # a typo must not fall back to a default
    with pytest.raises(GridError, match=r"\[\[ann\]\] table 1: unit: unknown key"):
        load_grid(grid)
    grid.write_text("[[ann]\n")
    with pytest.raises(GridError, match=r"bad\.toml: not valid TOML"):
        load_grid(grid)
    with pytest.raises(GridError, match="resnet entries need stages"):
        expand({"resnet": [{"stages": None}]})  # None stands for an absent key after the family default


def test_stored_configs_and_every_grid_read_back_as_recipes() -> None:
    rows = json.loads((ROOT / "docs" / "leaderboard.json").read_text())
    for row in rows:  # runs recorded by earlier trainer versions keep their names
        assert Recipe.of(row["config"]).entry_name() == row["config"]["name"]
    for path in sorted((ROOT / "trainer" / "grids").rglob("*.toml")):
        for cfg in load_grid(path):
            recipe = Recipe.of(cfg)
            assert recipe.entry_name() == cfg["name"] and recipe.run_seed == cfg.get("init_seed", cfg["seed"])
    with pytest.raises(GridError, match="config 'x': epochs: Input should be greater than or equal to 1"):
        Recipe.of({"name": "x", "family": "ann", "dense_layers": 0, "units": 8, "epochs": 0})


def test_every_protocol_names_its_evaluation_splits() -> None:
    from trainer.data.dataset import PROTOCOLS
    from trainer.evaluation.evaluate import split_names

    for protocol in PROTOCOLS:
        (val_key, val_split), (test_key, test_split) = split_names(
            {"family": "ann", "name": "x", "protocol": protocol, "dense_layers": 0, "units": 8}
        )
        assert val_key == "validation" and test_key in ("official_test", "pooled_test") and val_split and test_split
