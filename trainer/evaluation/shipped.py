"""An exported ensemble (a models/ dir) against the data it was trained on: load it with its own preprocessing,
and recompute the figures its manifest records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.inference.manifest import Manifest, load_manifest
from trainer.data.dataset import DataRoots
from trainer.data.workdir import prepare_work


class DataMismatch(ValueError):
    """The dataset is not the one the ensemble was trained on (its data hash differs)."""


def load_shipped(models_dir: Path, data: DataRoots, work: Path, cache: Path | None, limit_per_class: int | None):  # type: ignore[no-untyped-def]
    """(manifest, prepared data) of an exported ensemble, prepared with its preprocessing and subset
    (DataMismatch when the data hash differs from the manifest's)."""
    manifest = load_manifest(models_dir)
    limit = manifest.limit_per_class if limit_per_class is None else limit_per_class
    p = prepare_work(data, work, cache, limit, manifest.preprocessing)
    if p.data_hash != manifest.data_hash:
        raise DataMismatch(f"data hash {p.data_hash[:12]} differs from the manifest's {manifest.data_hash[:12]}")
    return manifest, p


def validation_indices(manifest: Manifest, p: Any) -> Any:
    """The validation indices the ensemble's models were chosen on."""
    from trainer.training.train import evaluation_indices

    return evaluation_indices(p, manifest.models[0].config)[0]


def recheck(models_dir: Path, manifest: Manifest, p: Any) -> int:
    """Recompute the headline numbers of an exported ensemble (vote metrics, how many wrong and right answers are
    flagged uncertain, compute per upload), print them beside the manifest's; 0 when every one matches."""
    from service.inference.runtime import Ensemble
    from trainer.evaluation.metrics import flag_rates, vote_metrics
    from trainer.evaluation.splits import eval_splits
    from trainer.models.compute import onnx_macs

    ensemble = Ensemble.load(models_dir)
    status = 0

    def verdict(same: bool) -> str:
        nonlocal status
        status |= 0 if same else 1
        return "matches" if same else "DIFFERS from"

    for key, (split, idx) in eval_splits(ensemble, p).items():
        probs = ensemble.predict_images(p.x[idx])
        m = vote_metrics(probs, p.y[idx], split)
        shipped = manifest.ensemble.metrics.get(key)
        print(
            f"{key}: n={m['n']} accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
            f"glioma recall {m['per_class'][manifest.classes[0]]['recall']:.3f} "
            f"({verdict(shipped is not None and shipped.model_dump() == m)} the manifest)"
        )
        rates = flag_rates(probs, p.y[idx], manifest.ensemble.uncertainty)
        recorded = manifest.ensemble.calibration.get(key, {})
        if "wrong_flagged_rate" in recorded:
            print(
                f"{key}: flagged uncertain: {rates.get('wrong_flagged_rate', 0):.1%} of the wrong answers, "
                f"{rates.get('right_flagged_rate', 0):.1%} of the right ones "
                f"({verdict(all(recorded.get(k) == v for k, v in rates.items()))} the manifest)"
            )
    if manifest.ensemble.compute_gmac is not None:
        files = sorted({models_dir / e.file for e in manifest.models})
        gmac = round(sum(onnx_macs(f) for f in files) / 1e9, 3)
        print(f"compute: {gmac} GMAC per upload ({verdict(gmac == manifest.ensemble.compute_gmac)} the manifest)")
    return status
