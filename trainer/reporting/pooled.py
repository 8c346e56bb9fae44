"""The pooled protocol in the report: its grid, the commands that reproduce it, its headline row and section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.image.preprocessing import preprocessing_version
from service.inference.manifest import Manifest, load_manifest
from trainer.evaluation.origins import load_origins, origins_lines
from trainer.evaluation.plots import plot_confusion
from trainer.reporting.markdown import pct, per_class_table
from trainer.training.grid import all_grids, grid_label, grid_preprocessing_version, load_grid

PUBLISHED = (
    "Published results on this official Testing split range 0.63–0.78 accuracy, with glioma recall "
    "typically 0.1–0.3 (a known shift between the two splits' glioma images). The 2020 student project "
    "claimed 94 % on a random split of pooled images, which leaks exact and near-duplicates between its "
    "training and test sides; that number is not comparable."
)


def _pooled_grid_file(run_names: set[str], version: int | None) -> tuple[Path | None, int | None]:
    """The grid file that trains exactly these pooled-protocol runs on preprocessing `version`, and the version
    it declares: one that declares `version`, else one that declares none ((None, None) when none does). One
    recipe on several versions' crops has the same run names in several grids (shift-v2, crop-v3, crop-v4)."""
    same = [path for path in all_grids() if {e["name"] for e in load_grid(path)} == run_names]
    declared = {path: grid_preprocessing_version(path) for path in same}
    for wanted in (version, None):
        for path in same:
            if declared[path] == wanted:
                return path, wanted
    return None, None


def _grid_name(path: Path | None) -> str:
    # no file: runs from a grid outside trainer/grids (tests, one-off grids)
    return "<the grid file that trained them>" if path is None else grid_label(path)


def pooled_grid(run_names: set[str], version: int | None = None) -> str:
    """The grid file (trainer/grids/*.toml) that trains exactly these pooled-protocol runs on preprocessing
    `version` (a placeholder when none does)."""
    return _grid_name(_pooled_grid_file(run_names, version)[0])


def pooled_commands(pooled: Path, manifest: Manifest, run_names: set[str]) -> list[str]:
    """The commands that reproduce the pooled protocol's numbers (its export's `manifest`) into the work dir
    `pooled`: the grid that trains its runs on its preprocessing version (named on the command line when the
    grid does not declare it), the weights dtype it was exported with."""
    version = preprocessing_version(manifest.preprocessing)
    path, declared = _pooled_grid_file(run_names, version)
    grid = _grid_name(path)
    named = "" if declared is not None else f" --preprocessing-version {version}"
    w = f"--work {pooled} --cache out/cache"
    dtypes = {m.weights_dtype for m in manifest.models}
    dtype = f" --weights-dtype {dtypes.pop()}" if dtypes != {"float32"} and len(dtypes) == 1 else ""
    return [
        "```bash",
        f"python -m trainer train --grid {grid} {w}{named}",
        f"python -m trainer evaluate {w}",
        f"python -m trainer export {w} --models-dir {pooled}/models{dtype}",
        f"python -m trainer evaluate {w} --models-dir {pooled}/models",
        "```",
    ]


def pooled_summary(pooled: Path) -> dict[str, Any] | None:
    """The pooled protocol's ensemble metrics ({key: metrics}) and manifest, if that run was exported."""
    if not (pooled / "models" / "manifest.json").exists():
        return None
    m = load_manifest(pooled / "models")
    if "pooled_test" not in m.ensemble.metrics:
        raise ValueError(f"{pooled / 'models'} is not a pooled-protocol export (no pooled_test metrics)")
    return {"manifest": m, "metrics": {k: v.model_dump() for k, v in m.ensemble.metrics.items()}}


RUN_ONLY_KEYS = ("name", "protocol", "init_seed")  # what may differ between two runs of one recipe


def recipes(m: Manifest) -> set[str]:
    """The distinct training recipes of an ensemble's models: their configs without name, protocol and init
    seed (a seed ensemble is one recipe trained several times)."""
    return {json.dumps({k: v for k, v in e.config.items() if k not in RUN_ONLY_KEYS}, sort_keys=True) for e in m.models}


def pooled_label(shipped: Manifest, pooled: Manifest) -> str:
    """How the headline names the pooled protocol's row: the shipped recipes retrained, or other ones."""
    if recipes(pooled) == recipes(shipped):
        return "same recipes retrained"
    return "earlier recipes retrained (not the shipped ones)"


def pooled_section(
    pooled: Path, summary: dict[str, Any], img: Path, n_images: int, shipped: Manifest | None = None
) -> list[str]:
    """The leak-free pooled protocol: the same recipes retrained on Training ∪ Testing split 80/20."""
    from trainer.data.dataset import POOLED_SEED, POOLED_TEST_FRACTION

    m: Manifest = summary["manifest"]
    t, v = summary["metrics"]["pooled_test"], summary["metrics"]["validation"]
    title = "Ensemble — pooled protocol, held-out 20 %"
    plot_confusion(t["confusion_matrix"], m.classes, title, img / "pooled_test.png")
    board = json.loads((pooled / "report" / "leaderboard.json").read_text())
    origins = load_origins(pooled, m.model_version)
    lines = [
        "## Leak-free pooled protocol",
        "",
        f"Training and Testing pooled ({n_images} images), split "
        f"{100 - 100 * POOLED_TEST_FRACTION:.0f}/{100 * POOLED_TEST_FRACTION:.0f} stratified by class with seed "
        f"{POOLED_SEED}; every duplicate group (exact and near) stays on one side, so unlike the 2020 project's split",
        "no image has a copy across it. Validation is carved (the same way) from the 80 %, models and the",
        "ensemble are selected on it, and the held-out 20 % is used for these numbers only. This measures the",
        "recipe on the pooled distribution (both collections on both sides); the shipped models are the ones",
        "trained on the official Training split above.",
        *(
            [
                "",
                f"**These runs use other recipes than the shipped ensemble `{shipped.model_version}`** "
                f"({', '.join(e.name for e in shipped.models)}): its recipe has not been retrained under this "
                "protocol, so the numbers below describe the earlier recipes.",
            ]
            if shipped is not None and recipes(shipped) != recipes(m)
            else []
        ),
        "",
        "| | n | accuracy | macro-F1 | glioma recall |",
        "|---|---|---|---|---|",
        f"| ensemble, validation (selection) | {v['n']} | {pct(v['accuracy'])} | {v['macro_f1']:.3f} | "
        f"{v['per_class'][m.classes[0]]['recall']:.3f} |",
        f"| ensemble, **pooled held-out 20 %** | {t['n']} | **{pct(t['accuracy'])}** | **{t['macro_f1']:.3f}** | "
        f"{t['per_class'][m.classes[0]]['recall']:.3f} |",
        "",
        f"Ensemble `{m.model_version}` (preprocessing v{preprocessing_version(m.preprocessing)}): "
        f"{' + '.join(e.name for e in m.models)}.",
        "",
        *per_class_table(t, m.classes),
        "",
        "![confusion matrix, pooled protocol](img/pooled_test.png)",
        "",
        *([*origins_lines(origins), ""] if origins else []),
        "Every model trained under this protocol:",
        "",
        "| # | model | epochs | train s | val acc | val F1 | pooled-test acc | pooled-test F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in board:
        lines.append(
            f"| {r['rank']} | {r['name']} | {r['epochs_run']} | {r['train_seconds']:.0f} | {r['val_accuracy']:.3f} | "
            f"{r['val_macro_f1']:.3f} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} |"
        )
    minutes = sum(r["train_seconds"] for r in board) / 60
    tuned = any(r["config"].get("fine_tune_epochs") for r in board)
    what = (
        "most of it fine-tuning the backbone's top blocks"
        if tuned
        else "heads on frozen-backbone features; features already in the shared cache were not recomputed"
    )
    reproduce = f"Reproduce (training took {minutes:.0f} min on 2 cores, {what}):"
    return [*lines, "", reproduce, "", *pooled_commands(pooled, m, {r["name"] for r in board})]
