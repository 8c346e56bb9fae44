"""Does horizontal-flip test-time augmentation pay? The ensemble's vote on validation with and without
averaging each model's probabilities over the image and its mirror (decided on validation only; the
official Testing split is reported alongside, as everywhere). Writes <work>/report/tta.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.runtime import Ensemble
from trainer.data import CLASSES, Prepared
from trainer.export import eval_splits, vote_metrics


def measure_tta(models_dir: Path, p: Prepared, report_dir: Path) -> dict[str, Any]:
    ensemble = Ensemble.load(models_dir)
    splits = eval_splits(ensemble, p)
    val_key = next(iter(splits))
    out: dict[str, Any] = {}
    for key, (split, idx) in splits.items():
        plain = ensemble.predict_images(p.x[idx])
        flipped = ensemble.predict_images(p.x[idx][:, :, ::-1, :].copy())
        for name, probs in (("plain", plain), ("hflip_tta", (plain + flipped) / 2)):
            m = vote_metrics(probs, p.y[idx], split)
            out.setdefault(name, {})[key] = {
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "glioma_recall": m["per_class"][CLASSES[0]]["recall"],
            }
            print(f"[tta] {key:<14} {name:<10} acc {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f}", flush=True)
    out["adopted"] = out["hflip_tta"][val_key]["macro_f1"] > out["plain"][val_key]["macro_f1"]
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "tta.json").write_text(json.dumps(out, indent=1) + "\n")
    return out
