"""Does horizontal-flip test-time augmentation pay? The ensemble's vote on validation with and without
averaging each model's probabilities over the image and its mirror (decided on validation only; the
official Testing split is reported alongside, as everywhere). Writes <work>/report/tta.json.

TTA doubles the service's compute per upload, so it pays only when it raises validation macro-F1 *and* the
vote is right on significantly more validation images than without it: an exact two-sided McNemar test on the
images where exactly one of the two is right, p < MCNEMAR_ALPHA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.ensemble import majority_vote
from service.inference.runtime import Ensemble
from trainer.data.dataset import CLASSES, Prepared
from trainer.evaluation.metrics import vote_metrics
from trainer.evaluation.splits import eval_splits

MCNEMAR_ALPHA = 0.05


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: of the n = only_first + only_second discordant pairs, as few as
    min(only_first, only_second) on one side under Binomial(n, 1/2). 1.0 when there is none."""
    if only_first < 0 or only_second < 0:
        raise ValueError(f"counts must be non-negative, got {only_first}, {only_second}")
    n = only_first + only_second
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def scored_vote(probs: np.ndarray, y: np.ndarray, split: str) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy, macro-F1 and glioma recall of the majority vote of probs, and which images it gets right."""
    m = vote_metrics(probs, y, split)
    summary = {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "glioma_recall": m["per_class"][CLASSES[0]]["recall"],
    }
    return summary, majority_vote(probs)[0] == y


def paired_counts(right_first: np.ndarray, right_second: np.ndarray) -> tuple[int, int, float]:
    """Images only the first gets right, only the second, and the exact McNemar p-value of the two counts."""
    only_first = int(np.sum(right_first & ~right_second))
    only_second = int(np.sum(right_second & ~right_first))
    return only_first, only_second, mcnemar_p(only_first, only_second)


def measure_tta(models_dir: Path, p: Prepared, report_dir: Path) -> dict[str, Any]:
    ensemble = Ensemble.load(models_dir)
    splits = eval_splits(ensemble, p)
    val_key = next(iter(splits))
    out: dict[str, Any] = {}
    for key, (split, idx) in splits.items():
        plain = ensemble.predict_images(p.x[idx])
        flipped = ensemble.predict_images(p.x[idx][:, :, ::-1, :].copy())
        right = {}
        for name, probs in (("plain", plain), ("hflip_tta", (plain + flipped) / 2)):
            m, right[name] = scored_vote(probs, p.y[idx], split)
            out.setdefault(name, {})[key] = m
            print(f"[tta] {key:<14} {name:<10} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}", flush=True)
        only_plain, only_tta, pvalue = paired_counts(right["plain"], right["hflip_tta"])
        out.setdefault("discordant", {})[key] = {
            "only_plain_right": only_plain,
            "only_tta_right": only_tta,
            "mcnemar_p": round(pvalue, 4),
        }
        print(f"[tta] {key:<14} right only without TTA {only_plain}, only with it {only_tta}", flush=True)
    gain = out["hflip_tta"][val_key]["macro_f1"] > out["plain"][val_key]["macro_f1"]
    d = out["discordant"][val_key]
    out["rule"] = f"validation macro-F1 higher and McNemar p < {MCNEMAR_ALPHA} on validation"
    out["adopted"] = bool(gain and d["only_tta_right"] > d["only_plain_right"] and d["mcnemar_p"] < MCNEMAR_ALPHA)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "tta.json").write_text(json.dumps(out, indent=1) + "\n")
    return out
