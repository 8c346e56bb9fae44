"""Write docs/evaluation.md (and its PNGs) from the artefacts of prepare → train → evaluate → export."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from service.inference.manifest import Manifest, load_manifest
from service.inference.runtime import Ensemble
from trainer.data.dataset import DataRoots, Prepared
from trainer.evaluation.plots import plot_confusion, plot_leaderboard
from trainer.export.selection import NAMED_SELECTION
from trainer.reporting import leaderboard
from trainer.reporting.pooled import pooled_section, pooled_summary
from trainer.reporting.sections import (
    ENSEMBLES_TRIED_SECTION,
    NON_MRI_NEXT,
    NON_MRI_SECTION,
    calibration_section,
    dataset_section,
    ensemble_section,
    ensembles_tried_section,
    headline_section,
    non_mri_section,
    preprocessing_lines,
    provenance_section,
    tta_section,
)
from trainer.reporting.shifts import CROP_STABILITY_SECTION, crop_stability_section, robustness_section, shift_limits

TEMPLATE = Path(__file__).parent / "templates" / "evaluation.md"
# the template's paragraph after the headline table (where `trainer pooled` puts the headline back)
PUBLISHED = "Published results on this official Testing split"


def render(template: str, sections: dict[str, list[str]]) -> str:
    """Fill a template: a line that is exactly `{{name}}` becomes that section's lines. Every placeholder needs
    a section and every section a placeholder (KeyError otherwise), so nothing is silently dropped."""
    out: list[str] = []
    used: set[str] = set()
    for line in template.splitlines():
        m = re.fullmatch(r"\{\{(\w+)\}\}", line.strip())
        if m is None:
            out.append(line)
            continue
        if m.group(1) not in sections:
            raise KeyError(f"the template asks for section {m.group(1)!r}, which no renderer wrote")
        used.add(m.group(1))
        out.extend(sections[m.group(1)])
    unused = set(sections) - used
    if unused:
        raise KeyError(f"sections {sorted(unused)} have no place in the template")
    return "\n".join(out) + "\n"


CALIBRATION_SECTION = "## Calibration and uncertainty"


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


def load_with_compare(work: Path, stem: str) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """(<work>/report/<stem>.json, <stem>-compare.json or None), or None without the first: a measurement of
    the ensemble and, if kept beside it, the same measurement of another one."""
    report = work / "report"
    if not (report / f"{stem}.json").exists():
        return None
    other = report / f"{stem}-compare.json"
    return (
        json.loads((report / f"{stem}.json").read_text()),
        json.loads(other.read_text()) if other.exists() else None,
    )


def load_generalisation(work: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    return load_with_compare(work, "generalisation")


def update_generalisation_docs(
    figures: dict[str, Any],
    manifest: Manifest,
    docs: Path,
    before: dict[str, Any] | None = None,
    role: str = "The ensemble it replaces",
) -> Path:
    """Replace (or insert before the calibration section) the trust and the generalisation sections."""
    from trainer.reporting.generalisation import TRUST_SECTION, generalisation_section, trust_section

    trust = trust_section(manifest)
    if trust:
        replace_section(docs, trust, [CALIBRATION_SECTION])
    lines = generalisation_section(figures, docs / "img", before, role)
    return replace_section(docs, lines, [TRUST_SECTION, CALIBRATION_SECTION])


def load_robustness(work: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    return load_with_compare(work, "robustness")


def update_robustness_docs(r: dict[str, Any], docs: Path, other: dict[str, Any] | None = None) -> Path:
    from trainer.evaluation.robustness import plot_robustness

    (docs / "img").mkdir(exist_ok=True)
    plot_robustness(r, docs / "img" / "robustness.png", other)
    return replace_section(docs, robustness_section(r, other), [CROP_STABILITY_SECTION, NON_MRI_SECTION, NON_MRI_NEXT])


def measure_non_mri(models_dir: Path, data: DataRoots, work: Path) -> dict[str, Any]:
    """trainer.evaluation.nonmri.measure on an exported ensemble, also written to <work>/report/non_mri.json."""
    from trainer.evaluation.nonmri import measure

    r = measure(Ensemble.load(models_dir), data)
    (work / "report").mkdir(parents=True, exist_ok=True)
    (work / "report" / "non_mri.json").write_text(json.dumps(r, indent=1) + "\n")
    return r


def update_pooled_docs(pooled: Path, summary: dict[str, Any], models_dir: Path, docs: Path, n_images: int) -> Path:
    """Bring the pooled protocol into docs/evaluation.md without the rest of the run's artefacts: its headline
    row and its section (replaced, or inserted before the ensembles tried), from `summary` (pooled_summary of
    <pooled>) and <pooled>/report/leaderboard.json; the shipped ensemble (models_dir) labels the row."""
    shipped = load_manifest(models_dir)
    replace_section(docs, [*headline_section(shipped, summary), ""], [PUBLISHED])
    (docs / "img").mkdir(parents=True, exist_ok=True)
    section = pooled_section(pooled, summary, docs / "img", n_images, shipped)
    return replace_section(docs, [*section, ""], [ENSEMBLES_TRIED_SECTION])


def write_report(work: Path, models_dir: Path, docs: Path, p: Prepared, dataset: DataRoots | None = None) -> Path:
    """Render docs/evaluation.md and its PNGs from the run's artefacts: <work>/data_report.json, the
    leaderboard, models_dir's manifest and the JSON results of tta, pooled, robustness, crops and non-MRI."""
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    data = json.loads((work / "data_report.json").read_text())
    board, clean = leaderboard.merged(work, docs), leaderboard.merged(work, docs, "clean")
    leaderboard.save(board, docs)
    leaderboard.save(clean, docs, "clean")
    other_data = leaderboard.other_data_boards(work, docs)
    leaderboard.save_other_data(other_data, docs)
    manifest = load_manifest(models_dir)
    plot_leaderboard(board, img / "leaderboard.png")
    for key, title in (("validation", "validation"), ("official_test", "official Testing split")):
        cm = manifest.ensemble.metrics[key].confusion_matrix
        plot_confusion(cm, manifest.classes, f"Ensemble — {title}", img / f"ensemble_{key}.png")
    for m in manifest.models:
        src = work / "report" / m.name / "curves.png"
        if src.exists():
            shutil.copy(src, img / f"curves_{m.name}.png")
    pooled = pooled_summary(work / "pooled")
    sections = {
        "identity": [f"Ensemble `{manifest.model_version}`, data hash `{manifest.data_hash[:16]}`."],
        "headline": headline_section(manifest, pooled),
        "preprocessing": preprocessing_lines(manifest.preprocessing),
        "dataset": dataset_section(data),
        "ensemble": ensemble_section(manifest),
        "measurements": _measurements(work, models_dir, img, p, manifest, pooled, dataset),
        "leaderboard": [*leaderboard.section(board, clean), *leaderboard.other_data_section(other_data)],
        "provenance": provenance_section(manifest),
        "shift_limits": shift_limits(manifest.preprocessing),
    }
    out = docs / "evaluation.md"
    out.write_text(render(TEMPLATE.read_text(), sections))
    return out


def _measurements(
    work: Path,
    models_dir: Path,
    img: Path,
    p: Prepared,
    manifest: Manifest,
    pooled: dict[str, Any] | None,
    dataset: DataRoots | None,
) -> list[str]:
    """The sections each measurement adds when its artefact exists (the PNGs they show are written to img)."""
    lines: list[str] = []
    tta = work / "report" / "tta.json"
    if tta.exists():
        lines += ["", *tta_section(json.loads(tta.read_text()))]
    if pooled is not None:
        lines += ["", *pooled_section(work / "pooled", pooled, img, len(p.y), manifest)]
    named = [m.name for m in manifest.models] if manifest.training.selection.startswith(NAMED_SELECTION) else None
    lines += ["", *ensembles_tried_section(work, named=named)]
    generalisation = load_generalisation(work)
    if generalisation is not None and generalisation[0].get("model_version") == manifest.model_version:
        from trainer.reporting.generalisation import generalisation_section

        lines += ["", *generalisation_section(generalisation[0], img, generalisation[1])]
    from trainer.reporting.generalisation import trust_section

    lines += ["", *trust_section(manifest)]
    lines += ["", *calibration_section(manifest, models_dir, p, img)]
    robustness = load_robustness(work)
    if robustness is not None:
        from trainer.evaluation.robustness import plot_robustness

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
    return lines + [f"![{name}](img/curves_{name}.png)" for name in curves]


def update_from_pooled_work(pooled_work: Path, models_dir: Path, docs: Path, prepared: Prepared) -> list[str]:
    """The pooled protocol's headline row and section of <docs>/evaluation.md from a pooled work dir alone, and
    where its held-out accuracy is lost (by origin folder; against the shipped ensemble on images neither saw).
    Returns the lines to print."""
    from trainer.evaluation.origins import measure_origins

    summary = pooled_summary(pooled_work)
    if summary is None:
        raise ValueError(f"{pooled_work / 'models' / 'manifest.json'} does not exist: export the pooled runs first")
    t = summary["metrics"]["pooled_test"]
    lines = [f"pooled held-out: n={t['n']} accuracy {t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f}"]
    r = measure_origins(pooled_work / "models", models_dir, prepared, pooled_work / "report")
    for key, folders in r["by_origin"].items():
        lines += [f"  {key:<12} {f} folder: n={m['n']} accuracy {m['accuracy']:.4f}" for f, m in folders.items()]
    for folder, row in r.get("unseen_by_both", {}).items():
        lines.append(
            f"  unseen by both, {folder} folder: n={row['n']} pooled {row['pooled']['accuracy']:.4f}, "
            f"shipped {row['shipped']['accuracy']:.4f} (McNemar p {row['mcnemar_p']:.3f})"
        )
    return [*lines, f"updated {update_pooled_docs(pooled_work, summary, models_dir, docs, len(prepared.y))}"]
