"""Accuracy by class × MRI sequence group and across sources: where a model fails, not only how often."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.models.sequence import SEQUENCE_GROUPS
from trainer.training.recipe import SEED_TAG, held_out_tag

MIN_CELL = 10  # a class × group cell needs this many images to count as the worst one


def _cell(right: np.ndarray) -> dict[str, Any]:
    return {"n": len(right), "accuracy": round(float(right.mean()), 4) if len(right) else None}


def group_figures(
    y: np.ndarray, pred: np.ndarray, groups: np.ndarray, classes: list[str], split: str, min_n: int = MIN_CELL
) -> dict[str, Any]:
    """Accuracy per class × sequence group, per group, and the worst cell with at least `min_n` images
    (the shape of service.inference.manifest.GroupFigures)."""
    right = y == pred
    cells = {
        c: {g: _cell(right[(y == k) & (groups == j)]) for j, g in enumerate(SEQUENCE_GROUPS)}
        for k, c in enumerate(classes)
    }
    by_group = {g: _cell(right[groups == j]) for j, g in enumerate(SEQUENCE_GROUPS)}
    counted = [(cell["accuracy"], c, g, cell["n"]) for c, row in cells.items() for g, cell in row.items()]
    counted = [t for t in counted if t[3] >= min_n]
    worst: dict[str, Any] = {}
    if counted:
        acc, c, g, n = min(counted)
        worst = {"class": c, "group": g, "n": n, "accuracy": acc}
    return {"split": split, "cells": cells, "by_group": by_group, "worst": worst, "min_n": min_n}


def cross_source_figures(
    source: str, model: str, y: np.ndarray, pred: np.ndarray, groups: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """A held-out source's accuracy, per class and per sequence group (the shape of
    service.inference.manifest.CrossSource); a partial label (a tumour of unknown type) is right as any tumour class,
    counted under its own name."""
    from trainer.data.dataset import ANY_TUMOUR_NAME, correct

    right = correct(y, pred, classes)
    labels = [*enumerate(classes), (len(classes), ANY_TUMOUR_NAME)]
    return {
        "source": source,
        "model": model,
        "n": len(y),
        "accuracy": round(float(right.mean()), 4) if len(y) else 0.0,
        "per_class": {c: _cell(right[y == k]) for k, c in labels if (y == k).any()},
        "by_group": {g: _cell(right[groups == j]) for j, g in enumerate(SEQUENCE_GROUPS) if (groups == j).any()},
    }


UNSEEN_BY = " (never trained on "


def unseen_label(model_version: str, source: str) -> str:
    """The `model` of a cross-source row scored by a whole ensemble that never trained on the source."""
    return f"ensemble {model_version}{UNSEEN_BY}{source})"


def recipe_of(row: dict[str, Any]) -> str:
    """The recipe a cross-source row measures: its leave-one-source-out run's name without `-no-<source>` and
    without its initialisation seed (`-s<seed>`: seeds of one recipe pool), or the ensemble that scored it."""
    name = str(row["model"]).replace(f"-{held_out_tag(str(row['source']))}", "").split(UNSEEN_BY)[0]
    return SEED_TAG.sub("", name)


def recipe_means(cross: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per recipe, the mean accuracy over its runs (every source it held out, every seed), the sources of those
    runs (one entry per run) and how many seeds there were."""
    out: dict[str, dict[str, Any]] = {}
    for row in cross:
        r = out.setdefault(recipe_of(row), {"sources": [], "accuracies": [], "seeds": set()})
        r["sources"].append(row["source"])
        r["accuracies"].append(row["accuracy"])
        seed = SEED_TAG.search(str(row["model"]))
        r["seeds"].add(seed.group(0) if seed else "")
    return {
        k: {
            "sources": v["sources"],
            "seeds": len(v["seeds"]),
            "mean": round(sum(v["accuracies"]) / len(v["accuracies"]), 4),
        }
        for k, v in out.items()
    }


def format_groups(fig: dict[str, Any]) -> list[str]:
    """A Markdown table of group_figures: rows classes, columns sequence groups, cells `accuracy (n)`."""

    def show(cell: dict[str, Any]) -> str:
        return "–" if not cell["n"] else f"{100 * cell['accuracy']:.1f} % ({cell['n']})"

    lines = [f"| class | {' | '.join(SEQUENCE_GROUPS)} |", "|---|" + "---|" * len(SEQUENCE_GROUPS)]
    lines += [f"| {c} | {' | '.join(show(row[g]) for g in SEQUENCE_GROUPS)} |" for c, row in fig["cells"].items()]
    lines.append(f"| all | {' | '.join(show(fig['by_group'][g]) for g in SEQUENCE_GROUPS)} |")
    return lines
