"""The sections of docs/evaluation.md on where the ensemble fails (class × MRI sequence group, other sources)
and on when to trust an answer (prediction sets, the shift check, flag rates), rendered from the manifest and
<work>/report/generalisation.json (with generalisation-compare.json: the ensemble it replaces, side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.inference.manifest import Manifest
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
    lines += tie_broken_lines(figures, img, before, role)
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


def _check_worst(fig: dict[str, Any]) -> str:
    w = fig.get("worst") or {}
    if not w:
        return "–"
    return f"{w['class'].replace('_', ' ')} × {w['sequence']}: {pct(w['accuracy'])} ({w['n']})"


def _tumour_share(fig: dict[str, Any]) -> str:
    shares = [f"{pct(r['answered_tumour'])} ({r['partial_n']})" for r in fig.get("sources", []) if "partial_n" in r]
    return ", ".join(shares) or "–"


def tie_broken_lines(
    figures: dict[str, Any], img: Path, before: dict[str, Any] | None = None, role: str = "The ensemble it replaces"
) -> list[str]:
    """The tie-broken check (data.tiebroken): the vote per class × the sequence the source gives, beside the
    ensemble it replaces (`before`, or the baseline measured in the same run) as a table and heatmaps, and each
    candidate run's worst cell."""
    check = figures.get("tie_broken")
    if not check:
        return []
    other = figures.get("tie_broken_baseline") or (before or {}).get("tie_broken")
    other_version = (other or {}).get("model_version") or (before or {}).get("model_version", "")
    lines = [
        "### The tie-broken check: sequence does not give the class",
        "",
        f"{check['split'][0].upper()}{check['split'][1:]} ({check['n']} images): TCGA-LGG gliomas and tumour-free "
        "slices of the same patients, each slice in every sequence it has, and Br35H tumours of mixed sequences "
        "labelled only 'a tumour' (right when answered as any tumour class). Here a model that tells the classes by "
        "sequence fails; the worst cell is the first figure an ensemble is chosen by (docs/experiments.md).",
        "",
    ]
    cols = [f"`{figures['model_version']}`"] + ([f"`{other_version}` ({role.lower()})"] if other else [])
    lines += ["| source | class | sequence | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    old_rows = {r["source"]: r for r in (other or {}).get("sources", [])}
    panels = []
    for row in check["sources"]:
        old = old_rows.get(row["source"], {})
        for c, by_seq in row.get("cells", {}).items():
            for seq, cell in by_seq.items():
                vals = [f"{pct(cell['accuracy'])} ({cell['n']})"]
                if other:
                    o = old.get("cells", {}).get(c, {}).get(seq)
                    vals.append(f"{pct(o['accuracy'])} ({o['n']})" if o else "–")
                lines.append(f"| {row['source']} | {c.replace('_', ' ')} | {seq} | " + " | ".join(vals) + " |")
        if "partial_n" in row:
            vals = [f"{pct(row['answered_tumour'])} ({row['partial_n']})"]
            if other:
                vals.append(f"{pct(old['answered_tumour'])} ({old['partial_n']})" if "partial_n" in old else "–")
            lines.append(f"| {row['source']} | any tumour (answered as one) | mixed | " + " | ".join(vals) + " |")
        if row.get("cells"):
            panels.append((f"{figures['model_version']} — {row['source']}", {"cells": row["cells"], "min_n": 10}))
            if old.get("cells"):
                panels.append((f"{other_version} — {row['source']}", {"cells": old["cells"], "min_n": 10}))
    lines += [
        "",
        f"Worst cell: {_check_worst(check)}" + (f" ({other_version}: {_check_worst(other)})." if other else "."),
    ]
    lines.append("")
    if panels:
        img.mkdir(parents=True, exist_ok=True)
        title = "tie-broken check: accuracy by class × sequence (the sequence the source gives)"
        plot_group_cells(panels, img / "tie-broken-check.png", title)
        lines += ["![tie-broken check by class × sequence](img/tie-broken-check.png)", ""]
    runs = figures.get("run_checks", [])
    if runs:
        lines += [
            "Each candidate run on the check (single models; a run's kept checkpoint was chosen on it):",
            "",
            "| run | kept checkpoint | worst class × sequence | tumours answered as a tumour |",
            "|---|---|---|---|",
        ]
        for r in runs:
            lines.append(f"| `{r['name']}` | {r.get('checkpoint') or '–'} | {_check_worst(r)} | {_tumour_share(r)} |")
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
