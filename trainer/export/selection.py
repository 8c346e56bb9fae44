"""Which runs make the ensemble: ranked by validation macro-F1, within a size and compute budget, the vote of
the best combination on validation (no test split is looked at)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from trainer.evaluation.metrics import vote_metrics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from service.inference.manifest import SourceInfo
from trainer.data.dataset import CLASSES, Prepared
from trainer.evaluation.evaluate import split_names
from trainer.models.builders import build_backbone, fine_tune_prefixes
from trainer.models.compute import ensemble_macs
from trainer.training.grid import all_grids, grid_label, load_grid
from trainer.training.recipe import Recipe
from trainer.training.train import evaluation_indices

BYTES_PER_PARAM = {"float32": 4, "float16": 2}


def has_sidecar(cfg: dict[str, Any]) -> bool:
    weights = Path(str(cfg.get("weights", "")))
    return cfg.get("family") == "transfer" and weights.with_name(weights.name + ".json").is_file()


def bytes_per_param(weights_dtype: str) -> int:
    if weights_dtype not in BYTES_PER_PARAM:
        raise ValueError(f"weights_dtype must be one of {sorted(BYTES_PER_PARAM)}, got {weights_dtype!r}")
    return BYTES_PER_PARAM[weights_dtype]


@functools.cache
def _backbone_layer_params(backbone: str) -> dict[str, int]:
    """Parameters per layer of a headless keras.applications backbone (built without weights; cached)."""
    base = build_backbone(backbone, (160, 160, 3), weights="none")
    return {layer.name: int(layer.count_params()) for layer in base.layers}


def frozen_backbone_params(cfg: dict[str, Any]) -> dict[str, int]:
    """The backbone layers (name -> parameters) that training leaves at the loaded weights: every layer of a
    frozen backbone, all but the fine-tuned top blocks of a fine-tuned one. Models with the same backbone and
    weights file hold identical copies of these, which the merged ensemble file stores once."""
    if cfg.get("family") != "transfer" or not cfg.get("backbone"):
        return {}
    layers = _backbone_layer_params(cfg["backbone"])
    if not cfg.get("fine_tune_epochs"):
        return layers
    tuned = fine_tune_prefixes(cfg["backbone"], Recipe.of(cfg).fine_tune_blocks)
    return {name: n for name, n in layers.items() if not name.startswith(tuned)}


def ensemble_bytes(rows: list[dict[str, Any]], weights_dtype: str = "float32", merge: bool = True) -> int:
    """Estimated size of the exported ensemble: every model's parameters, less the frozen backbone layers a
    merged file stores once (same backbone, same weights). `export_top` checks the written files against it."""
    params = sum(r["params"] for r in rows)
    if merge:
        seen: set[tuple[str, str, str]] = set()
        for r in rows:
            cfg = r["config"]
            for layer, n in frozen_backbone_params(cfg).items():
                key = (cfg["backbone"], str(cfg.get("weights", "imagenet")), layer)
                if key in seen:
                    params -= n
                seen.add(key)
    return bytes_per_param(weights_dtype) * params


def _ranked(leaderboard: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best validation macro-F1 first (then lower validation loss, then name)."""
    return sorted(leaderboard, key=lambda r: (-r["val_macro_f1"], r["val_loss"] or 0.0, r["name"]))


def choose_models(
    leaderboard: list[dict[str, Any]],
    top: int = 3,
    max_mb: float = 120.0,
    max_per_backbone: int = 1,
    weights_dtype: str = "float32",
    merge: bool = True,
) -> list[dict[str, Any]]:
    """The `top` best by validation macro-F1, going down the ranking past a model that would push the
    ensemble over `max_mb` (weights stored as `weights_dtype`; with `merge`, shared frozen backbone layers
    count once, see `ensemble_bytes`) or add another voter on an already used frozen backbone."""
    ranked = _ranked(leaderboard)
    chosen: list[dict[str, Any]] = []
    budget = max_mb * 1024 * 1024
    for row in ranked:
        over = ensemble_bytes([*chosen, row], weights_dtype, merge) > budget
        backbone = row["config"].get("backbone")
        same = sum(1 for c in chosen if backbone and c["config"].get("backbone") == backbone)
        if over or same >= max_per_backbone:
            print(f"[export] skipping {row['name']}: " + ("size budget" if over else f"another {backbone}"))
            continue
        chosen.append(row)
        if len(chosen) == top:
            return chosen
    raise ValueError(f"only {len(chosen)} of the {len(leaderboard)} models fit --top {top} under the constraints")


def choose_ensemble(
    leaderboard: list[dict[str, Any]],
    p: Prepared,
    report_dir: Path,
    top: int = 3,
    max_mb: float = 120.0,
    candidates: int = 8,
    weights_dtype: str = "float32",
    merge: bool = True,
    max_gmac: float | None = None,
    groups: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The `top` models whose majority vote has the best validation macro-F1 (with `groups`, the MRI sequence group
    of every prepared image: the best worst class × group accuracy, then macro-F1), among every combination of
    the `candidates` best single models that fits the size budget (weights stored as `weights_dtype`; with
    `merge`, shared frozen backbone layers count once) and the compute budget (`max_gmac` per upload, shared
    frozen backbones once; None: no budget). Validation only: the official Testing split plays no part.
    Returns (chosen rows, every combination tried, best first)."""
    from itertools import combinations

    from service.inference.ensemble import majority_vote
    from trainer.evaluation.evaluate import validation_probabilities
    from trainer.evaluation.groups import group_figures

    # leave-one-source-out runs are validated on other images: they measure, they do not vote
    ranked = [r for r in _ranked(leaderboard) if not r["config"].get("exclude_source")]
    pool = [r for r in ranked if ensemble_bytes([r], weights_dtype) <= max_mb * 1024 * 1024][:candidates]
    if len(pool) < top:
        raise ValueError(f"only {len(pool)} models fit the {max_mb} MB budget; need {top}")
    va, _ = evaluation_indices(p, pool[0]["config"])
    probs = {r["name"]: validation_probabilities(r, p, report_dir) for r in pool}
    tried = []
    for combo in combinations(pool, top):
        size_mb = ensemble_bytes(list(combo), weights_dtype, merge) / 1024 / 1024
        gmac = ensemble_macs(list(combo), tuple(p.x.shape[1:]), len(CLASSES)) / 1e9
        if size_mb > max_mb or (max_gmac is not None and gmac > max_gmac):
            continue
        stacked = np.stack([probs[r["name"]] for r in combo])
        m = vote_metrics(stacked, p.y[va], split_names(pool[0]["config"])[0][1])
        row = {
            "models": [r["name"] for r in combo],
            "val_macro_f1": m["macro_f1"],
            "val_accuracy": m["accuracy"],
            "size_mb": round(size_mb, 1),
            "gmac": round(gmac, 3),
        }
        if groups is not None:
            voted = majority_vote(stacked)[0]
            row["val_worst_group"] = group_figures(p.y[va], voted, groups[va], CLASSES, "validation")["worst"]
        tried.append(row)
    if not tried:
        raise ValueError(
            f"no combination of {top} models fits {max_mb} MB" + (f" and {max_gmac} GMAC" if max_gmac else "")
        )

    def worst_accuracy(t: dict[str, Any]) -> float:
        return float(t.get("val_worst_group", {}).get("accuracy") or 0.0)

    tried.sort(key=lambda t: (-worst_accuracy(t), -t["val_macro_f1"], -t["val_accuracy"], t["size_mb"]))
    for t in tried[:10]:
        print(
            f"[export] ensemble candidate val macro-F1 {t['val_macro_f1']:.4f} acc {t['val_accuracy']:.4f} "
            + (f"worst group {t['val_worst_group']} " if "val_worst_group" in t else "")
            + f"{t['size_mb']:6.1f} MB {t['gmac']:5.2f} GMAC  {' + '.join(t['models'])}"
        )
    by_name = {r["name"]: r for r in pool}
    return [by_name[n] for n in tried[0]["models"]], tried


MIN_CHECK_MACRO_F1 = 0.95  # `--select check`: a vote below this validation macro-F1 loses the original data


def choose_by_check(
    pool: list[dict[str, Any]],
    p: Prepared,
    report_dir: Path,
    top: int = 3,
    max_gmac: float | None = None,
    min_macro_f1: float = MIN_CHECK_MACRO_F1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`--select check`: the vote of `top` runs of `pool` that rank_votes_by_check puts first (their validation
    probabilities from the report dir, their answers on the tie-broken check computed here), within `max_gmac`.
    ValueError when no vote reaches min_macro_f1. Returns (chosen rows, every vote scored, best first)."""
    import keras

    from trainer.data.tiebroken import check_indices
    from trainer.evaluation.evaluate import validation_probabilities

    va, _ = evaluation_indices(p, pool[0]["config"])
    check = check_indices(p)
    if not len(check):
        raise ValueError("--select check needs data roots whose files.csv lists a `val` split")
    probs = {r["name"]: validation_probabilities(r, p, report_dir) for r in pool}
    checked = {}
    for r in pool:
        model = keras.models.load_model(Path(r["run_dir"]) / "model.keras")
        checked[r["name"]] = np.asarray(model.predict(p.x[check].astype(np.float32), batch_size=64, verbose=0))
    by_name = {r["name"]: r for r in pool}

    def gmac(names: list[str]) -> float:
        return ensemble_macs([by_name[n] for n in names], tuple(p.x.shape[1:]), len(CLASSES)) / 1e9

    split = split_names(pool[0]["config"])[0][1]
    tried = rank_votes_by_check(probs, checked, p.y[va], split, p, check, top, gmac, max_gmac)
    for t in tried[:10]:
        print(
            f"[export] vote val macro-F1 {t['val_macro_f1']:.4f} worst check cell {t['check_worst']} tumour share "
            f"{t['check_tumour_share']}  {' + '.join(t['models'])}"
        )
    if not tried or tried[0]["val_macro_f1"] < min_macro_f1:
        raise ValueError(f"no vote of {top} of these runs reaches validation macro-F1 {min_macro_f1}")
    return [by_name[n] for n in tried[0]["models"]], tried


def rank_votes_by_check(
    val_probs: dict[str, np.ndarray],
    check_probs: dict[str, np.ndarray],
    y_val: np.ndarray,
    split: str,
    p: Prepared,
    check: np.ndarray,
    top: int = 3,
    gmac: Any = None,
    max_gmac: float | None = None,
    min_macro_f1: float = MIN_CHECK_MACRO_F1,
) -> list[dict[str, Any]]:
    """Every majority vote of `top` runs (by name: validation probabilities and answers on the checked images
    `check` of p), scored and sorted best first: validation macro-F1 ≥ min_macro_f1 first, then the best worst
    tie-broken check cell, then the highest share of partially labelled tumours answered as a tumour, then
    macro-F1. `gmac(names)`: compute per upload, votes over max_gmac are left out."""
    from itertools import combinations

    from service.inference.ensemble import majority_vote
    from trainer.data.tiebroken import figures_of

    tried = []
    for names in combinations(list(val_probs), top):
        cost = None if gmac is None else float(gmac(list(names)))
        if max_gmac is not None and cost is not None and cost > max_gmac:
            continue
        m = vote_metrics(np.stack([val_probs[n] for n in names]), y_val, split)
        fig = figures_of(p, majority_vote(np.stack([check_probs[n] for n in names]))[0], check)
        shares = [r["answered_tumour"] for r in fig["sources"] if "answered_tumour" in r]
        tried.append(
            {
                "models": list(names),
                "val_macro_f1": m["macro_f1"],
                "val_accuracy": m["accuracy"],
                "gmac": None if cost is None else round(cost, 3),
                "check_worst": fig["worst"],
                "check_tumour_share": min(shares) if shares else None,
            }
        )

    def key(t: dict[str, Any]) -> tuple[bool, float, float, float]:
        worst = float((t["check_worst"] or {}).get("accuracy") or 0.0)
        return t["val_macro_f1"] >= min_macro_f1, worst, float(t["check_tumour_share"] or 0.0), t["val_macro_f1"]

    return sorted(tried, key=key, reverse=True)


def grids_of(rows: list[dict[str, Any]]) -> list[str]:
    """The grid files the runs were trained from: as their result.json records it, else (runs recorded before it
    did) every grid in trainer/grids with an entry of that name."""
    found: set[str] = set()
    for row in rows:
        result = Path(row["run_dir"]) / "result.json" if row.get("run_dir") else None
        recorded = json.loads(result.read_text()).get("grid") if result and result.is_file() else None
        if recorded:
            found.add(recorded)
            continue
        for path in all_grids():
            if row["name"] in {e["name"] for e in load_grid(path)}:
                found.add(grid_label(path))
    return sorted(found)


NAMED_SELECTION = "trainer export --names"


def describe_sources(sources: list[SourceInfo]) -> str:
    """The manifest's data sources in one line: name (images, licence); … (counts include validation and test)."""
    return "; ".join(f"{s.name} ({s.images} images, {s.licence})" for s in sources) + (
        " (image counts include the validation and test sides)"
    )


def training_info(
    chosen: list[dict[str, Any]],
    select: str,
    top: int,
    candidates: int,
    max_gmac: float | None,
    named: bool = False,
) -> dict[str, Any]:
    """The manifest's `training` block: grids, protocol, validation split and how the models were chosen."""
    cfg = chosen[0]["config"]
    recipe = Recipe.of(cfg)
    how = f"trainer export --select {select} --top {top}"
    if select in ("ensemble", "worst_group"):
        how += f" --candidates {candidates}" + (f" --max-gmac {max_gmac:g}" if max_gmac is not None else "")
    if select == "check":
        return {
            "grids": grids_of(chosen),
            "protocol": recipe.protocol,
            "validation": f"{cfg['val_fraction']:g} of the training pool, duplicate groups whole (seed {cfg['seed']}); "
            "the tie-broken check: the `val` rows of the roots that list a split",
            "selection": f"trainer export --select check --top {top}"
            + (f" --max-gmac {max_gmac:g}" if max_gmac is not None else "")
            + f": among the votes of the runs a written rule named, the one with validation macro-F1 ≥ "
            f"{MIN_CHECK_MACRO_F1:g} and the best worst tie-broken check cell (docs/experiments.md)",
        }
    if named:
        return {
            "grids": grids_of(chosen),
            "protocol": recipe.protocol,
            "validation": f"{cfg['val_fraction']:g} of the training pool, duplicate groups whole (seed {cfg['seed']})",
            "selection": f"{NAMED_SELECTION}: the models a written rule named (docs/experiments.md)",
        }
    return {
        "grids": grids_of(chosen),
        "protocol": recipe.protocol,
        "validation": f"{cfg['val_fraction']:g} of the training pool, duplicate groups whole (seed {cfg['seed']})",
        "selection": f"{how}: best validation macro-F1 of the vote; rules in docs/experiments.md",
    }
