"""Markdown formatting shared by the report's renderers."""

from __future__ import annotations

from typing import Any

PUBLISHED = (
    "Published results on this official Testing split range 0.63–0.78 accuracy, with glioma recall "
    "typically 0.1–0.3 (a known shift between the two splits' glioma images). The 2020 student project "
    "claimed 94 % on a random split of pooled images, which leaks exact and near-duplicates between its "
    "training and test sides; that number is not comparable."
)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def per_class_table(m: dict[str, Any], classes: list[str]) -> list[str]:
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in classes:
        pc = m["per_class"][c]
        rows.append(f"| {c} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
    return rows
