"""The sections of docs/evaluation.md on where the ensemble fails (class × MRI sequence group, other sources)
and on when to trust an answer (prediction sets, the shift check, flag rates), rendered from the manifest and
<work>/report/generalisation.json (with generalisation-compare.json: the ensemble it replaces, side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.manifest import Manifest
from trainer.evaluation.groups import format_groups, recipe_means
from trainer.evaluation.plots import plot_group_cells
from trainer.reporting.markdown import pct

GENERALISATION_SECTION = "## Generalisation: MRI sequence groups and other sources"
TRUST_SECTION = "## When to trust an answer: prediction sets and flags"
SPLIT_TITLES = {"validation": "validation", "official_test": "official Testing", "pooled_test": "pooled hold-out"}


def _worst(w: dict[str, Any]) -> str:
    if not w:
        return "–"
    return f"{w['class'].replace('_', ' ')} × {w['group']}: {pct(w['accuracy'])} ({w['n']})"


def generalisation_section(
    figures: dict[str, Any], img: Path, before: dict[str, Any] | None = None, role: str = "The ensemble it replaces"
) -> list[str]:
    """Per split, the vote's accuracy by class × sequence group (table and heatmap), each source scored by a model
    that never saw it, and each voting recipe's worst cell on validation; `before`: another ensemble's figures
    (by default the one this replaces; `role` says which), shown beside."""
    lines = [
        GENERALISATION_SECTION,
        "",
        "Every image gets an MRI sequence group from a linear probe on frozen EfficientNet-Lite0 features "
        "(`trainer sequences`: T1-like, T1 with contrast-like, T2/FLAIR-like; how it was checked is in "
        "docs/experiments.md). In the training data sequence and class are tied (most no-tumour slices are "
        "T2-like, most gliomas T1 with contrast), so the mean hides where a model fails: the worst class × group "
        "cell (at least 10 images) is the first figure a new ensemble is chosen by (docs/experiments.md).",
        "",
    ]
    groups = figures.get("sequence_groups", {})
    panels = [(f"{figures['model_version']} — {SPLIT_TITLES.get(k, k)}", fig) for k, fig in groups.items()]
    for key, fig in groups.items():
        lines += [f"**{SPLIT_TITLES.get(key, key)}** ({fig['split']}): worst cell {_worst(fig['worst'])}", ""]
        lines += [*format_groups(fig), ""]
    if before and before.get("sequence_groups"):
        lines.append(f"{role}, `{before['model_version']}`, on its own splits:")
        lines.append("")
        for key, fig in before["sequence_groups"].items():
            lines.append(f"- {SPLIT_TITLES.get(key, key)}: worst cell {_worst(fig['worst'])}")
            panels.append((f"{before['model_version']} — {SPLIT_TITLES.get(key, key)}", fig))
        lines.append("")
    if panels:
        img.mkdir(parents=True, exist_ok=True)
        plot_group_cells(panels, img / "sequence-groups-accuracy.png")
        lines += ["![accuracy by class × sequence group](img/sequence-groups-accuracy.png)", ""]
    cross = figures.get("cross_source", [])
    if cross:
        old = {r["source"]: r for r in (before or {}).get("cross_source", [])}
        head = "| source | images | scored by (never trained on it) | accuracy |"
        rule = "|---|---|---|---|"
        if old:
            head += f" `{before['model_version']}` (never trained on it) |"  # type: ignore[index]
            rule += "---|"
        lines += ["Cross-source: each source scored by a model that never saw it.", "", head, rule]
        for r in cross:
            row = f"| {r['source']} | {r['n']} | `{r['model']}` | {pct(r['accuracy'])} |"
            if old:
                row += f" {pct(old[r['source']]['accuracy']) if r['source'] in old else '–'} |"
            lines.append(row)
        lines.append("")
        for recipe, m in recipe_means(cross).items():
            n, k = len(set(m["sources"])), m["seeds"]
            line = f"- `{recipe}`: mean over its {n} held-out source{'s' * (n != 1)}"
            line += f" and {k} seeds {pct(m['mean'])}." if k > 1 else f" {pct(m['mean'])}."
            if old and all(src in old for src in m["sources"]):
                old_mean = sum(old[src]["accuracy"] for src in m["sources"]) / len(m["sources"])
                line += f" {role} on the same images: {pct(old_mean)}."
            lines.append(line)
        lines.append("")
    fresh = figures.get("fresh_test")
    if fresh:
        lines += [
            f"On the {fresh['n']} of {fresh['of']} {fresh['split']} (no ensemble can have learned them or a copy):",
            "",
            "| ensemble | accuracy | macro-F1 | glioma recall |",
            "|---|---|---|---|",
        ]
        for version, m in fresh["ensembles"].items():
            lines.append(f"| `{version}` | {pct(m['accuracy'])} | {m['macro_f1']:.3f} | {m['glioma_recall']:.2f} |")
        if "mcnemar_p" in fresh:
            first, second = (f"`{v}`" for v in list(fresh["ensembles"])[:2])
            lines += [
                "",
                f"Right only by {first}: {fresh['only_first_right']}, only by {second}: "
                f"{fresh['only_second_right']} (exact McNemar p {fresh['mcnemar_p']}).",
            ]
        lines.append("")
    runs = figures.get("runs", [])
    if runs:
        lines += [
            "What each recipe buys where it fails most (single models, validation):",
            "",
            "| run | val accuracy | worst class × group |",
            "|---|---|---|",
        ]
        lines += [f"| `{r['name']}` | {pct(r['val_accuracy'])} | {_worst(r['worst'])} |" for r in runs]
        lines.append("")
    lines.append("Recompute: `python -m trainer generalisation --models-dir models --data … --docs docs`.")
    lines.append("")
    return lines


def trust_section(manifest: Manifest) -> list[str]:
    """The prediction sets' rule and, per split, coverage, set size and how often unflagged answers were right."""
    e = manifest.ensemble
    if e.conformal is None:
        return []
    c = e.conformal
    lines = [
        TRUST_SECTION,
        "",
        f"Every answer carries a prediction set: the classes that together hold the true one for {100 * c.level:g} % "
        f"of images like the validation images (split conformal prediction, {c.method.replace('_', '-')} "
        f"thresholds fitted on {c.n_calibration} validation images; the level is the lowest of 90/95/98/99 % that "
        "the sets meet within a point when fitted and checked on halves of validation). `uncertain` is true when "
        "the set holds more than one class, the image is unlike the training images (shift score above the "
        "threshold that flags "
        + (f"{pct(e.shift.flag_share)} of validation images" if e.shift else "–")
        + ") or it is probably not a brain MRI. The coverage guarantee holds only for images like the "
        "calibration images; the test rows show how far it falls elsewhere.",
        "",
        "| images | split | n | set holds the true class | mean set size | flagged | unflagged answers right |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, t in e.trust.items():
        lines.append(
            f"| {key.replace('_', ' ')} | {t.get('split', '')} | {t.get('n', '–')} | {pct(t.get('coverage'))} | "
            f"{t.get('mean_set_size', '–')} | {pct(t.get('flagged_share'))} | {pct(t.get('unflagged_accuracy'))} |"
        )
    cross = e.trust.get("validation", {}).get("cross_fitted", {})
    if cross:
        lines += ["", "Cross-fitted on validation halves (what chose the level and the method):", ""]
        lines += ["| level | marginal: coverage / set size | class-conditional: coverage / set size |", "|---|---|---|"]
        for level, fits in cross.items():
            if not isinstance(fits, dict) or "marginal" not in fits:
                continue
            m, k = fits["marginal"], fits["class_conditional"]
            marginal = f"{pct(m['coverage'])} / {m['mean_set_size']}"
            lines.append(f"| {level} | {marginal} | {pct(k['coverage'])} / {k['mean_set_size']} |")
    shifts = e.trust.get("validation", {}).get("under_shifts", {})
    if shifts:
        lines += [
            "",
            "How the flags respond to acquisition shifts (each applied to the validation crops; `trainer trust`):",
            "",
            "| shift | accuracy | flagged | flagged by the shift check | unflagged answers right |",
            "|---|---|---|---|---|",
        ]
        for name, f in shifts.items():
            lines.append(
                f"| {name} | {pct(f['accuracy'])} | {pct(f['flagged_share'])} | "
                f"{pct(f['unlike_training_share'])} | {pct(f['unflagged_accuracy'])} |"
            )
    lines.append("")
    return lines
