"""Export the top-k models (by validation macro-F1) to ONNX, check parity with Keras, evaluate the
majority vote with onnxruntime, and write models/ with manifest.json."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import trainer
from service.image.plausibility import background_levels, lack_backdrop
from service.inference.confidence import apply_temperature
from service.inference.ensemble import VOTE_RULE
from service.inference.manifest import Manifest, Metrics, load_manifest, sha256_file, write_manifest
from service.inference.runtime import Ensemble
from trainer.data.dataset import CLASS_WORDS, CLASSES, Prepared, protocol_split
from trainer.data.sources import source_table
from trainer.evaluation.metrics import vote_metrics
from trainer.evaluation.splits import eval_splits, test_key
from trainer.export.calibration import calibration_report, choose_trust_rule, ece, fit_temperature
from trainer.export.convert import PARITY_TOLERANCE, ParityError, add_extras, parity, to_onnx
from trainer.export.extras import OOD_SCORE
from trainer.export.merge import halve_weights, merge_models_dir
from trainer.export.selection import (
    bytes_per_param,
    choose_by_check,
    choose_ensemble,
    choose_models,
    describe_sources,
    ensemble_bytes,
    has_sidecar,
    training_info,
)
from trainer.models.builders import INPUT_NAME, OUTPUT_NAME, weights_origin
from trainer.models.compute import onnx_macs
from trainer.models.features import has_own_pooling_head, has_pooling_head
from trainer.training.recipe import Recipe
from trainer.training.train import evaluation_indices

# float16-stored weights (--weights-dtype float16) move outputs by the rounding of the weights: measured on the
# shipped ensemble, at most 0.0015 in probability, and the vote unchanged on every validation and Testing image
FP16_PARITY_TOLERANCE = 1e-2


def evaluate_ensemble(models_dir: Path, p: Prepared) -> dict[str, dict[str, Any]]:
    """Majority-vote metrics of the ONNX ensemble in models_dir, run by the service's own runtime, on the
    validation split its models were selected on and on the official Testing split."""
    ensemble = Ensemble.load(models_dir)
    return {
        key: vote_metrics(ensemble.predict_images(p.x[idx]), p.y[idx], split)
        for key, (split, idx) in eval_splits(ensemble, p).items()
    }


def raw_probabilities(
    ensemble: Ensemble, p: Prepared
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[np.ndarray | None]]]:
    """By split: the models' uncalibrated probabilities (models × N × classes), the labels, and each
    model's ood_score (None for models without one), from one pass over the images."""
    raw, y, ood = {}, {}, {}
    for key, (_, idx) in eval_splits(ensemble, p).items():
        raw[key], ood[key] = ensemble.run_images_with(p.x[idx], OOD_SCORE)
        y[key] = p.y[idx]
    return raw, y, ood


def _ceil4(x: float) -> float:
    """x rounded up to 4 decimals: a threshold stored rounded must not fall below the value it came from."""
    return math.ceil(x * 1e4) / 1e4


def calibrate(models_dir: Path, p: Prepared) -> Manifest:
    """Fit each model's temperature and the uncertainty thresholds on the validation split (the ONNX
    outputs, via the service runtime), and record ECE before/after and the confident/uncertain accuracies
    on validation and the official Testing split in the manifest."""
    ensemble = Ensemble.load(models_dir)
    manifest = ensemble.manifest
    raw, y, ood = raw_probabilities(ensemble, p)
    for entry, val_probs in zip(manifest.models, raw["validation"], strict=True):
        entry.temperature = fit_temperature(val_probs, y["validation"])
        print(f"[export] {entry.name}: temperature {entry.temperature} (fitted on validation)")
    temps = np.array([e.temperature for e in manifest.models])
    calibrated = {
        key: np.stack([apply_temperature(m, float(t)) for m, t in zip(probs, temps, strict=True)])
        for key, probs in raw.items()
    }
    for i, entry in enumerate(manifest.models):
        entry.calibration = {
            key: {
                "ece_before": round(ece(raw[key][i], y[key]), 4),
                "ece_after": round(ece(calibrated[key][i], y[key]), 4),
            }
            for key in raw
        }
    # The thresholds of the not-an-MRI warnings are the largest values among the training pool (the images
    # the models were trained and validated on), so no image of it is flagged: for `ood_score` as for the
    # background level. Validation alone (≈430 images, a sixth of the pool) sets the threshold at the tail of a
    # small sample, and the Mahalanobis statistics were fitted on at most 800 of the pool's images.
    pool, _ = protocol_split(p, Recipe.of(manifest.models[0].config).protocol)
    if any(s is not None for s in ood["validation"]):
        _, pool_ood = ensemble.run_images_with(p.x[pool], OOD_SCORE)
        for i, entry in enumerate(manifest.models):
            scores_pool = pool_ood[i]
            if scores_pool is None:
                continue
            entry.ood_threshold = _ceil4(float(scores_pool.max()))
            for key in raw:
                scores = ood[key][i]
                if scores is not None:
                    entry.calibration[key]["ood_flag_rate"] = round(float((scores > entry.ood_threshold).mean()), 4)
            print(f"[export] {entry.name}: ood threshold {entry.ood_threshold} (largest of {len(pool)} images)")
    manifest.ensemble.background_threshold = _ceil4(float(background_levels(p.x[pool]).max()))
    print(f"[export] background threshold {manifest.ensemble.background_threshold} (largest of {len(pool)} images)")
    rule = choose_trust_rule(calibrated["validation"], y["validation"])
    manifest.ensemble.uncertainty = rule
    manifest.ensemble.calibration = calibration_report(raw, calibrated, y, rule)
    for key, (_, idx) in eval_splits(ensemble, p).items():
        flagged = lack_backdrop(p.x[idx], manifest.ensemble.background_threshold)
        manifest.ensemble.calibration[key]["background_flag_rate"] = round(float(flagged.mean()), 4)
    write_manifest(manifest, models_dir)
    return manifest


def export_top(
    leaderboard: list[dict[str, Any]],
    p: Prepared,
    models_dir: Path,
    top: int = 3,
    changelog: str = "",
    previous: Path | None = None,
    parity_images: int = 32,
    limit_per_class: int | None = None,
    max_mb: float = 120.0,
    max_per_backbone: int = 1,
    select: str = "ensemble",
    report_dir: Path | None = None,
    merge: bool = True,
    weights_dtype: str = "float32",
    max_gmac: float | None = None,
    candidates: int = 8,
    names: list[str] | None = None,
    first_root: str = "",
    cache: Path | None = None,
) -> Manifest:
    """Export the chosen models (`names`, in that order; else by `select`) to ONNX with manifest.json."""
    bytes_per_param(weights_dtype)
    if select == "check":  # the vote of `top` of the named runs chosen on validation and the tie-broken check
        if not names or report_dir is None:
            raise ValueError("select='check' needs --names (the runs to choose among) and the report dir")
        by_name = {row["name"]: row for row in leaderboard}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"not in the leaderboard: {missing}")
        chosen, tried = choose_by_check([by_name[n] for n in names], p, report_dir, top, max_gmac)
        (report_dir / "ensembles_tried.json").write_text(json.dumps(tried, indent=1) + "\n")
    elif names:
        by_name = {row["name"]: row for row in leaderboard}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"not in the leaderboard: {missing}")
        chosen = [by_name[n] for n in names]
    elif select in ("ensemble", "worst_group"):
        if report_dir is None:
            raise ValueError(f"select={select!r} needs the report dir with the validation probabilities")
        groups = None
        if select == "worst_group":
            from trainer.models.sequence import prepared_groups

            groups = prepared_groups(p.x, p.data_hash, report_dir.parent / "cache" if cache is None else cache)
        chosen, tried = choose_ensemble(
            leaderboard, p, report_dir, top, max_mb, candidates, weights_dtype, merge, max_gmac, groups
        )
        (report_dir / "ensembles_tried.json").write_text(json.dumps(tried, indent=1) + "\n")
    elif select == "top":
        chosen = choose_models(leaderboard, top, max_mb, max_per_backbone, weights_dtype, merge)
    else:
        raise ValueError(f"select must be 'ensemble', 'worst_group', 'top' or 'check', got {select!r}")
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob("*.onnx"):  # includes a previous merged file
        stale.unlink()
    cfg0 = chosen[0]["config"]
    va, _ = evaluation_indices(p, cfg0)
    entries = []
    for row in chosen:
        cfg = row["config"]
        if (cfg["val_fraction"], cfg["seed"], Recipe.of(cfg).protocol) != (
            cfg0["val_fraction"],
            cfg0["seed"],
            Recipe.of(cfg0).protocol,
        ):
            raise ValueError("the chosen models were validated on different splits; use one seed/val_fraction/protocol")
        model = keras.models.load_model(Path(row["run_dir"]) / "model.keras")
        if (cfg["family"] == "transfer" and has_pooling_head(model)) or has_own_pooling_head(model):
            model = add_extras(model, cfg, p)
        path = models_dir / f"{row['name']}.onnx"
        outputs = to_onnx(model, path)
        diff = parity(model, path, p.x[va[:parity_images]])
        print(f"[export] {path.name}: parity max |keras - onnx| = {diff:.2e} on {min(parity_images, len(va))} images")
        if not diff <= PARITY_TOLERANCE:
            raise ParityError(f"{path.name}: ONNX differs from Keras by {diff:.2e} > {PARITY_TOLERANCE:.0e}")
        if weights_dtype == "float16":
            halved = halve_weights(path, path)
            diff = parity(model, path, p.x[va[:parity_images]])
            print(f"[export] {path.name}: {halved} weight tensors stored as float16, parity now {diff:.2e}")
            if not diff <= FP16_PARITY_TOLERANCE:
                raise ParityError(
                    f"{path.name}: float16 weights move the outputs by {diff:.2e} > {FP16_PARITY_TOLERANCE:.0e}"
                )
        entries.append(
            {
                "name": row["name"],
                "file": path.name,
                "sha256": sha256_file(path),
                "family": cfg["family"],
                # as the weights' provenance sidecar says now, where it is still beside the weights file
                "weights_origin": weights_origin(cfg) if has_sidecar(cfg) else row["weights_origin"],
                "params": row["params"],
                "config": cfg,
                "parity_max_abs_diff": diff,
                "weights_dtype": weights_dtype,
                "metrics": row["metrics"],
                "outputs": sorted(outputs),
            }
        )
    now = dt.datetime.now(dt.UTC)
    version = f"{now:%Y%m%d-%H%M%S}-{p.data_hash[:8]}"
    draft = Manifest.model_validate(
        {
            "model_version": version,
            "created": now.isoformat(timespec="seconds"),
            "trainer_version": trainer.__version__,
            "data_hash": p.data_hash,
            "limit_per_class": limit_per_class,
            "training": {
                **training_info(chosen, select, top, candidates, max_gmac, named=bool(names)),
                "sources": source_table(p.source, p.paths, p.y, CLASSES, first_root),
            },
            "changelog": [
                {"model_version": version, "date": f"{now:%Y-%m-%d}", "change": changelog or "exported"},
                *previous_changelog(previous),
            ],
            "classes": CLASSES,
            "class_words": {c: CLASS_WORDS[c] for c in CLASSES},
            "input": {"name": INPUT_NAME, "shape": [None, *p.x.shape[1:]], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": [None, len(CLASSES)], "dtype": "float32"},
            "preprocessing": p.preprocessing,
            "models": entries,
            "ensemble": {"vote": {k: str(v) for k, v in VOTE_RULE.items()}, "metrics": {}},
        }
    )
    write_manifest(draft, models_dir)
    if merge:
        merge_models_dir(models_dir, p.x[va[:parity_images]])
    written = sum(f.stat().st_size for f in models_dir.glob("*.onnx"))
    print(
        f"[export] ONNX files {written / 2**20:.1f} MB "
        f"(estimated {ensemble_bytes(chosen, weights_dtype, merge) / 2**20:.1f} MB, budget {max_mb} MB)"
    )
    if written > max_mb * 1024 * 1024:
        raise ValueError(f"{models_dir}: the ONNX files take {written / 2**20:.1f} MB, over the {max_mb} MB budget")
    return finalize(models_dir, p)


def finalize(models_dir: Path, p: Prepared) -> Manifest:
    """Calibrate, then measure the ensemble as the service runs it, and write manifest.json + README.md."""
    manifest = calibrate(models_dir, p)
    metrics = evaluate_ensemble(models_dir, p)
    manifest.ensemble.metrics = {k: Metrics.model_validate(v) for k, v in metrics.items()}
    files = sorted({models_dir / e.file for e in manifest.models})
    manifest.ensemble.compute_gmac = round(sum(onnx_macs(f) for f in files) / 1e9, 3)
    write_manifest(manifest, models_dir)
    from trainer.export.trust import apply_trust  # prediction sets and the shift check, fitted on validation

    manifest = apply_trust(models_dir, p)
    t, v = metrics[test_key(manifest)], metrics["validation"]
    print(
        f"[export] ensemble of {len(manifest.models)}: validation acc {v['accuracy']:.3f}, "
        f"{t['split']} acc {t['accuracy']:.3f} macro-F1 {t['macro_f1']:.3f} (n={t['n']}); "
        f"{manifest.ensemble.compute_gmac} GMAC per upload"
    )
    for split, c in manifest.ensemble.calibration.items():
        print(
            f"[export] {split}: ECE {c['ece_before']:.3f} → {c['ece_after']:.3f}; confident {c['confident_n']:.0f} "
            f"(acc {c.get('confident_accuracy', float('nan')):.3f}), uncertain {c['uncertain_n']:.0f} "
            f"(acc {c.get('uncertain_accuracy', float('nan')):.3f})"
        )
    write_models_readme(models_dir, manifest)
    return manifest


TEST_TITLES = {"official_test": "official Testing", "pooled_test": "pooled held-out 20 %"}


def write_generalisation(models_dir: Path, figures: dict[str, Any]) -> Manifest:
    """Put trainer.evaluation.generalisation's figures (per class × sequence group, cross-source, the tie-broken
    check) into an exported ensemble's manifest.json (its ONNX files unchanged)."""
    manifest = load_manifest(models_dir)
    # a source × scorer measured now replaces its row; rows measured before on other data are kept
    fresh = figures.get("cross_source", [])
    measured = {(r["source"], r["model"]) for r in fresh}
    kept = [r.model_dump() for r in manifest.ensemble.cross_source if (r.source, r.model) not in measured]
    update: dict[str, Any] = {"cross_source": kept + list(fresh)}
    if "sequence_groups" in figures:
        update["sequence_groups"] = figures["sequence_groups"]
    if "tie_broken" in figures:
        update["tie_broken"] = figures["tie_broken"]
    manifest = manifest.model_copy(
        update={"ensemble": manifest.ensemble.model_validate({**manifest.ensemble.model_dump(), **update})}
    )
    write_manifest(manifest, models_dir)
    write_models_readme(models_dir, manifest)
    return manifest


def write_models_readme(models_dir: Path, manifest: Manifest | None = None) -> Path:
    """models/README.md from the manifest (what the ensemble is, where it came from, its scores)."""
    path = models_dir / "README.md"
    path.write_text(_models_readme(manifest or load_manifest(models_dir)))
    return path


def _models_readme(m: Manifest) -> str:
    lines = [
        "# Bundled ensemble",
        "",
        "Written by `python -m trainer export`; do not edit by hand (the service checks every sha256).",
        "Research tool, not for clinical use.",
        "",
        f"- model_version: `{m.model_version}`, data hash `{m.data_hash[:16]}`",
        f"- intended use: {m.intended_use}",
        f"- chosen: {m.training.selection or '-'}",
        f"- grids: {', '.join(f'`{g}`' for g in m.training.grids) or '-'}",
        *_data_lines(m),
        "",
        f"| model | weights origin | val macro-F1 | {TEST_TITLES[test_key(m)]} acc | parity |",
        "|---|---|---|---|---|",
    ]
    for e in m.models:
        val, test = e.metrics.get("validation"), e.metrics.get(test_key(m))
        lines.append(
            f"| {e.name} | {e.weights_origin} | {val.macro_f1 if val else '-'} | "
            f"{test.accuracy if test else '-'} | {e.parity_max_abs_diff:.1e} |"
        )
    if m.ensemble.merge:
        g = m.ensemble.merge
        lines += [
            "",
            f"The models share one file, `{m.models[0].file}` (outputs `m<i>/…`): identical weights and the layers",
            f"they compute alike are stored and run once (nodes {g['nodes_before']:.0f} → {g['nodes_after']:.0f},",
            f"weight tensors {g['initializers_before']:.0f} → {g['initializers_after']:.0f}; outputs identical to the",
            f"separate models', max difference {g['max_abs_diff']:.1e}).",
        ]
    t = m.ensemble.metrics.get(test_key(m))
    if t:
        lines += [
            "",
            f"Ensemble (majority vote) on the {t.split} (n={t.n}): accuracy {t.accuracy}, macro-F1 {t.macro_f1}.",
        ]
    check = m.ensemble.tie_broken
    if check is not None:
        w = check.worst
        worst = f"{w['class']} × {w['sequence']} ({w['source']}) {w['accuracy']} of {w['n']}" if w else "-"
        shares = [f"{s.source} {s.answered_tumour} of {s.partial_n}" for s in check.sources if s.partial_n]
        lines += [
            "",
            f"Tie-broken check (sequence does not give the class; {check.n} held-out images): worst class × sequence "
            f"cell {worst}"
            + (f"; tumours of unknown type answered as a tumour: {', '.join(shares)}." if shares else "."),
        ]
    return "\n".join(lines) + "\n"


def _data_lines(m: Manifest) -> list[str]:
    """The data the weights learned from, with licences; a share-alike source binds the weights too."""
    if not m.training.sources:
        return []
    lines = [f"- data: {describe_sources(m.training.sources)}"]
    share_alike = m.training.share_alike
    if share_alike:
        lines.append(
            f"- these weights are shared under {' and '.join(share_alike)} (share-alike: they were trained on "
            "images under that licence); the code is MIT"
        )
    return lines


def previous_changelog(previous: Path | None) -> list[dict[str, Any]]:
    """The changelog of the ensemble this export follows (its models dir), oldest entries kept."""
    if previous is None or not (previous / "manifest.json").exists():
        return []
    return [c.model_dump() for c in load_manifest(previous).changelog]
