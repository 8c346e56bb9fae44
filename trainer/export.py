"""Export the top-k models (by validation macro-F1) to ONNX, check parity with Keras, evaluate the
majority vote with onnxruntime, and write models/ with manifest.json."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
import tf2onnx

import trainer
from service.confidence import apply_temperature
from service.ensemble import VOTE_RULE, majority_vote
from service.manifest import Manifest, Metrics, sha256_file, write_manifest
from service.plausibility import background_levels, lack_backdrop
from service.preprocessing import to_model_input
from service.runtime import Ensemble
from trainer.calibration import calibration_report, choose_trust_rule, ece, fit_temperature
from trainer.compute import ensemble_macs, onnx_macs
from trainer.data import CLASSES, Prepared, protocol_split
from trainer.evaluate import split_names
from trainer.extras import (
    CLASS_MAP,
    OOD_SCORE,
    fit_mahalanobis,
    has_own_pooling_head,
    has_pooling_head,
    pooled_feature_model,
    with_extras,
    with_own_extras,
)
from trainer.grid import fine_tune_blocks_of, protocol_of
from trainer.merge import halve_weights, merge_models_dir
from trainer.metrics import compute_metrics
from trainer.models import INPUT_NAME, OUTPUT_NAME, build_backbone, fine_tune_prefixes, weights_origin
from trainer.train import evaluation_indices, train_val_indices

OPSET = 17
PARITY_TOLERANCE = 1e-4
# float16-stored weights (--weights-dtype float16) move outputs by the rounding of the weights: measured on the
# shipped ensemble, at most 0.0015 in probability, and the vote unchanged on every validation and Testing image
FP16_PARITY_TOLERANCE = 1e-2
BYTES_PER_PARAM = {"float32": 4, "float16": 2}


class ParityError(RuntimeError):
    pass


def to_onnx(model: keras.Model, path: Path, opset: int = OPSET) -> list[str]:
    """Keras model → ONNX with a dynamic batch dimension, input 'image', output 'probabilities' (plus
    'class_map' and 'ood_score' for models wrapped by trainer.extras). Returns the output names."""
    shape = (None, *model.inputs[0].shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    outputs = [o.name for o in proto.graph.output]
    if OUTPUT_NAME not in outputs or not set(outputs) <= {OUTPUT_NAME, CLASS_MAP, OOD_SCORE}:
        raise ValueError(f"{path.name}: expected output {OUTPUT_NAME!r} (+ {CLASS_MAP}, {OOD_SCORE}), got {outputs}")
    path.write_bytes(proto.SerializeToString())
    return outputs


def parity(model: keras.Model, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference between Keras and onnxruntime outputs (every output, relative to its scale)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = to_model_input(images)
    keras_out = model.predict(x, verbose=0)
    if not isinstance(keras_out, dict):
        keras_out = {OUTPUT_NAME: keras_out}
    names = [o.name for o in sess.get_outputs()]
    diffs = []
    for name, onnx_out in zip(names, sess.run(names, {INPUT_NAME: x}), strict=True):
        ref = np.asarray(keras_out[name])
        scale = max(1.0, float(np.abs(ref).max()))  # ood_score is a distance, not a probability
        diffs.append(float(np.abs(ref - onnx_out).max()) / scale)
    return max(diffs)


def add_extras(model: keras.Model, cfg: dict[str, Any], p: Prepared, max_images: int = 800) -> keras.Model:
    """Wrap a global-pooling model with class_map and ood_score outputs; the OOD statistics come from
    (up to max_images of) the images it was trained on."""
    tr, _ = train_val_indices(p, float(cfg["val_fraction"]), int(cfg["seed"]), protocol_of(cfg))
    idx = np.random.default_rng(0).permutation(tr)[:max_images]
    feats = np.asarray(pooled_feature_model(model).predict(to_model_input(p.x[idx]), batch_size=32, verbose=0))
    means, chol = fit_mahalanobis(feats, p.y[idx], len(CLASSES))
    print(f"[export] {cfg['name']}: class_map + ood_score outputs (Mahalanobis on {len(idx)} training images)")
    if has_own_pooling_head(model):
        return with_own_extras(model, means, chol)
    return with_extras(model, cfg["backbone"], means, chol)


def evaluate_ensemble(models_dir: Path, p: Prepared) -> dict[str, dict[str, Any]]:
    """Majority-vote metrics of the ONNX ensemble in models_dir, run by the service's own runtime, on the
    validation split its models were selected on and on the official Testing split."""
    ensemble = Ensemble.load(models_dir)
    return {
        key: vote_metrics(ensemble.predict_images(p.x[idx]), p.y[idx], split)
        for key, (split, idx) in eval_splits(ensemble, p).items()
    }


def vote_metrics(probs: np.ndarray, y: np.ndarray, split: str) -> dict[str, Any]:
    """Metrics of the majority vote of probs (models, N, classes) against labels y."""
    labels, _, mean = majority_vote(probs)
    return compute_metrics(y, mean, CLASSES, split, y_pred=labels)


def eval_splits(ensemble: Ensemble, p: Prepared) -> dict[str, tuple[str, np.ndarray]]:
    """{metrics key: (description, indices)} of the validation and test splits of the ensemble's protocol."""
    cfg = ensemble.manifest.models[0].config
    va, te = evaluation_indices(p, cfg)
    (val_key, val_split), (test_key, test_split) = split_names(cfg)
    return {val_key: (val_split, va), test_key: (test_split, te)}


def test_key(manifest: Manifest) -> str:
    """The metrics key of the ensemble's test split: official_test, or pooled_test for the pooled protocol."""
    return split_names(manifest.models[0].config)[1][0]


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
    pool, _ = protocol_split(p, protocol_of(manifest.models[0].config))
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


def _has_sidecar(cfg: dict[str, Any]) -> bool:
    weights = Path(str(cfg.get("weights", "")))
    return cfg.get("family") == "transfer" and weights.with_name(weights.name + ".json").is_file()


def _bytes_per_param(weights_dtype: str) -> int:
    if weights_dtype not in BYTES_PER_PARAM:
        raise ValueError(f"weights_dtype must be one of {sorted(BYTES_PER_PARAM)}, got {weights_dtype!r}")
    return BYTES_PER_PARAM[weights_dtype]


@functools.cache
def _backbone_layer_params(backbone: str) -> dict[str, int]:
    """Parameters per layer of a headless keras.applications backbone (built without weights; cached)."""
    base = build_backbone(backbone, (160, 160, 3), weights="none")
    return {layer.name: int(layer.count_params()) for layer in base.layers}


def frozen_backbone_params(cfg: dict[str, Any]) -> dict[str, int]:
    """The backbone layers (name -> parameters) that training leaves at the loaded weights: every layer of a
    frozen backbone, all but the fine-tuned top blocks of a fine-tuned one. Models with the same backbone and
    weights file hold identical copies of these, which the merged ensemble file stores once."""
    if cfg.get("family") != "transfer" or not cfg.get("backbone"):
        return {}
    layers = _backbone_layer_params(cfg["backbone"])
    if not cfg.get("fine_tune_epochs"):
        return layers
    tuned = fine_tune_prefixes(cfg["backbone"], fine_tune_blocks_of(cfg))
    return {name: n for name, n in layers.items() if not name.startswith(tuned)}


def ensemble_bytes(rows: list[dict[str, Any]], weights_dtype: str = "float32", merge: bool = True) -> int:
    """Estimated size of the exported ensemble: every model's parameters, less the frozen backbone layers a
    merged file stores once (same backbone, same weights). `export_top` checks the written files against it."""
    params = sum(r["params"] for r in rows)
    if merge:
        seen: set[tuple[str, str, str]] = set()
        for r in rows:
            cfg = r["config"]
            for layer, n in frozen_backbone_params(cfg).items():
                key = (cfg["backbone"], str(cfg.get("weights", "imagenet")), layer)
                if key in seen:
                    params -= n
                seen.add(key)
    return _bytes_per_param(weights_dtype) * params


def _ranked(leaderboard: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best validation macro-F1 first (then lower validation loss, then name)."""
    return sorted(leaderboard, key=lambda r: (-r["val_macro_f1"], r["val_loss"] or 0.0, r["name"]))


def choose_models(
    leaderboard: list[dict[str, Any]],
    top: int = 3,
    max_mb: float = 120.0,
    max_per_backbone: int = 1,
    weights_dtype: str = "float32",
    merge: bool = True,
) -> list[dict[str, Any]]:
    """The `top` best by validation macro-F1, going down the ranking past a model that would push the
    ensemble over `max_mb` (weights stored as `weights_dtype`; with `merge`, shared frozen backbone layers
    count once, see `ensemble_bytes`) or add another voter on an already used frozen backbone."""
    ranked = _ranked(leaderboard)
    chosen: list[dict[str, Any]] = []
    budget = max_mb * 1024 * 1024
    for row in ranked:
        over = ensemble_bytes([*chosen, row], weights_dtype, merge) > budget
        backbone = row["config"].get("backbone")
        same = sum(1 for c in chosen if backbone and c["config"].get("backbone") == backbone)
        if over or same >= max_per_backbone:
            print(f"[export] skipping {row['name']}: " + ("size budget" if over else f"another {backbone}"))
            continue
        chosen.append(row)
        if len(chosen) == top:
            return chosen
    raise ValueError(f"only {len(chosen)} of the {len(leaderboard)} models fit --top {top} under the constraints")


def choose_ensemble(
    leaderboard: list[dict[str, Any]],
    p: Prepared,
    report_dir: Path,
    top: int = 3,
    max_mb: float = 120.0,
    candidates: int = 8,
    weights_dtype: str = "float32",
    merge: bool = True,
    max_gmac: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The `top` models whose majority vote has the best validation macro-F1, among every combination of
    the `candidates` best single models that fits the size budget (weights stored as `weights_dtype`; with
    `merge`, shared frozen backbone layers count once) and the compute budget (`max_gmac` per upload, shared
    frozen backbones once; None: no budget). Validation only: the official Testing split plays no part.
    Returns (chosen rows, every combination tried, best first)."""
    from itertools import combinations

    from trainer.evaluate import validation_probabilities

    ranked = _ranked(leaderboard)
    pool = [r for r in ranked if ensemble_bytes([r], weights_dtype) <= max_mb * 1024 * 1024][:candidates]
    if len(pool) < top:
        raise ValueError(f"only {len(pool)} models fit the {max_mb} MB budget; need {top}")
    va, _ = evaluation_indices(p, pool[0]["config"])
    probs = {r["name"]: validation_probabilities(r, p, report_dir) for r in pool}
    tried = []
    for combo in combinations(pool, top):
        size_mb = ensemble_bytes(list(combo), weights_dtype, merge) / 1024 / 1024
        gmac = ensemble_macs(list(combo), tuple(p.x.shape[1:]), len(CLASSES)) / 1e9
        if size_mb > max_mb or (max_gmac is not None and gmac > max_gmac):
            continue
        m = vote_metrics(np.stack([probs[r["name"]] for r in combo]), p.y[va], split_names(pool[0]["config"])[0][1])
        tried.append(
            {
                "models": [r["name"] for r in combo],
                "val_macro_f1": m["macro_f1"],
                "val_accuracy": m["accuracy"],
                "size_mb": round(size_mb, 1),
                "gmac": round(gmac, 3),
            }
        )
    if not tried:
        raise ValueError(
            f"no combination of {top} models fits {max_mb} MB" + (f" and {max_gmac} GMAC" if max_gmac else "")
        )
    tried.sort(key=lambda t: (-t["val_macro_f1"], -t["val_accuracy"], t["size_mb"]))
    for t in tried[:10]:
        print(
            f"[export] ensemble candidate val macro-F1 {t['val_macro_f1']:.4f} acc {t['val_accuracy']:.4f} "
            f"{t['size_mb']:6.1f} MB {t['gmac']:5.2f} GMAC  {' + '.join(t['models'])}"
        )
    by_name = {r["name"]: r for r in pool}
    return [by_name[n] for n in tried[0]["models"]], tried


def export_top(
    leaderboard: list[dict[str, Any]],
    p: Prepared,
    models_dir: Path,
    top: int = 3,
    notes: str = "",
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
) -> Manifest:
    _bytes_per_param(weights_dtype)
    if select == "ensemble":
        if report_dir is None:
            raise ValueError("select='ensemble' needs the report dir with the validation probabilities")
        chosen, tried = choose_ensemble(
            leaderboard, p, report_dir, top, max_mb, candidates, weights_dtype, merge, max_gmac
        )
        (report_dir / "ensembles_tried.json").write_text(json.dumps(tried, indent=1) + "\n")
    elif select == "top":
        chosen = choose_models(leaderboard, top, max_mb, max_per_backbone, weights_dtype, merge)
    else:
        raise ValueError(f"select must be 'ensemble' or 'top', got {select!r}")
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob("*.onnx"):  # includes a previous merged file
        stale.unlink()
    cfg0 = chosen[0]["config"]
    va, _ = evaluation_indices(p, cfg0)
    entries = []
    for row in chosen:
        cfg = row["config"]
        if (cfg["val_fraction"], cfg["seed"], protocol_of(cfg)) != (
            cfg0["val_fraction"],
            cfg0["seed"],
            protocol_of(cfg0),
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
                "weights_origin": weights_origin(cfg) if _has_sidecar(cfg) else row["weights_origin"],
                "params": row["params"],
                "config": cfg,
                "parity_max_abs_diff": diff,
                "weights_dtype": weights_dtype,
                "metrics": row["metrics"],
                "outputs": sorted(outputs),
            }
        )
    now = dt.datetime.now(dt.UTC)
    draft = Manifest.model_validate(
        {
            "model_version": f"{now:%Y%m%d-%H%M%S}-{p.data_hash[:8]}",
            "created": now.isoformat(timespec="seconds"),
            "trainer_version": trainer.__version__,
            "data_hash": p.data_hash,
            "limit_per_class": limit_per_class,
            "notes": notes,
            "classes": CLASSES,
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
    (models_dir / "README.md").write_text(_models_readme(manifest))
    return manifest


TEST_TITLES = {"official_test": "official Testing", "pooled_test": "pooled held-out 20 %"}


def _models_readme(m: Manifest) -> str:
    lines = [
        "# Bundled ensemble",
        "",
        "Written by `python -m trainer export`; do not edit by hand (the service checks every sha256).",
        "Research tool, not for clinical use.",
        "",
        f"- model_version: `{m.model_version}`, data hash `{m.data_hash[:16]}`",
        f"- notes: {m.notes or '-'}",
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
    return "\n".join(lines) + "\n"


def load_leaderboard(report_dir: Path) -> list[dict[str, Any]]:
    path = report_dir / "leaderboard.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `python -m trainer evaluate` first")
    return list(json.loads(path.read_text()))
