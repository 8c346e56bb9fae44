"""Renderers of the acquisition-shift sections of docs/evaluation.md: robustness, crop stability, and what the
shifts mean for the limits."""

from __future__ import annotations

from typing import Any

from service.image.preprocessing import GAMMA_PERCENTILE, GAMMA_TARGET, THRESHOLD_OFFSET
from service.image.preprocessing import THRESHOLD as CROP_THRESHOLD
from trainer.evaluation.robustness import ensemble_label, mean_shifted_accuracy
from trainer.reporting.markdown import pct

PUBLISHED = (
    "Published results on this official Testing split range 0.63–0.78 accuracy, with glioma recall "
    "typically 0.1–0.3 (a known shift between the two splits' glioma images). The 2020 student project "
    "claimed 94 % on a random split of pooled images, which leaks exact and near-duplicates between its "
    "training and test sides; that number is not comparable."
)


ROBUSTNESS_SECTION = "## Robustness to acquisition shifts"


CROP_STABILITY_SECTION = "## Crop stability across preprocessing versions"  # follows the robustness section


def robustness_section(r: dict[str, Any], other: dict[str, Any] | None = None) -> list[str]:
    """The robustness section of docs/evaluation.md from trainer.evaluation.robustness.measure's result for the shipped
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
            f"| {name} | {pct(m['accuracy'])} | {m['macro_f1']:.3f} | {pct(m['agreement_with_unshifted'])} | "
            f"{pct(m['failed_crops'])} | {pct(m['flagged'])} |"
            + (
                (f" {pct(m['accuracy_box_held'])} |" if m.get("accuracy_box_held") is not None else " – |")
                if held
                else ""
            )
            + (f" {pct(before[name]['accuracy'])} |" if name in before else (" – |" if before else ""))
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
        f"Largest drop: {worst}, {pct(shifts[worst]['accuracy'])} against {pct(base['accuracy'])} unshifted. "
        f"Within 2 points of unshifted: {', '.join(robust) or 'none'}.",
        f"Mean accuracy over the {len(shifts) - 1} shifts: {pct(mean_shifted_accuracy(r))}"
        + (f" ({ensemble_label(other, '`')}: {pct(mean_shifted_accuracy(other))})." if other else "."),
        f"Most failed crops: {crops}, {pct(shifts[crops]['failed_crops'])} of the images (unshifted "
        f"{pct(base['failed_crops'])}); " + _crop_sentence(r.get("preprocessing_version", 1)),
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
        cells = " | ".join(f"{row[v]['mean_iou']:.3f} / {pct(row[v]['moved'])}" for v in versions)
        lines.append(f"| {name} | {cells} |")
    same = c["unshifted_vs_first"]  # the first version against itself is 1.000 by definition: not shown
    cells = " | ".join(f"{same[v]['mean_iou']:.3f} / {pct(same[v]['moved'])}" for v in versions[1:])
    lines.append(f"| unshifted, against {versions[0]}'s box | (reference) | {cells} |")
    if picture:
        lines += [
            "",
            f"The images whose {versions[0]} and {versions[1]} boxes differ most, both boxes drawn:",
            "",
            "![crop boxes](img/crop_boxes.png)",
        ]
    return lines


def shift_limits(preprocessing: dict[str, Any]) -> list[str]:
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
