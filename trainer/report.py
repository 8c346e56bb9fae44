"""Write docs/evaluation.md (and its PNGs) from the artefacts of prepare → train → evaluate → export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from service.confidence import apply_temperature
from service.manifest import Manifest, load_manifest
from service.plausibility import FLAT_BACKDROP_SPREAD
from service.preprocessing import GAMMA_PERCENTILE, GAMMA_TARGET, THRESHOLD_OFFSET, preprocessing_version
from service.preprocessing import THRESHOLD as CROP_THRESHOLD
from service.runtime import Ensemble
from trainer import leaderboard
from trainer.calibration import ECE_BINS, reliability
from trainer.data import Prepared, class_rows
from trainer.export import raw_probabilities
from trainer.grid import grid_preprocessing_version, load_grid
from trainer.origins import load_origins, origins_lines
from trainer.plots import plot_confusion, plot_leaderboard, plot_reliability
from trainer.robustness import ensemble_label, mean_shifted_accuracy

PUBLISHED = (
    "Published results on this official Testing split range 0.63–0.78 accuracy, with glioma recall "
    "typically 0.1–0.3 (a known shift between the two splits' glioma images). The 2020 student project "
    "claimed 94 % on a random split of pooled images, which leaks exact and near-duplicates between its "
    "training and test sides; that number is not comparable."
)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _per_class_table(m: dict[str, Any], classes: list[str]) -> list[str]:
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in classes:
        pc = m["per_class"][c]
        rows.append(f"| {c} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
    return rows


def _calibration_section(manifest: Manifest, models_dir: Path, p: Prepared, img: Path) -> list[str]:
    """ECE before/after per model and for the ensemble mean, reliability diagrams, and the uncertainty rule."""
    ensemble = Ensemble.load(models_dir)
    raw, y, _ = raw_probabilities(ensemble, p)
    temps = [m.temperature for m in manifest.models]
    for key, title in (("official_test", "official Testing split"), ("validation", "validation")):
        after = np.stack([apply_temperature(m, t) for m, t in zip(raw[key], temps, strict=True)])
        curves = {"ensemble mean, before": raw[key].mean(axis=0), "ensemble mean, after": after.mean(axis=0)}
        for i, m in enumerate(manifest.models[:1]):
            curves[f"{m.name}, before"], curves[f"{m.name}, after"] = raw[key][i], after[i]
        plot_reliability(
            {k: reliability(v, y[key]) for k, v in curves.items()},
            f"Reliability, {title} ({ECE_BINS} bins)",
            img / f"reliability_{key}.png",
        )
    cal, rule = manifest.ensemble.calibration, manifest.ensemble.uncertainty
    lines = [
        "## Calibration and uncertainty",
        "",
        "Each model's temperature T is fitted on the validation split at export (negative log-likelihood,",
        "log grid 0.05–20); the service reports softmax(logits / T) per model and their mean. Expected",
        f"calibration error ({ECE_BINS} equal-width bins of the top probability), lower is better:",
        "",
        "| | T | validation ECE before → after | official Testing ECE before → after |",
        "|---|---|---|---|",
    ]
    for m in manifest.models:
        v, t = m.calibration.get("validation", {}), m.calibration.get("official_test", {})
        lines.append(
            f"| {m.name} | {m.temperature:g} | {v.get('ece_before', float('nan')):.3f} → "
            f"{v.get('ece_after', float('nan')):.3f} | {t.get('ece_before', float('nan')):.3f} → "
            f"{t.get('ece_after', float('nan')):.3f} |"
        )
    v, t = cal.get("validation", {}), cal.get("official_test", {})
    lines += [
        f"| ensemble mean | – | {v.get('ece_before', float('nan')):.3f} → {v.get('ece_after', float('nan')):.3f} | "
        f"{t.get('ece_before', float('nan')):.3f} → {t.get('ece_after', float('nan')):.3f} |",
        "",
        "Each model's ECE is its own; the ensemble's mean of calibrated models is softer than each of them, so",
        "its ECE can rise while every model's falls (a weak, near-uniform voter pulls the mean further down).",
        "The vote itself does not change with temperatures (arg-max is invariant); only ties and the reported",
        "probabilities do.",
        "",
        "![reliability, official Testing split](img/reliability_official_test.png)",
        "![reliability, validation](img/reliability_validation.png)",
        "",
        "A prediction is flagged `uncertain` when "
        + ("the models do not all vote for the label, " if rule.flag_disagreement else "")
        + f"the mean probability of the label is below {rule.min_top_probability:g}, or the normalised entropy",
        f"of the mean probabilities is above {rule.max_normalized_entropy:g}. The rule (thresholds on a grid, and",
        "whether disagreement alone flags) is the one that keeps the most validation predictions confident",
        f"while their accuracy stays ≥ {rule.target_accuracy or 0:g}.",
        "",
        "| split | n | accuracy, all | confident: n | confident: accuracy | uncertain: n | uncertain: accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in (("validation", "validation (thresholds fitted here)"), ("official_test", "official Testing")):
        c = cal.get(key, {})
        if c:
            lines.append(
                f"| {title} | {c['n']:.0f} | {_pct(c['accuracy'])} | {c['confident_n']:.0f} | "
                f"{_pct(c.get('confident_accuracy'))} | {c['uncertain_n']:.0f} | {_pct(c.get('uncertain_accuracy'))} |"
            )
    return [*lines, ""]


NON_MRI_SECTION = "## Not an MRI? (warnings)"
NON_MRI_NEXT = "### Training curves of the chosen models"


def non_mri_section(r: dict[str, Any]) -> list[str]:
    """The not-an-MRI section of docs/evaluation.md from trainer.nonmri.measure's result."""
    lines = [
        NON_MRI_SECTION,
        "",
        "`/v1/predict` returns `warnings` when an upload is unlikely to be a brain-MRI slice: `not_grayscale`",
        "(colourfulness of the crop > 0.02; every dataset image is 0), `no_brain_outline` (crop fallback),",
        "`no_dark_background` (the crop's 10th grey-level percentile above the largest among the training",
        "pool's images, unless the darkest tenth of the crop is one flat grey level within "
        f"{FLAT_BACKDROP_SPREAD:g} grey levels: an MRI",
        "slice cropped to the head keeps its backdrop of air around it, dark or, when a viewer renders the air",
        "grey, flat) and `unlike_training_images` (a model's Mahalanobis `ood_score` above the largest among",
        "the training pool). Both thresholds are the largest value over the training pool (the Training split:",
        "the images the models were trained and validated on), so no image of it is flagged; the Testing split",
        "plays no part in them. Measured through the service's own code path (`python -m trainer nonmri`):",
        "",
        "| set | n | flagged | rate |",
        "|---|---|---|---|",
        f"| official Testing split (real MRI: false flags) | {r['mri_n']} | {r['mri_flagged']} | "
        f"{_pct(r['mri_false_flag_rate'])} |",
        f"| non-MRI images (catches) | {r['non_mri_n']} | {r['non_mri_caught']} | {_pct(r['non_mri_catch_rate'])} |",
        "",
        "| non-MRI source | caught / n |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v['caught']} / {v['n']} |" for k, v in r["by_source"].items()]
    flagged = r.get("mri_flagged_images", {})
    lines += [
        "",
        f"Reasons on the non-MRI set: {r['non_mri_reasons']}; on the Testing split: {r['mri_reasons'] or 'none'}.",
        "Flagged Testing images: "
        + (", ".join(f"{name} ({', '.join(w)})" for name, w in flagged.items()) or "none")
        + ".",
        f"Missed: {', '.join(r['missed']) or 'none'}. (scikit-image's Shepp–Logan phantom, a synthetic head slice,",
        "is left out of the set.)",
        "",
        "How this rule came about, and which Testing images were looked at while choosing it (so the Testing figure",
        'is not a pristine hold-out for it): docs/experiments.md, "The not-an-MRI warnings".',
        "",
    ]
    return lines


def replace_section(docs: Path, lines: list[str], followers: list[str]) -> Path:
    """Replace the section of docs/evaluation.md that starts with lines[0] (up to the first of `followers`
    after it), or insert it before the first of `followers` found."""
    report = docs / "evaluation.md"
    text = report.read_text()
    heading = lines[0]
    start = text.find(heading)
    ends = [i for i in (text.find(f, max(start, 0)) for f in followers) if i >= 0]
    if not ends:
        raise ValueError(f"{report}: none of {followers} found to put '{heading}' before")
    end = min(ends)
    report.write_text(text[: start if start >= 0 else end] + "\n".join(lines) + "\n" + text[end:])
    return report


def update_non_mri_docs(r: dict[str, Any], docs: Path) -> Path:
    """Replace the not-an-MRI section of docs/evaluation.md with a fresh measurement (or insert it before the
    training curves, where `trainer report` puts it when the ensemble has ood_score models)."""
    return replace_section(docs, non_mri_section(r), [NON_MRI_NEXT])


ROBUSTNESS_SECTION = "## Robustness to acquisition shifts"
CROP_STABILITY_SECTION = "## Crop stability across preprocessing versions"  # follows the robustness section


def robustness_section(r: dict[str, Any], other: dict[str, Any] | None = None) -> list[str]:
    """The robustness section of docs/evaluation.md from trainer.robustness.measure's result for the shipped
    ensemble (and, when given, the same measurement of another ensemble, as a comparison column)."""
    shifts = r["shifts"]
    base = shifts["none"]
    before = other["shifts"] if other else {}
    held = any(m.get("accuracy_box_held") is not None for m in shifts.values())  # older robustness files lack it
    lines = [
        ROBUSTNESS_SECTION,
        "",
        "Images from other scanners, protocols and exports differ from this dataset in brightness, contrast,",
        "sharpness, noise, orientation, resolution and compression. Each shift below is applied to the decoded",
        f"validation image (n = {r['n']}) before the shared preprocessing, then the service's code path runs",
        "(crop, ensemble, vote, warnings; `python -m trainer robustness`). Blur and noise are in pixels of a",
        "512-pixel image. Nothing was selected or tuned on these numbers. A failed crop boxes under 20 % of the",
        f"image. Ensemble {ensemble_label(r, '`')}.",
        "",
        "| shift | accuracy | macro-F1 | vote unchanged | failed crops | flagged as not an MRI |"
        + (" accuracy, unshifted box |" if held else "")
        + (f" accuracy, {ensemble_label(other, '`')} |" if other else ""),
        "|---|---|---|---|---|---|" + ("---|" if held else "") + ("---|" if before else ""),
    ]
    for name, m in shifts.items():
        lines.append(
            f"| {name} | {_pct(m['accuracy'])} | {m['macro_f1']:.3f} | {_pct(m['agreement_with_unshifted'])} | "
            f"{_pct(m['failed_crops'])} | {_pct(m['flagged'])} |"
            + (
                (f" {_pct(m['accuracy_box_held'])} |" if m.get("accuracy_box_held") is not None else " – |")
                if held
                else ""
            )
            + (f" {_pct(before[name]['accuracy'])} |" if name in before else (" – |" if before else ""))
        )
    if held:
        lines += [
            "",
            "*Accuracy, unshifted box*: the same shifted pixels cropped with the box the unshifted image got (scaled",
            "for the downscaled copy; rotations move the head, so none): the gap to *accuracy* is what the crop's",
            "movement costs, the rest of the drop is the models' response to the shifted pixels.",
        ]
    worst = min((n for n in shifts if n != "none"), key=lambda n: shifts[n]["accuracy"])
    robust = [n for n in shifts if n != "none" and shifts[n]["accuracy"] >= base["accuracy"] - 0.02]
    crops = max(shifts, key=lambda n: shifts[n]["failed_crops"])
    lines += [
        "",
        f"Largest drop: {worst}, {_pct(shifts[worst]['accuracy'])} against {_pct(base['accuracy'])} unshifted. "
        f"Within 2 points of unshifted: {', '.join(robust) or 'none'}.",
        f"Mean accuracy over the {len(shifts) - 1} shifts: {_pct(mean_shifted_accuracy(r))}"
        + (f" ({ensemble_label(other, '`')}: {_pct(mean_shifted_accuracy(other))})." if other else "."),
        f"Most failed crops: {crops}, {_pct(shifts[crops]['failed_crops'])} of the images (unshifted "
        f"{_pct(base['failed_crops'])}); " + _crop_sentence(r.get("preprocessing_version", 1)),
    ]
    if r.get("preprocessing_version", 1) >= 2:
        lines += [
            "Preprocessing version 2 scales each image's grey 99th percentile to a fixed level before the crop, so",
            "a global change of brightness reaches neither the crop nor the models; gamma, contrast and blur still",
            "do.",
        ]
    else:
        lines += [
            "Preprocessing version 1 normalises nothing per image, so a global change of brightness or gamma moves",
            "the models as far as a change of tissue would, and a darker export loses the head's outline.",
        ]
    if other:
        f1 = (other.get("validation_macro_f1"), r.get("validation_macro_f1"))
        scores = f" (validation macro-F1 {f1[0]:.3f}; this one {f1[1]:.3f})" if None not in f1 else ""
        lines.append(
            f"The last column: the same measurement of another ensemble, not the one in `models/`: "
            f"{ensemble_label(other, '`')}{scores}."
        )
    lines += ["", "![robustness to acquisition shifts](img/robustness.png)", ""]
    return lines


def _crop_sentence(version: int) -> str:
    """How the crop of a preprocessing version thresholds, for the robustness section."""
    if version < 3:
        return f"the crop thresholds grey levels at {CROP_THRESHOLD}."
    relative = (
        f"the crop thresholds grey levels {THRESHOLD_OFFSET} above the image's background (the median of its "
        f"frame), at most {CROP_THRESHOLD}"
    )
    if version == 3:
        return f"{relative} (preprocessing version 3)."
    return (
        f"{relative}, on a copy whose gamma puts its grey {GAMMA_PERCENTILE:.0f}th percentile at "
        f"{GAMMA_TARGET:.0f} (preprocessing version {version})."
    )


def crop_stability_section(c: dict[str, Any], picture: bool) -> list[str]:
    """The crop-stability section from `python -m trainer crops`' crop_stability.json."""
    versions = list(c["unshifted_vs_first"])
    lines = [
        CROP_STABILITY_SECTION,
        "",
        "No model involved: how far each preprocessing version's crop box moves when a shift is applied before it,",
        f"on {c['n']} random Training images (`python -m trainer crops`, seed {c['seed']}). Each cell: mean IoU of",
        "the box with the same version's box on the unshifted image / share of images whose box moved (IoU < 0.8).",
        "Rotations are left out (the head's extent changes with them).",
        "",
        "| shift | " + " | ".join(versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for name, row in c["shifts"].items():
        cells = " | ".join(f"{row[v]['mean_iou']:.3f} / {_pct(row[v]['moved'])}" for v in versions)
        lines.append(f"| {name} | {cells} |")
    same = c["unshifted_vs_first"]  # the first version against itself is 1.000 by definition: not shown
    cells = " | ".join(f"{same[v]['mean_iou']:.3f} / {_pct(same[v]['moved'])}" for v in versions[1:])
    lines.append(f"| unshifted, against {versions[0]}'s box | (reference) | {cells} |")
    if picture:
        lines += [
            "",
            f"The images whose {versions[0]} and {versions[1]} boxes differ most, both boxes drawn:",
            "",
            "![crop boxes](img/crop_boxes.png)",
        ]
    return lines


def load_robustness(work: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(<work>/report/robustness.json, robustness-compare.json or None), or None without the first."""
    report = work / "report"
    if not (report / "robustness.json").exists():
        return None
    other = report / "robustness-compare.json"
    return (
        json.loads((report / "robustness.json").read_text()),
        json.loads(other.read_text()) if other.exists() else None,
    )


def update_robustness_docs(r: dict[str, Any], docs: Path, other: dict[str, Any] | None = None) -> Path:
    from trainer.robustness import plot_robustness

    (docs / "img").mkdir(exist_ok=True)
    plot_robustness(r, docs / "img" / "robustness.png", other)
    return replace_section(docs, robustness_section(r, other), [CROP_STABILITY_SECTION, NON_MRI_SECTION, NON_MRI_NEXT])


def measure_non_mri(models_dir: Path, data: Path, work: Path) -> dict[str, Any]:
    """trainer.nonmri.measure on an exported ensemble, also written to <work>/report/non_mri.json."""
    from trainer.nonmri import measure

    r = measure(Ensemble.load(models_dir), data)
    (work / "report").mkdir(parents=True, exist_ok=True)
    (work / "report" / "non_mri.json").write_text(json.dumps(r, indent=1) + "\n")
    return r


def ensembles_tried_section(work: Path, top: int = 15) -> list[str]:
    """The combinations the export scored on validation (what choosing the ensemble cost)."""
    path = work / "report" / "ensembles_tried.json"
    if not path.exists():
        return []
    tried = json.loads(path.read_text())
    models = len({name for t in tried for name in t["models"]})
    if len(tried) == 1:
        scored = [
            f"`python -m trainer export` had one combination to score: the {models} models its work dir holds "
            "(within the 120 MB budget). Its",
            "validation score; the official Testing split was not consulted:",
        ]
    else:
        scored = [
            f"`python -m trainer export` scored the majority vote of {len(tried)} combinations of three models (from "
            f"the {models} best single models, within the 120 MB budget) on validation and kept the best; the",
            f"official Testing split was not consulted. The best {min(top, len(tried))}:",
        ]
    lines = [
        ENSEMBLES_TRIED_SECTION,
        "",
        *scored,
        "",
        "| # | voters | val macro-F1 | val accuracy | MB, estimated |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {' + '.join(t['models'])} | {t['val_macro_f1']:.4f} | {_pct(t['val_accuracy'])} | {t['size_mb']} |"
        for i, t in enumerate(tried[:top], 1)
    ]
    note = (
        "MB, estimated: the export's estimate of the weights, frozen backbone layers that voters share counted"
        " once as the merged file stores them (the written files are checked against the budget)."
    )
    return [*lines, "", note, ""]


GRIDS = Path(__file__).parent / "grids"


def _pooled_grid_file(run_names: set[str], version: int | None) -> tuple[Path | None, int | None]:
    """The grid file that trains exactly these pooled-protocol runs on preprocessing `version`, and the version
    it declares: one that declares `version`, else one that declares none ((None, None) when none does). One
    recipe on several versions' crops has the same run names in several grids (shift-v2, crop-v3, crop-v4)."""
    same = [path for path in sorted(GRIDS.glob("*.toml")) if {e["name"] for e in load_grid(path)} == run_names]
    declared = {path: grid_preprocessing_version(path) for path in same}
    for wanted in (version, None):
        for path in same:
            if declared[path] == wanted:
                return path, wanted
    return None, None


def _grid_name(path: Path | None) -> str:
    # no file: runs from a grid outside trainer/grids (tests, one-off grids)
    return "<the grid file that trained them>" if path is None else f"trainer/grids/{path.name}"


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


def _brightness_lines(b: dict[str, dict[str, float]] | None) -> list[str]:
    """How bright each class was exported, per split (median grey 99th percentile of the original images)."""
    if not b:
        return []
    per_split = "; ".join(
        f"{split} " + ", ".join(f"{c} {v:.0f}" for c, v in levels.items()) for split, levels in b.items()
    )
    train, test = b["Training"], b["Testing"]
    darkest, brightest = min(train, key=train.__getitem__), max(train, key=train.__getitem__)
    shifted = ", ".join(c for c in test if abs(test[c] - train[c]) >= 20)
    return [
        f"- Brightness (median over the images of the grey 99th percentile, before preprocessing): {per_split}. "
        f"In Training the classes differ by up to {train[brightest] - train[darkest]:.0f} grey levels ({darkest} "
        f"darkest, {brightest} brightest), a shortcut a model can learn instead of anatomy"
        + (f"; Testing differs from Training by 20 levels or more in: {shifted}" if shifted else "")
        + ". Preprocessing version 2 scales that percentile to one level for every image.",
    ]


def _preprocessing_lines(preprocessing: dict[str, Any]) -> list[str]:
    from service.preprocessing import INTENSITY_PERCENTILE, INTENSITY_TARGET

    version = preprocessing_version(preprocessing)
    step = (
        f"scaled so that their grey {INTENSITY_PERCENTILE:g}th percentile is {INTENSITY_TARGET:g} (removes a global "
        "brightness difference between exports), then "
        if version >= 2
        else ""
    )
    return [
        f"- Preprocessing version {version} (the manifest declares it, the service applies it): images are {step}"
        "cropped to the brain (largest external contour) and resized to 150×150 RGB by the shared "
        "`service/preprocessing.py`; models normalise inside themselves.",
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


def _pooled_section(
    pooled: Path, summary: dict[str, Any], img: Path, n_images: int, shipped: Manifest | None = None
) -> list[str]:
    """The leak-free pooled protocol: the same recipes retrained on Training ∪ Testing split 80/20."""
    from trainer.data import POOLED_SEED, POOLED_TEST_FRACTION

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
        f"| ensemble, validation (selection) | {v['n']} | {_pct(v['accuracy'])} | {v['macro_f1']:.3f} | "
        f"{v['per_class'][m.classes[0]]['recall']:.3f} |",
        f"| ensemble, **pooled held-out 20 %** | {t['n']} | **{_pct(t['accuracy'])}** | **{t['macro_f1']:.3f}** | "
        f"{t['per_class'][m.classes[0]]['recall']:.3f} |",
        "",
        f"Ensemble `{m.model_version}` (preprocessing v{preprocessing_version(m.preprocessing)}): "
        f"{' + '.join(e.name for e in m.models)}.",
        "",
        *_per_class_table(t, m.classes),
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


HEADLINE_SECTION = "## Headline"
ENSEMBLES_TRIED_SECTION = "## Ensembles tried"  # follows the pooled section


def headline_section(manifest: Manifest, pooled: dict[str, Any] | None) -> list[str]:
    """The headline table: the shipped ensemble on validation and the official Testing split, and the pooled
    protocol's row (pooled_summary) or a sentence saying it is not measured yet."""
    classes = manifest.classes
    ens = {k: v.model_dump() for k, v in manifest.ensemble.metrics.items()}
    t, v = ens["official_test"], ens["validation"]
    lines = [
        HEADLINE_SECTION,
        "",
        "| | n | accuracy | macro-F1 | glioma recall |",
        "|---|---|---|---|---|",
        f"| ensemble, validation (selection) | {v['n']} | {_pct(v['accuracy'])} | {v['macro_f1']:.3f} | "
        f"{v['per_class'][classes[0]]['recall']:.3f} |",
        f"| ensemble, **official Testing split** | {t['n']} | **{_pct(t['accuracy'])}** | **{t['macro_f1']:.3f}** | "
        f"{t['per_class'][classes[0]]['recall']:.3f} |",
    ]
    if pooled is not None:
        pt, label = pooled["metrics"]["pooled_test"], pooled_label(manifest, pooled["manifest"])
        lines.append(
            f"| {label}, **leak-free pooled protocol** (held-out 20 %) | {pt['n']} | "
            f"**{_pct(pt['accuracy'])}** | **{pt['macro_f1']:.3f}** | {pt['per_class'][classes[0]]['recall']:.3f} |"
        )
    else:
        lines += [
            "",
            "The leak-free pooled protocol (Training ∪ Testing, duplicate groups kept whole, stratified 80/20) is not "
            "measured for this ensemble's recipes yet: this report adds it once `<work>/pooled/models` holds their "
            "pooled export (docs/training.md → protocols).",
        ]
    return lines


def update_pooled_docs(pooled: Path, summary: dict[str, Any], models_dir: Path, docs: Path, n_images: int) -> Path:
    """Bring the pooled protocol into docs/evaluation.md without the rest of the run's artefacts: its headline
    row and its section (replaced, or inserted before the ensembles tried), from `summary` (pooled_summary of
    <pooled>) and <pooled>/report/leaderboard.json; the shipped ensemble (models_dir) labels the row."""
    shipped = load_manifest(models_dir)
    replace_section(docs, [*headline_section(shipped, summary), ""], [PUBLISHED])
    (docs / "img").mkdir(parents=True, exist_ok=True)
    section = _pooled_section(pooled, summary, docs / "img", n_images, shipped)
    return replace_section(docs, [*section, ""], [ENSEMBLES_TRIED_SECTION])


def _tta_section(r: dict[str, Any]) -> list[str]:
    rows = ["| | " + " | ".join(f"{k} acc | {k} macro-F1" for k in r["plain"]) + " |", "|---|---|---|---|---|"]
    for name in ("plain", "hflip_tta"):
        rows.append(
            f"| {name} | " + " | ".join(f"{_pct(m['accuracy'])} | {m['macro_f1']:.3f}" for m in r[name].values()) + " |"
        )
    lines = [
        "### Test-time augmentation (horizontal flip)",
        "",
        "Each model's probabilities averaged over the image and its mirror, then the vote "
        "(`python -m trainer tta`). It doubles the compute per upload, so it is adopted only when, on",
        "validation, it raises macro-F1 and the vote is right on significantly more images (exact McNemar test",
        "on the images where exactly one of the two is right, p < 0.05).",
        "",
        *rows,
    ]
    discordant = r.get("discordant")
    if discordant is None:  # measured before the paired test was part of the rule
        verdict = "adopted" if r["adopted"] else "not adopted: it does not raise validation macro-F1"
    else:
        lines += ["", "| | right only without TTA | right only with TTA | McNemar p |", "|---|---|---|---|"]
        lines += [
            f"| {key} | {d['only_plain_right']} | {d['only_tta_right']} | {d['mcnemar_p']:.3f} |"
            for key, d in discordant.items()
        ]
        verdict = (
            "it pays, but the service does not average over the mirror image yet"
            if r["adopted"]
            else "not adopted; the service does not average over the mirror image"
        )
    return [*lines, "", f"Decided on validation: {verdict}."]


def _shift_limits(preprocessing: dict[str, Any]) -> list[str]:
    """The Limits bullet on acquisition shifts, for the ensemble's preprocessing version."""
    if "intensity" not in preprocessing:
        return [
            "- A global change of brightness, gamma or sharpness, as another scanner or export brings, can cost",
            "  more accuracy than the Testing split's shift does (see Robustness to acquisition shifts): the models",
            "  have no per-image intensity normalisation and the crop's threshold is fixed.",
        ]
    version = preprocessing.get("version", 1)
    curve = "  brightness is normalised (its 99th grey percentile), not the shape of its grey-level curve"
    column = "The robustness table's 'accuracy, unshifted box' column"
    shows = "  shows how much of each drop is the crop moving"
    if version >= 4:
        crop = [
            f"{curve}. The crop follows",
            "  the image's background on a gamma-normalised copy, so a gamma change moves it little; the models",
            f"  still see the changed curve. {column}",
            f"{shows}.",
        ]
    elif version >= 3:
        crop = [
            f"{curve}. The crop follows",
            "  the image's background, so darker darks no longer shrink it; brighter darks (gamma 0.6), strong",
            f"  blur and strong rotation cost the most. {column}",
            f"{shows} (under gamma 0.6, most of it); preprocessing version 4",
            "  (`python -m trainer crops --versions 3 4`) is the candidate crop that holds still there.",
        ]
    else:
        crop = [
            f"{curve}, and",
            "  darker darks (gamma 1.6) make the crop's fixed threshold miss the head on about one image in eight.",
        ]
    return [
        "- A change of gamma, contrast curve or sharpness, as another scanner or export brings, can cost more",
        "  accuracy than the Testing split's shift does (see Robustness to acquisition shifts): each image's",
        *crop,
        "  Training on shifted views (`shift_views`) narrows the loss for the shift families it draws from;",
        "  the robustness check measures those same families, not another collection's shifts.",
    ]


def write_report(work: Path, models_dir: Path, docs: Path, p: Prepared, dataset: Path | None = None) -> Path:
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    data = json.loads((work / "data_report.json").read_text())
    board = leaderboard.merged(work, docs)
    leaderboard.save(board, docs)
    manifest = load_manifest(models_dir)
    classes = manifest.classes
    ens = {k: v.model_dump() for k, v in manifest.ensemble.metrics.items()}
    plot_leaderboard(board, img / "leaderboard.png")
    for key, title in (("validation", "validation"), ("official_test", "official Testing split")):
        plot_confusion(ens[key]["confusion_matrix"], classes, f"Ensemble — {title}", img / f"ensemble_{key}.png")
    for m in manifest.models:
        src = work / "report" / m.name / "curves.png"
        if src.exists():
            shutil.copy(src, img / f"curves_{m.name}.png")

    pooled = pooled_summary(work / "pooled")
    lines = [
        "# Evaluation",
        "",
        "> Research tool, not for clinical use. These numbers describe one public dataset; they say nothing",
        "> about performance on other scanners, protocols or patients.",
        "",
        "Generated by `python -m trainer report` from the artefacts of the run that produced `models/`.",
        f"Ensemble `{manifest.model_version}`, data hash `{manifest.data_hash[:16]}`.",
        "Recompute the headline numbers from the shipped ONNX files with:",
        "",
        "```bash",
        ".venv/bin/python -m trainer evaluate --models-dir models",
        "```",
        "",
        *headline_section(manifest, pooled),
    ]
    lines += [
        "",
        PUBLISHED,
        "",
        "## Protocol",
        "",
        *_preprocessing_lines(manifest.preprocessing),
        "- Validation is carved from the official Training split only: stratified by class, and duplicate-aware",
        "  (exact sha256 duplicates and perceptual-hash near-duplicates stay on one side).",
        "- Every model, and the choice of the ensemble's three, is selected by validation macro-F1. The official",
        "  Testing split is used for nothing but reporting: no early stopping, no selection, no tuning on it.",
        "- The ensemble is a majority vote of three models; ties go to the highest mean probability.",
        "",
        "## Dataset facts (measured by `python -m trainer prepare`)",
        "",
        "| class | Training | Testing | crop fallbacks | exact-duplicate images | near-duplicate images |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in class_rows(data)]
    e, nd = data["exact_duplicates"], data["near_duplicates"]
    lines += [
        "",
        f"- Exact duplicates: {e['groups']} groups ({e['images']} images); "
        f"{e['groups_crossing_training_testing']} groups span Training and Testing.",
        f"- Near-duplicates (64-bit DCT pHash, ≤ {nd['max_phash_hamming']} bits apart, including exact): "
        f"{nd['groups']} groups ({nd['images']} images); {nd['groups_crossing_training_testing']} span the two splits; "
        f"{nd['groups_with_conflicting_labels']} carry conflicting labels.",
        f"- Crop fallbacks (no sane contour, whole image used): {data['crop_fallbacks']} of {data['images']}.",
        *_brightness_lines(data.get("brightness")),
        "",
        "## The ensemble",
        "",
        "| model | family | weights origin | params | val macro-F1 | test accuracy | test macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in manifest.models:
        mv, mt = m.metrics["validation"], m.metrics["official_test"]
        lines.append(
            f"| {m.name} | {m.family} | {m.weights_origin} | {m.params:,} | {mv.macro_f1:.3f} | "
            f"{_pct(mt.accuracy)} | {mt.macro_f1:.3f} |"
        )
    for key, title in (("official_test", "official Testing split"), ("validation", "validation")):
        lines += ["", f"### Ensemble on the {title}", "", *_per_class_table(ens[key], classes)]
        lines += ["", f"![confusion matrix, {title}](img/ensemble_{key}.png)"]
    tta = work / "report" / "tta.json"
    if tta.exists():
        lines += ["", *_tta_section(json.loads(tta.read_text()))]
    if pooled is not None:
        lines += ["", *_pooled_section(work / "pooled", pooled, img, len(p.y), manifest)]
    lines += ["", *ensembles_tried_section(work)]
    lines += ["", *_calibration_section(manifest, models_dir, p, img)]
    robustness = load_robustness(work)
    if robustness is not None:
        from trainer.robustness import plot_robustness

        plot_robustness(robustness[0], img / "robustness.png", robustness[1])
        lines += ["", *robustness_section(*robustness)]
    crops = work / "report" / "crop_stability.json"
    if crops.exists():
        if (work / "report" / "crop_boxes.png").exists():
            shutil.copy(work / "report" / "crop_boxes.png", img / "crop_boxes.png")
        lines += ["", *crop_stability_section(json.loads(crops.read_text()), (img / "crop_boxes.png").exists())]
    if dataset is not None and any(m.ood_threshold is not None for m in manifest.models):
        lines += ["", *non_mri_section(measure_non_mri(models_dir, dataset, work))]
    lines += ["", NON_MRI_NEXT, ""]
    curves = [m.name for m in manifest.models if (img / f"curves_{m.name}.png").exists()]
    lines += [f"![{name}](img/curves_{name}.png)" for name in curves]
    lines += ["", *leaderboard.section(board)]
    lines += [
        "## Notes on this run",
        "",
        manifest.notes or "–",
        "",
        "## Limits",
        "",
        "- Not for clinical use. One public dataset of JPEG slices of unknown provenance, mixed planes and",
        "  sequences; labels are the dataset authors'. No patient-level split is possible (no patient ids): the",
        "  duplicate-aware split removes identical and near-identical images, not other slices of one patient.",
        "- The official Testing split differs in distribution from Training (notably glioma); accuracy on it is",
        "  the honest figure, validation accuracy is optimistic.",
        "- Temperatures are fitted on validation, which comes from the Training distribution; on the shifted",
        "  Testing split the models stay over-confident (see the reliability diagram). Treat `uncertain` as a",
        "  hint, not a guarantee: confident predictions are wrong too, more often on the Testing split.",
        *_shift_limits(manifest.preprocessing),
        "- Training is not bit-reproducible on a CPU (TensorFlow's threaded kernels; seeds fixed): retrained from a",
        "  fresh checkout, one recipe moves by 0.01–0.03 in validation macro-F1, and the initialisation seed alone",
        "  by about 0.02. Differences of that size between runs are noise; the shipping rules therefore ask for a",
        "  paired test (McNemar) on the images exactly one of two ensembles gets right.",
        "- What was tried before this ensemble, the rules each shipped ensemble was chosen by and their outcomes:",
        "  docs/experiments.md.",
        "",
    ]
    out = docs / "evaluation.md"
    out.write_text("\n".join(lines) + "\n")
    return out
