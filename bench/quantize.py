"""int8 experiment: statically quantise the shipped ONNX ensemble (QDQ) in several ways, then compare each
with float32 on validation (where a choice would be made) and on the official Testing split (the limit:
within 0.5 accuracy points), and time the compute floor of each.

    python -m bench.quantize                       # the default sweep; writes bench/results/quantize-*.json
    python -m bench.quantize --configs entropy-conv --save /tmp/int8   # keep one quantised models dir
    python -m bench.quantize --configs fp16-weights                    # float16 storage, float32 compute

`fp16-weights` is not int8: it stores the large weight tensors as float16 and casts them back to float32 inside
the graph (compute unchanged), halving the files: what three VGG16 voters need to fit the 120 MB budget.

models/ is never modified. Calibration images come from the training side (never validation or test).

Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadtest import RESULTS, ROOT
from service.image.preprocessing import to_model_input
from service.inference.ensemble import majority_vote
from service.inference.manifest import ChangelogEntry, load_manifest, sha256_file, write_manifest
from service.inference.runtime import Ensemble
from trainer.export.merge import halve_weights


@dataclass(frozen=True)
class QuantConfig:
    """One way to quantise: calibration method, which operator types get int8, which nodes stay float."""

    method: str  # MinMax | Percentile | Entropy
    op_types: tuple[str, ...] | None = None  # None: every operator type onnxruntime can quantise
    keep_first_conv: bool = False  # leave the first Conv on the input float (it sees raw pixels)
    keep: tuple[str, ...] = ()  # nodes whose name contains one of these stay float
    reduce_range: bool = False  # 7-bit weights: no u8s8 saturation on CPUs without VNNI
    extra: dict[str, Any] = field(default_factory=dict)


CONFIGS: dict[str, QuantConfig] = {
    "minmax-all": QuantConfig("MinMax"),  # every op
    "minmax-conv": QuantConfig("MinMax", ("Conv",)),
    "percentile-conv": QuantConfig("Percentile", ("Conv",), extra={"CalibPercentile": 99.999}),
    "entropy-conv": QuantConfig("Entropy", ("Conv",)),
    "percentile-conv-first-fp32": QuantConfig(
        "Percentile", ("Conv",), keep_first_conv=True, extra={"CalibPercentile": 99.999}
    ),
    # blocks 1-4 (the trunk the VGG16 voters share: 6.04 of 7.75 GMAC for three) int8, every block5 float
    "percentile-trunk": QuantConfig("Percentile", ("Conv",), keep=("block5_",), extra={"CalibPercentile": 99.999}),
    "minmax-trunk": QuantConfig("MinMax", ("Conv",), keep=("block5_",)),
    "percentile-conv-reduce-range": QuantConfig(
        "Percentile", ("Conv",), reduce_range=True, extra={"CalibPercentile": 99.999}
    ),
    "percentile-trunk-reduce-range": QuantConfig(
        "Percentile", ("Conv",), keep=("block5_",), reduce_range=True, extra={"CalibPercentile": 99.999}
    ),
}


FP16 = "fp16-weights"


def transform_dir(
    src: Path, dst: Path, transform: Callable[[Path, Path], object], weights_dtype: str | None = None
) -> None:
    """A copy of the models dir src with `transform(src file, dst file)` applied once to each distinct ONNX file
    (a merged file serves several models); the manifest's sha256 (and weights_dtype, when given) updated."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    manifest = load_manifest(dst)
    for file in dict.fromkeys(m.file for m in manifest.models):
        transform(src / file, dst / file)
        for entry in manifest.models:
            if entry.file == file:
                entry.sha256 = sha256_file(dst / file)
                if weights_dtype is not None:
                    entry.weights_dtype = weights_dtype
    write_manifest(manifest, dst)


def halve_dir(src: Path, dst: Path) -> None:
    """A copy of the models dir src with halve_weights applied to each ONNX file."""
    transform_dir(src, dst, lambda a, b: halve_weights(a, b), weights_dtype="float16")


class _Reader:
    """onnxruntime CalibrationDataReader over a uint8 image array."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 16) -> None:
        self.batches = iter([to_model_input(images[i : i + batch]) for i in range(0, len(images), batch)])
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        return None if x is None else {self.input_name: x}


# what the exported models do to the pixels before their first Conv: layout, RGB→BGR (ReverseSequence), mean/scale
PIXEL_OPS = {"Transpose", "ReverseSequence", "Sub", "Mul", "Add", "Div"}


def _first_convs(graph: Any) -> list[str]:
    """Conv nodes that read the graph input through at most elementwise preprocessing (one per model)."""
    producers = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    firsts = []
    for n in graph.node:
        if n.op_type != "Conv":
            continue
        src, hops = n.input[0], 0
        while src in producers and producers[src].op_type in PIXEL_OPS and hops < 6:
            src, hops = producers[src].input[0], hops + 1
        if src in inputs:
            firsts.append(n.name)
    return firsts


def _kept(path: Path, cfg: QuantConfig) -> list[str]:
    """Nodes of the model file that cfg leaves in float."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    kept = [n.name for n in graph.node if any(k in n.name for k in cfg.keep)]
    return kept + (_first_convs(graph) if cfg.keep_first_conv else [])


def quantize_dir(src: Path, dst: Path, calib: np.ndarray, cfg: QuantConfig) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = load_manifest(src).input.name

    def quantize(source: Path, target: Path) -> None:
        quantize_static(
            str(source),
            str(target),
            _Reader(calib, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=getattr(CalibrationMethod, cfg.method),
            op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
            nodes_to_exclude=_kept(source, cfg) or None,
            reduce_range=cfg.reduce_range,
            extra_options=dict(cfg.extra),
        )

    transform_dir(src, dst, quantize)


def _files(ensemble: Ensemble) -> list[str]:
    return list(dict.fromkeys(m.file for m in ensemble.manifest.models))


def votes(ensemble: Ensemble, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(voted labels, calibrated probabilities (models, N, classes)) as the service computes them."""
    probs = ensemble.predict_images(x)
    return majority_vote(probs)[0], probs


def floor_ms(ensemble: Ensemble, x: np.ndarray, n: int = 40) -> float:
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        ensemble.run_raw(to_model_input(x[i % len(x)]))
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def compare(
    fp32: Ensemble, q: Ensemble, splits: dict[str, tuple[np.ndarray, np.ndarray]], ref: dict[str, Any]
) -> dict[str, Any]:
    """Per split: accuracy, agreement of the voted label with float32, largest probability change."""
    out: dict[str, Any] = {}
    for name, (x, y) in splits.items():
        labels, probs = votes(q, x)
        out[name] = {
            "accuracy": float((labels == y).mean()),
            "agreement_with_fp32": float((labels == ref[name]["labels"]).mean()),
            "max_abs_prob_diff": float(np.abs(probs - ref[name]["probs"]).max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from trainer.data.dataset import prepare
    from trainer.training.train import evaluation_indices, train_val_indices

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data" / "brain-tumor-mri")
    ap.add_argument("--work", type=Path, default=ROOT / "out")
    ap.add_argument("--calibration-images", type=int, default=128)
    ap.add_argument("--configs", nargs="+", choices=sorted([*CONFIGS, FP16]), default=list(CONFIGS))
    ap.add_argument("--save", type=Path, help="copy the (last) quantised models dir here")
    args = ap.parse_args(argv)
    fp32 = Ensemble.load(args.models_dir)
    cfg0 = fp32.manifest.models[0].config
    p = prepare(args.data, args.work / "cache", fp32.manifest.limit_per_class)
    va, te = evaluation_indices(p, cfg0)
    tr, _ = train_val_indices(p, float(cfg0["val_fraction"]), int(cfg0["seed"]))
    calib = p.x[np.random.default_rng(0).permutation(tr)[: args.calibration_images]]
    splits = {"validation": (p.x[va], p.y[va]), "official_test": (p.x[te], p.y[te])}
    ref: dict[str, Any] = {}
    for name, (x, y) in splits.items():
        labels, probs = votes(fp32, x)
        ref[name] = {"labels": labels, "probs": probs, "accuracy": float((labels == y).mean())}
    size_fp32 = sum((args.models_dir / f).stat().st_size for f in _files(fp32)) / 1e6
    r: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_version": fp32.manifest.model_version,
        "calibration": f"{len(calib)} training images; QDQ, per-channel int8 weights, uint8 activations",
        "fp32": {
            **{k: {"accuracy": v["accuracy"]} for k, v in ref.items()},
            "floor_ms": floor_ms(fp32, p.x[te]),
            "size_mb": round(size_fp32, 1),
        },
        "int8": {},
    }
    print(
        f"fp32: val acc {ref['validation']['accuracy']:.4f}, test acc {ref['official_test']['accuracy']:.4f}, "
        f"floor {r['fp32']['floor_ms']:.1f} ms"
    )
    for name in args.configs:
        cfg = CONFIGS.get(name)
        with tempfile.TemporaryDirectory() as tmp:
            qdir = Path(tmp) / "int8"
            t0 = time.perf_counter()
            if cfg is None:
                halve_dir(args.models_dir, qdir)
            else:
                quantize_dir(args.models_dir, qdir, calib, cfg)
            q = Ensemble.load(qdir)
            res = {
                "config": asdict(cfg) if cfg else {"weights": "float16 storage, float32 compute"},
                "quantize_s": round(time.perf_counter() - t0, 1),
                **compare(fp32, q, splits, ref),
                "floor_ms": floor_ms(q, p.x[te]),
                "size_mb": round(sum((qdir / f).stat().st_size for f in _files(q)) / 1e6, 1),
            }
            if args.save:
                shutil.copytree(qdir, args.save, dirs_exist_ok=True)
                saved = load_manifest(args.save)
                how = f"int8 ({name}: {cfg.method} calibration on {len(calib)} training images)" if cfg else FP16
                change = (
                    f"{how} of the float32 ensemble. The metrics in this manifest were measured on the float32 "
                    f"models; this copy measured (python -m bench.quantize): validation accuracy "
                    f"{res['validation']['accuracy']:.4f} (float32 {ref['validation']['accuracy']:.4f}), official "
                    f"Testing accuracy {res['official_test']['accuracy']:.4f} (float32 "
                    f"{ref['official_test']['accuracy']:.4f}); its vote agrees with float32 on "
                    f"{res['validation']['agreement_with_fp32']:.1%} of validation images."
                )
                today = time.strftime("%Y-%m-%d", time.gmtime())
                entry = ChangelogEntry(model_version=saved.model_version, date=today, change=change)
                saved.changelog = [entry, *saved.changelog]
                write_manifest(saved, args.save)
        drop = (ref["official_test"]["accuracy"] - res["official_test"]["accuracy"]) * 100
        res["test_accuracy_drop_points"] = round(drop, 2)
        res["speedup"] = round(r["fp32"]["floor_ms"] / res["floor_ms"], 3)
        res["acceptable"] = drop <= 0.5
        r["int8"][name] = res
        v, t = res["validation"], res["official_test"]
        print(
            f"{name:28s} val acc {v['accuracy']:.4f} (agree {v['agreement_with_fp32']:.3f})"
            f"  test acc {t['accuracy']:.4f} (agree {t['agreement_with_fp32']:.3f},"
            f" drop {drop:+.2f} pts)  floor {res['floor_ms']:.1f} ms ({res['speedup']:.2f}×)  {res['size_mb']} MB"
            f"  → {'acceptable' if res['acceptable'] else 'rejected'}",
            flush=True,
        )
    out = RESULTS / f"quantize-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"({out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
