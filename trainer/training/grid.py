"""Grid files (TOML): each [[ann]] / [[cnn]] / [[resnet]] / [[transfer]] table expands as the Cartesian product of
its list-valued keys; [defaults] holds the training recipe shared by every entry. Every entry is checked as a
`Recipe` (trainer.training.recipe) before anything trains."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trainer.training.recipe import FAMILIES, GridError, Recipe, describe

GRIDS_DIR = Path(__file__).resolve().parent.parent / "grids"


def all_grids() -> list[Path]:
    """Every grid file of trainer/grids, the archived ones (grids/archive) included."""
    return sorted(GRIDS_DIR.rglob("*.toml"))


def grid_label(path: Path) -> str:
    """How reports and manifests name a grid file: `trainer/grids/…` for one of ours, else its path."""
    try:
        return f"trainer/grids/{path.resolve().relative_to(GRIDS_DIR).as_posix()}"
    except ValueError:
        return str(path)


RECIPE_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "patience": 4,
    "augment": True,
    "seed": 42,
    "val_fraction": 0.15,
    "fine_tune_epochs": 0,
    "fine_tune_learning_rate": 1e-5,
}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "ann": {"dropout": 0.25},
    "cnn": {"dropout": 0.25},
    "resnet": {"stages": 4, "width": 32, "dropout": 0.3},
    "transfer": {"weights": "imagenet", "dense_layers": 0, "units": 128, "dropout": 0.3},
}


def expand(grid: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "grid") -> list[dict[str, Any]]:
    """Every grid entry as a config dict, checked as a `Recipe`; `overrides` (e.g. from the command line) win over
    the file and are part of the entry's name. GridError names `source`, the table and the key."""
    unknown = set(grid) - set(FAMILIES) - {"defaults", "preprocessing_version"}
    if unknown:
        raise GridError(
            f"{source}: unknown sections {sorted(unknown)}; allowed: preprocessing_version, defaults, "
            f"{', '.join(FAMILIES)}"
        )
    defaults = {**RECIPE_DEFAULTS, **grid.get("defaults", {})}
    entries: list[dict[str, Any]] = []
    for family in FAMILIES:
        for i, table in enumerate(grid.get(family, []), start=1):
            keys = list(table)
            values = [v if isinstance(v, list) else [v] for v in table.values()]
            for combo in itertools.product(*values):
                cfg = {
                    **defaults,
                    **FAMILY_DEFAULTS[family],
                    "family": family,
                    **dict(zip(keys, combo, strict=True)),
                    **(overrides or {}),
                }
                try:
                    recipe = Recipe.model_validate(cfg)
                except ValidationError as e:
                    raise GridError(f"{source}: [[{family}]] table {i}: {describe(e)}") from None
                cfg["name"] = recipe.entry_name()
                entries.append(cfg)
    names = [e["name"] for e in entries]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise GridError(f"{source}: duplicate entries {sorted(dupes)}")
    if not entries:
        raise GridError(f"{source}: no entries")
    return entries


def load_grid(path: Path, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The entries of a grid file (GridError names the file, table and key of a broken rule)."""
    with path.open("rb") as f:
        try:
            grid = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise GridError(f"{path}: not valid TOML: {e}") from None
    return expand(grid, overrides, source=str(path))


def grid_preprocessing_version(path: Path) -> int | None:
    """The preprocessing version a grid file declares (top-level `preprocessing_version = N`), or None. The grids
    that reproduce a recipe on one version's crops declare it: their run names do not say it, and a fresh work
    dir would otherwise train on the newest default version."""
    with path.open("rb") as f:
        version = tomllib.load(f).get("preprocessing_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ValueError(f"{path}: preprocessing_version must be an integer, got {version!r}")
    return version


def train_version(grid: Path, requested: int | None) -> int | None:
    """The preprocessing version `train` asks for: --preprocessing-version, else the grid's declared one (None:
    the work dir's or the default). ValueError when the two disagree."""
    declared = grid_preprocessing_version(grid)
    if requested is not None and declared is not None and requested != declared:
        raise ValueError(
            f"{grid} declares preprocessing version {declared}; --preprocessing-version {requested} contradicts it"
        )
    return declared if requested is None else requested
