"""The model card: the served manifest as a page a person can read (GET /model-card), not raw JSON."""

from __future__ import annotations

from html import escape
from typing import Any

from service import DISCLAIMER
from service.inference.manifest import Manifest

FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    '<rect width="64" height="64" rx="14" fill="#2f6fde"/>'
    '<ellipse cx="32" cy="33" rx="21" ry="24" fill="#e8eefc"/>'
    '<path d="M32 12v42M22 22c4 3 4 8 0 11m20-11c-4 3-4 8 0 11M21 42c5-2 8 0 11 3m11-3c-5-2-8 0-11 3" '
    'stroke="#2f6fde" stroke-width="3" fill="none" stroke-linecap="round"/></svg>'
)

STYLE = """
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color:#1d2330; background:#f6f7fb; }
main { max-width: 900px; margin: 0 auto; padding: 20px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 28px; }
.disclaimer { background:#fff4e0; color:#8a4b00; border:1px solid #f0c98a; padding:10px 14px; border-radius:8px;
  font-weight:600; }
table { border-collapse: collapse; margin: 8px 0; display:block; overflow-x:auto; max-width:100%; width:max-content; }
th, td { border: 1px solid #d9deea; padding: 4px 8px; text-align: left; background:#fff; font-size: .9rem; }
th { background: #eef1f7; }
.muted { color:#5b6475; font-size:.85rem; }
"""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _figures(m: Manifest) -> str:
    rows = []
    for key, met in m.ensemble.metrics.items():
        rows.append([key.replace("_", " "), met.split, met.n, _pct(met.accuracy), f"{met.macro_f1:.3f}"])
    parts = ["<h2>Measured accuracy</h2>", _table(["split", "images", "n", "accuracy", "macro-F1"], rows)]
    per_class = [
        [m.class_words.get(c, c), *(_pct(met.per_class[c].recall) for met in m.ensemble.metrics.values())]
        for c in m.classes
        if all(c in met.per_class for met in m.ensemble.metrics.values())
    ]
    if per_class:
        parts.append("<p class='muted'>Recall per class (share of each class's images it got right):</p>")
        parts.append(_table(["class", *(k.replace("_", " ") for k in m.ensemble.metrics)], per_class))
    return "".join(parts)


def _trust(m: Manifest) -> str:
    e = m.ensemble
    if e.conformal is None and not e.trust:
        return ""
    level = f"{100 * e.conformal.level:g} %" if e.conformal else "–"
    text = (
        f"<h2>When to trust an answer</h2><p>An answer is flagged <em>uncertain</em> when its prediction set (the "
        f"classes that together hold the right one for {level} of images like the validation images) holds more "
        "than one class, when the image is unlike the images the models learned from, or when it is probably not a "
        "brain MRI. The guarantee holds only for images like the validation images: on images from elsewhere the "
        "sets cover less, as the test rows show.</p>"
    )
    if not e.trust:
        return text + "<p class='muted'>No measured figures for these rules in the manifest.</p>"
    rows = [
        [
            key.replace("_", " "),
            t.get("split", ""),
            t.get("n", "–"),
            _pct(t.get("coverage")),
            t.get("mean_set_size", "–"),
            _pct(t.get("flagged_share")),
            _pct(t.get("unflagged_accuracy")),
        ]
        for key, t in e.trust.items()
    ]
    return text + _table(
        ["images", "split", "n", "set holds the true class", "mean set size", "flagged", "unflagged answers right"],
        rows,
    )


def _groups(m: Manifest) -> str:
    e = m.ensemble
    parts = []
    for key, fig in e.sequence_groups.items():
        groups = list(fig.by_group)
        rows = [
            [m.class_words.get(c, c), *(f"{_pct(row[g].accuracy)} ({row[g].n})" for g in groups)]
            for c, row in fig.cells.items()
        ]
        worst = fig.worst
        parts.append(f"<p class='muted'>{escape(key.replace('_', ' '))}: {escape(fig.split)}. Worst cell: ")
        parts.append(
            escape(f"{worst.get('class')} × {worst.get('group')}, {_pct(worst.get('accuracy'))} of {worst.get('n')}")
            if worst
            else "–"
        )
        parts.append("</p>" + _table(["class", *groups], rows))
    if e.cross_source:
        cross: list[list[Any]] = [[c.source, c.model, c.n, _pct(c.accuracy)] for c in e.cross_source]
        parts.append("<p class='muted'>Each data source scored by a model that never saw it:</p>")
        parts.append(_table(["source", "model", "images", "accuracy"], cross))
    if not parts:
        return ""
    intro = (
        "<h2>By MRI sequence and by source</h2><p>Accuracy per class and MRI sequence group (T1-like, T1 with "
        "contrast-like, T2/FLAIR-like, assigned by a probe described in docs/experiments.md): where the models "
        "fail, not only how often.</p>"
    )
    return intro + "".join(parts)


def _tie_broken(m: Manifest) -> str:
    """The vote where MRI sequence does not give the class: per source, class × sequence, and partial labels."""
    check = m.ensemble.tie_broken
    if check is None:
        return ""
    parts = [
        "<h2>Where sequence does not give the class</h2><p>Held-out images chosen so that a model which tells the "
        "classes by MRI sequence fails: tumour and tumour-free slices of the same patients in each sequence, and "
        f"tumours of mixed sequences labelled only as a tumour ({check.n} images; {escape(check.split)}).</p>"
    ]
    for src in check.sources:
        if src.cells:
            seqs = sorted({s for row in src.cells.values() for s in row})
            rows = [
                [m.class_words.get(c, c), *(f"{_pct(row[s].accuracy)} ({row[s].n})" if s in row else "–" for s in seqs)]
                for c, row in src.cells.items()
            ]
            parts.append(f"<p class='muted'>{escape(src.source)}, accuracy by class × sequence:</p>")
            parts.append(_table(["class", *seqs], rows))
        if src.partial_n:
            parts.append(
                f"<p class='muted'>{escape(src.source)}: {_pct(src.answered_tumour)} of {src.partial_n} tumours of "
                "unknown type answered as a tumour.</p>"
            )
    w = check.worst
    if w:
        parts.append(
            "<p>Worst cell: "
            + escape(f"{w.get('class')} on {w.get('sequence')} ({w.get('source')}), ")
            + escape(f"{_pct(w.get('accuracy'))} of {w.get('n')}")
            + ".</p>"
        )
    return "".join(parts)


def render(m: Manifest) -> str:
    """The model card of the served ensemble, as one HTML page."""
    models = _table(["model", "family", "weights origin"], [[x.name, x.family, x.weights_origin] for x in m.models])
    sources = ""
    if m.training.sources:
        sources = _table(
            ["source", "images", "licence", "citation"],
            [[s.name, s.images, s.licence or "–", s.citation or "–"] for s in m.training.sources],
        )
        share_alike = m.training.share_alike
        if share_alike:
            sources += (
                f"<p>Part of the training data is licensed {escape(', '.join(share_alike))}: these models, derived "
                "from it, are shared under the same licence.</p>"
            )
    gmac = f", {m.ensemble.compute_gmac} GMAC per upload" if m.ensemble.compute_gmac is not None else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Model card — {escape(m.model_version)}</title><link rel="icon" href="/favicon.svg" type="image/svg+xml">
<style>{STYLE}</style></head><body><main>
<h1>Model card: ensemble {escape(m.model_version)}</h1>
<div class="disclaimer">{escape(DISCLAIMER)} It has not been validated for diagnosis.</div>
<p><a href="/">upload page</a> · <a href="/docs">API docs</a> · <a href="/v1/models">this card as JSON</a></p>
<h2>Intended use</h2><p>{escape(m.intended_use)}</p>
<p>Classes: {escape(", ".join(m.class_words.get(c, c) for c in m.classes))}. Input: one 2-D slice, cropped to the
head and resized to 150×150 (preprocessing version {escape(str(m.preprocessing.get("version", 1)))}).</p>
<h2>Models</h2>{models}<p class="muted">Majority vote of {len(m.models)} models{escape(gmac)}. Exported
{escape(m.created)}; chosen by: {escape(m.training.selection or "–")}</p>
<h2>Data and licences</h2><p>Protocol: {escape(m.training.protocol)}; validation:
{escape(m.training.validation or "–")}.</p>{sources}
{_figures(m)}{_trust(m)}{_tie_broken(m)}{_groups(m)}
<h2>Limits</h2><ul>
<li>Trained on public collections of 2-D slices; images from other scanners, sequences or hospitals can be
answered wrongly, often without a flag. The test rows above show how much accuracy drops on another collection.</li>
<li>Only {len(m.classes)} classes: other tumours and lesions get one of these labels.</li>
<li>One slice at a time; no patient context, no 3-D information.</li>
</ul><p class="muted">{escape(DISCLAIMER)}</p></main></body></html>
"""
