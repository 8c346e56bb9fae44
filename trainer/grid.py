"""Grid files (TOML): each [[ann]] / [[cnn]] / [[resnet]] / [[transfer]] table expands as the Cartesian product of
its list-valued keys; [defaults] holds the training recipe shared by every entry."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

from trainer.data import PROTOCOLS

FAMILIES = ("ann", "cnn", "resnet", "transfer")
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
_NAME_KEYS = {
    "ann": ("dense_layers", "d", "units", "u"),
    "cnn": ("conv_layers", "c", "filters", "f", "dense_layers", "d"),
    "resnet": ("stages", "st", "width", "w"),
    "transfer": ("backbone", "", "dense_layers", "d"),
}


def protocol_of(cfg: dict[str, Any]) -> str:
    """The evaluation protocol a config was trained under (runs recorded before protocols existed: official)."""
    protocol = str(cfg.get("protocol", "official"))
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


FINE_TUNE_ON = ("cache", "images")


def fine_tune_on_of(cfg: dict[str, Any]) -> str:
    """What the top block fine-tunes on: the cached frozen-layer outputs (default) or augmented images."""
    on = str(cfg.get("fine_tune_on", "cache"))
    if on not in FINE_TUNE_ON:
        raise ValueError(f"fine_tune_on must be one of {FINE_TUNE_ON}, got {on!r}")
    return on


def fine_tune_blocks_of(cfg: dict[str, Any]) -> int:
    """How many of the backbone's top blocks phase 2 fine-tunes (1: the top block; VGG allows up to 4)."""
    blocks = cfg.get("fine_tune_blocks", 1)
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"fine_tune_blocks must be an integer ≥ 1, got {blocks!r}")
    return blocks


def multiscale_of(cfg: dict[str, Any]) -> bool:
    """Whether a transfer entry pools several of its backbone's blocks (models.multiscale_backbone). Such a
    head trains on cached frozen features of the identity and mirror views (plus `shift_views` shifted ones);
    the backbone is not fine-tuned (the cached fine-tuning cuts the backbone below a tap)."""
    on = cfg.get("multiscale", False)
    if not isinstance(on, bool):
        raise ValueError(f"multiscale must be true or false, got {on!r}")
    if on and (cfg["family"] != "transfer" or not cfg.get("cache_features") or cfg.get("fine_tune_epochs", 0)):
        raise ValueError("multiscale needs a transfer entry with cache_features and no fine_tune_epochs")
    return on


def shift_views_of(cfg: dict[str, Any]) -> int:
    """How many randomly shifted views (trainer.robustness.random_shift) of every image are cached next to the
    identity and mirror views (0: none): for phase 2 (fine-tuning on the cache), or for a frozen head's features
    (multi-scale or not). With K > 0, each epoch shows every training image twice: once clean (identity or mirror,
    drawn per epoch) and once as one of its K shifted views (drawn per epoch)."""
    k = cfg.get("shift_views", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"shift_views must be an integer ≥ 0, got {k!r}")
    on_cache = fine_tune_on_of(cfg) == "cache" and cfg.get("cache_features") and cfg.get("fine_tune_epochs")
    frozen_head = cfg.get("family") == "transfer" and cfg.get("cache_features") and not cfg.get("fine_tune_epochs")
    if k and not (on_cache or frozen_head or multiscale_of(cfg)):
        raise ValueError(
            "shift_views needs cache_features: a frozen head (no fine_tune_epochs), a multiscale head, or "
            "fine-tuning on the cache"
        )
    return k


def backbone_input_of(cfg: dict[str, Any]) -> int | None:
    """The square size a transfer model resizes to inside its graph before the backbone (None: the backbone sees
    the crop as it comes, 150 px). The service contract is unchanged: every model still takes the 150 px crop."""
    n = cfg.get("backbone_input")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 32:
        raise ValueError(f"backbone_input must be an integer ≥ 32, got {n!r}")
    if cfg.get("family") != "transfer":
        raise ValueError("backbone_input applies to transfer entries only")
    return n


def reduce_lr_patience_of(cfg: dict[str, Any]) -> int:
    """Epochs without a lower val_loss after which training divides the learning rate by 3 (0, the default:
    a constant learning rate; early stopping's `patience` still applies)."""
    n = cfg.get("reduce_lr_patience", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"reduce_lr_patience must be an integer ≥ 0, got {n!r}")
    return n


def init_seed_of(cfg: dict[str, Any]) -> int:
    """The seed of weight initialisation, shuffling and augmentation: `init_seed` where a grid sets it (to
    train the same recipe again on the same validation split), else `seed`, which also draws that split."""
    return int(cfg.get("init_seed", cfg["seed"]))


def entry_name(cfg: dict[str, Any]) -> str:
    keys = _NAME_KEYS[cfg["family"]]
    parts = [cfg["family"]] + [f"{short}{cfg[key]}" for key, short in zip(keys[::2], keys[1::2], strict=True)]
    if cfg["family"] == "transfer":
        w = str(cfg.get("weights", "imagenet"))
        local = Path(w).name.split(".")[0].replace(f"{cfg['backbone']}_", "").replace("_notop", "")
        parts.append("imagenet" if w == "imagenet" else "scratch" if w == "none" else local)
        if backbone_input_of(cfg):
            parts.append(f"r{backbone_input_of(cfg)}")
        if multiscale_of(cfg):
            parts.append("ms" + (f"-sh{shift_views_of(cfg)}" if shift_views_of(cfg) else ""))
        elif shift_views_of(cfg) and not cfg.get("fine_tune_epochs", 0):
            parts.append(f"sh{shift_views_of(cfg)}")
        if cfg.get("fine_tune_epochs", 0):
            blocks = fine_tune_blocks_of(cfg)
            parts.append(("ftimg" if fine_tune_on_of(cfg) == "images" else "ft") + (str(blocks) if blocks > 1 else ""))
            if shift_views_of(cfg):
                parts.append(f"sh{shift_views_of(cfg)}")
    if "init_seed" in cfg:
        parts.append(f"s{int(cfg['init_seed'])}")
    if not cfg.get("augment", True):
        parts.append("noaug")
    if protocol_of(cfg) != "official":
        parts.append(protocol_of(cfg))
    return "-".join(parts)


def expand(grid: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every grid entry as a config; `overrides` (e.g. from the command line) win over the file and
    are part of the entry's name."""
    unknown = set(grid) - set(FAMILIES) - {"defaults", "preprocessing_version"}
    if unknown:
        raise ValueError(
            f"unknown grid sections {sorted(unknown)}; allowed: preprocessing_version, defaults, {', '.join(FAMILIES)}"
        )
    defaults = {**RECIPE_DEFAULTS, **grid.get("defaults", {})}
    entries: list[dict[str, Any]] = []
    for family in FAMILIES:
        for table in grid.get(family, []):
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
                fine_tune_blocks_of(cfg)  # bad values are refused here, before any training
                multiscale_of(cfg)
                shift_views_of(cfg)
                backbone_input_of(cfg)
                reduce_lr_patience_of(cfg)
                cfg["name"] = entry_name(cfg)
                entries.append(cfg)
    names = [e["name"] for e in entries]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"grid produces duplicate entries: {sorted(dupes)}")
    if not entries:
        raise ValueError("grid has no entries")
    return entries


def load_grid(path: Path, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return expand(tomllib.load(f), overrides)


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
