"""Renderers of docs/evaluation.md: each takes artefacts (manifest, JSON results) and returns Markdown lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.image.plausibility import FLAT_BACKDROP_SPREAD
from service.image.preprocessing import preprocessing_version
from service.inference.confidence import apply_temperature
from service.inference.manifest import Manifest
from service.inference.runtime import Ensemble
from trainer.data.dataset import Prepared, class_rows
from trainer.evaluation.plots import plot_reliability
from trainer.export.bundle import raw_probabilities
from trainer.export.calibration import ECE_BINS, reliability
from trainer.export.selection import describe_sources
from trainer.reporting.markdown import pct, per_class_table
from trainer.reporting.pooled import pooled_label

PUBLISHED = (
    "Published results on this official Testing split range 0.63–0.78 accuracy, with glioma recall "
    "typically 0.1–0.3 (a known shift between the two splits' glioma images). The 2020 student project "
    "claimed 94 % on a random split of pooled images, which leaks exact and near-duplicates between its "
    "training and test sides; that number is not comparable."
)


def calibration_section(manifest: Manifest, models_dir: Path, p: Prepared, img: Path) -> list[str]:
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
                f"| {title} | {c['n']:.0f} | {pct(c['accuracy'])} | {c['confident_n']:.0f} | "
                f"{pct(c.get('confident_accuracy'))} | {c['uncertain_n']:.0f} | {pct(c.get('uncertain_accuracy'))} |"
            )
    return [*lines, ""]


NON_MRI_SECTION = "## Not an MRI? (warnings)"


NON_MRI_NEXT = "### Training curves of the chosen models"


def non_mri_section(r: dict[str, Any]) -> list[str]:
    """The not-an-MRI section of docs/evaluation.md from trainer.evaluation.nonmri.measure's result."""
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
        f"{pct(r['mri_false_flag_rate'])} |",
        f"| non-MRI images (catches) | {r['non_mri_n']} | {r['non_mri_caught']} | {pct(r['non_mri_catch_rate'])} |",
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


def ensembles_tried_section(work: Path, top: int = 15, named: list[str] | None = None) -> list[str]:
    """The combinations the export scored on validation (what choosing the ensemble cost); `named`: the models
    of an ensemble exported by name (`trainer export --names`), which scored no combination."""
    if named:
        return [
            ENSEMBLES_TRIED_SECTION,
            "",
            f"`python -m trainer export --names` exported the {len(named)} models a rule written before their "
            "training named (docs/experiments.md): no combination was scored to choose them, and the official "
            "Testing split was not consulted.",
            "",
        ]
    path = work / "report" / "ensembles_tried.json"
    if not path.exists():
        return []
    tried = json.loads(path.read_text())
    models = len({name for t in tried for name in t["models"]})
    if tried and "check_worst" in tried[0]:  # `--select check`: chosen on validation and the tie-broken check
        lines = [
            ENSEMBLES_TRIED_SECTION,
            "",
            f"`python -m trainer export --select check` scored the majority vote of {len(tried)} combinations of three "
            f"of the {models} runs a written rule named, on validation and on the tie-broken check, and kept the one "
            "with the best worst check cell among those with validation macro-F1 ≥ 0.95 (docs/experiments.md); the "
            f"official Testing split was not consulted. The best {min(top, len(tried))}:",
            "",
            "| # | voters | val macro-F1 | val accuracy | worst check cell | tumours answered as a tumour |",
            "|---|---|---|---|---|---|",
        ]
        for i, t in enumerate(tried[:top], 1):
            w = t["check_worst"] or {}
            cell = f"{w['class'].replace('_', ' ')} × {w['sequence']}: {pct(w['accuracy'])} ({w['n']})" if w else "–"
            lines.append(
                f"| {i} | {' + '.join(t['models'])} | {t['val_macro_f1']:.4f} | {pct(t['val_accuracy'])} | {cell} | "
                f"{pct(t['check_tumour_share'])} |"
            )
        return [*lines, ""]
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
        f"| {i} | {' + '.join(t['models'])} | {t['val_macro_f1']:.4f} | {pct(t['val_accuracy'])} | {t['size_mb']} |"
        for i, t in enumerate(tried[:top], 1)
    ]
    note = (
        "MB, estimated: the export's estimate of the weights, frozen backbone layers that voters share counted"
        " once as the merged file stores them (the written files are checked against the budget)."
    )
    return [*lines, "", note, ""]


def brightness_lines(b: dict[str, dict[str, float]] | None) -> list[str]:
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


def preprocessing_lines(preprocessing: dict[str, Any]) -> list[str]:
    from service.image.preprocessing import INTENSITY_PERCENTILE, INTENSITY_TARGET

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
        "`service/image/preprocessing.py`; models normalise inside themselves.",
    ]


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
        f"| ensemble, validation (selection) | {v['n']} | {pct(v['accuracy'])} | {v['macro_f1']:.3f} | "
        f"{v['per_class'][classes[0]]['recall']:.3f} |",
        f"| ensemble, **official Testing split** | {t['n']} | **{pct(t['accuracy'])}** | **{t['macro_f1']:.3f}** | "
        f"{t['per_class'][classes[0]]['recall']:.3f} |",
    ]
    if pooled is not None:
        pt, label = pooled["metrics"]["pooled_test"], pooled_label(manifest, pooled["manifest"])
        lines.append(
            f"| {label}, **leak-free pooled protocol** (held-out 20 %) | {pt['n']} | "
            f"**{pct(pt['accuracy'])}** | **{pt['macro_f1']:.3f}** | {pt['per_class'][classes[0]]['recall']:.3f} |"
        )
    else:
        lines += [
            "",
            "The leak-free pooled protocol (Training ∪ Testing, duplicate groups kept whole, stratified 80/20) is not "
            "measured for this ensemble's recipes yet: this report adds it once `<work>/pooled/models` holds their "
            "pooled export (docs/training.md → protocols).",
        ]
    return lines


def tta_section(r: dict[str, Any]) -> list[str]:
    rows = ["| | " + " | ".join(f"{k} acc | {k} macro-F1" for k in r["plain"]) + " |", "|---|---|---|---|---|"]
    for name in ("plain", "hflip_tta"):
        rows.append(
            f"| {name} | " + " | ".join(f"{pct(m['accuracy'])} | {m['macro_f1']:.3f}" for m in r[name].values()) + " |"
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


def dataset_section(data: dict[str, Any]) -> list[str]:
    """Class counts, duplicates, crop fallbacks and brightness from <work>/data_report.json."""
    lines = [
        "| class | Training | Testing | crop fallbacks | exact-duplicate images | near-duplicate images |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in class_rows(data)]
    e, nd = data["exact_duplicates"], data["near_duplicates"]
    return [
        *lines,
        "",
        f"- Exact duplicates: {e['groups']} groups ({e['images']} images); "
        f"{e['groups_crossing_training_testing']} groups span Training and Testing.",
        f"- Near-duplicates (64-bit DCT pHash, ≤ {nd['max_phash_hamming']} bits apart, including exact): "
        f"{nd['groups']} groups ({nd['images']} images); {nd['groups_crossing_training_testing']} span the two splits; "
        f"{nd['groups_with_conflicting_labels']} carry conflicting labels.",
        f"- Crop fallbacks (no sane contour, whole image used): {data['crop_fallbacks']} of {data['images']}.",
        *brightness_lines(data.get("brightness")),
    ]


def ensemble_section(manifest: Manifest) -> list[str]:
    """The shipped models, then the vote's per-class table and confusion matrix on Testing and validation."""
    lines = [
        "| model | family | weights origin | params | val macro-F1 | test accuracy | test macro-F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in manifest.models:
        mv, mt = m.metrics["validation"], m.metrics["official_test"]
        lines.append(
            f"| {m.name} | {m.family} | {m.weights_origin} | {m.params:,} | {mv.macro_f1:.3f} | "
            f"{pct(mt.accuracy)} | {mt.macro_f1:.3f} |"
        )
    ens = {k: v.model_dump() for k, v in manifest.ensemble.metrics.items()}
    for key, title in (("official_test", "official Testing split"), ("validation", "validation")):
        lines += ["", f"### Ensemble on the {title}", "", *per_class_table(ens[key], manifest.classes)]
        lines += ["", f"![confusion matrix, {title}](img/ensemble_{key}.png)"]
    return lines


def provenance_section(manifest: Manifest) -> list[str]:
    """Intended use, how the ensemble was chosen and from which grids (the manifest's structured fields)."""
    lines = [
        f"- Intended use: {manifest.intended_use}",
        f"- Chosen: {manifest.training.selection or '–'}",
        f"- Grids: {', '.join(f'`{g}`' for g in manifest.training.grids) or '–'}",
        f"- Protocol: {manifest.training.protocol}; validation: {manifest.training.validation or '–'}",
    ]
    if manifest.training.sources:
        lines.append(f"- Data: {describe_sources(manifest.training.sources)}")
    if manifest.changelog:
        lines += ["", "| model_version | date | change |", "|---|---|---|"]
        lines += [f"| `{c.model_version}` | {c.date} | {c.change} |" for c in manifest.changelog]
    return lines
