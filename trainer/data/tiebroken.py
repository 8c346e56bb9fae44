"""The tie-broken check: images where the MRI sequence does not give the class, never trained on.

In the training collections the classes come in different sequences (gliomas mostly T1 with contrast, normal
brains T2/FLAIR), so a model can score well there by telling sequences apart. Roots whose files.csv lists a split
hold `val` rows (Prepared.held) where that tie is broken: TCGA-LGG slices with and without tumour of the same
patients, each in FLAIR, T1 and T1 with contrast; Br35H tumours of mixed sequences, labelled only "a tumour".
This module scores a model's answers on them: per source, accuracy per class × the sequence the root gives (the
worst such cell is the check's headline), and for partially labelled images the share answered as some tumour.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.data.dataset import ANY_TUMOUR, CLASSES, Prepared, correct

MIN_CELL = 10  # a class × sequence cell needs this many images to count as the worst one
SPLIT = "the `val` rows of the data roots that list a split (files.csv): chosen on, never trained on"


def _cell(right: np.ndarray) -> dict[str, Any]:
    return {"n": len(right), "accuracy": round(float(right.mean()), 4) if len(right) else None}


def check_figures(
    y: np.ndarray, pred: np.ndarray, source: np.ndarray, sequence: np.ndarray, classes: list[str] = CLASSES
) -> dict[str, Any]:
    """Figures of answers `pred` on checked images (labels y, their source and listed sequence): per source, its
    accuracy, its class × sequence cells (sources that give sequences) and the share of its partially labelled
    images answered as a tumour; `worst`: the lowest cell of at least MIN_CELL images over all sources (the shape
    of service.inference.manifest.TieBrokenCheck)."""
    right = correct(y, pred, classes)
    rows = []
    worst: dict[str, Any] = {}
    for name in dict.fromkeys(source.tolist()):
        m = source == name
        row: dict[str, Any] = {"source": str(name), "n": int(m.sum()), "accuracy": _cell(right[m])["accuracy"]}
        seqs = [s for s in dict.fromkeys(sequence[m].tolist()) if s]
        full = m & (y != ANY_TUMOUR)
        if seqs and full.any():
            row["cells"] = {
                c: {s: _cell(right[full & (y == k) & (sequence == s)]) for s in sorted(seqs)}
                for k, c in enumerate(classes)
                if (full & (y == k)).any()
            }
            for c, by_seq in row["cells"].items():
                for s, cell in by_seq.items():
                    if cell["n"] >= MIN_CELL and (not worst or cell["accuracy"] < worst["accuracy"]):
                        worst = {"source": str(name), "class": c, "sequence": s, **cell}
        partial = m & (y == ANY_TUMOUR)
        if partial.any():
            row["partial_n"] = int(partial.sum())
            row["answered_tumour"] = round(float(right[partial].mean()), 4)
        rows.append(row)
    return {"split": SPLIT, "n": len(y), "sources": rows, "worst": worst, "min_n": MIN_CELL}


def check_indices(p: Prepared) -> np.ndarray:
    """Indices of the checked images (every root's `val` rows)."""
    return np.nonzero(p.held)[0]


def figures_of(p: Prepared, pred: np.ndarray, idx: np.ndarray | None = None) -> dict[str, Any]:
    """check_figures of answers `pred` on the checked images idx (default check_indices(p), in that order)."""
    idx = check_indices(p) if idx is None else idx
    return check_figures(p.y[idx], pred, p.source[idx], p.sequence[idx])


def headline(fig: dict[str, Any]) -> str:
    """One line: the worst cell and each partially labelled source's tumour share."""
    w = fig.get("worst") or {}
    parts = [f"worst {w['source']} {w['class']} × {w['sequence']} {w['accuracy']:.1%} ({w['n']})"] if w else []
    parts += [
        f"{r['source']} answered as a tumour {r['answered_tumour']:.1%} ({r['partial_n']})"
        for r in fig.get("sources", [])
        if "answered_tumour" in r
    ]
    return "; ".join(parts) or "no checked images"
