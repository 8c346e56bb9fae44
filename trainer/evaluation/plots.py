"""PNG plots: training curves, confusion matrices, the leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: dict[str, list[float]], title: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("accuracy", "loss"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    m = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            color = "white" if m[i, j] > m.max() / 2 else "black"
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color=color)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_leaderboard(rows: list[dict[str, Any]], path: Path, top: int = 60) -> None:
    rows = rows[:top]
    names = [r["name"] for r in rows][::-1]
    val = [r["val_macro_f1"] for r in rows][::-1]
    test = [r["test_macro_f1"] for r in rows][::-1]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * len(rows)))
    ax.barh(y + 0.2, val, height=0.4, label="validation macro-F1 (selection)")
    ax.barh(y - 0.2, test, height=0.4, label="official Testing macro-F1")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("Leaderboard (sorted by validation macro-F1)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(curves: dict[str, dict[str, np.ndarray]], title: str, path: Path) -> None:
    """Reliability diagram: accuracy vs mean confidence per bin, one line per curve (e.g. before/after)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for label, r in curves.items():
        filled = r["count"] > 0
        ax.plot(r["confidence"][filled], r["accuracy"][filled], "o-", label=label, markersize=4)
    ax.set_xlabel("mean confidence (top probability) in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_crop_boxes(
    images: list[np.ndarray], boxes: dict[str, list[tuple[float, ...]]], shown: list[int], path: Path
) -> None:
    """The images at indices `shown`, each version's crop box drawn on them (boxes as fractions of the image)."""
    if not shown:
        raise ValueError("plot_crop_boxes needs at least one image to show")
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.4), squeeze=False)
    colours = ["tab:red", "tab:green", "tab:blue", "tab:orange"]
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown, strict=False):
        h, w = images[i].shape[:2]
        ax.imshow(images[i])
        for (name, version_boxes), colour in zip(boxes.items(), colours, strict=False):
            x0, y0, x1, y1 = version_boxes[i]
            ax.add_patch(
                plt.Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False, ec=colour, lw=2, label=name)
            )
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(boxes))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (3 * rows + 0.4)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_group_cells(
    panels: list[tuple[str, dict[str, Any]]],
    path: Path,
    title: str = "accuracy by class × MRI sequence group (faint: fewer images than counts for the worst cell)",
) -> None:
    """Accuracy per class × MRI sequence group as heatmaps, one panel per (title, group_figures); cells with
    fewer than the figures' min_n images are faint, empty ones blank."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, figures) in zip(axes[0], panels, strict=True):
        classes = list(figures["cells"])
        groups = list(next(iter(figures["cells"].values())))
        acc = np.array(
            [
                [
                    np.nan if figures["cells"][c][g]["accuracy"] is None else figures["cells"][c][g]["accuracy"]
                    for g in groups
                ]
                for c in classes
            ]
        )
        ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn")
        for i, c in enumerate(classes):
            for j, g in enumerate(groups):
                cell = figures["cells"][c][g]
                if cell["n"]:
                    text = f"{100 * cell['accuracy']:.0f} %\nn={cell['n']}"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=8,
                        alpha=1.0 if cell["n"] >= figures.get("min_n", 10) else 0.45,
                    )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_yticks(range(len(classes)), [c.replace("_", " ") for c in classes])
        ax.set_title(title, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
