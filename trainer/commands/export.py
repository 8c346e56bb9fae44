"""Commands that write an exported ensemble: export, merge, calibrate, trust."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.commands.common import Subparsers, common, ensemble_parser, prepare, shipped


def run_export(args: argparse.Namespace) -> int:
    from trainer.evaluation.evaluate import load_leaderboard
    from trainer.export.bundle import export_top

    manifest = export_top(
        load_leaderboard(args.work / "report"),
        prepare(args),
        args.models_dir,
        args.top,
        changelog=args.changelog,
        previous=args.previous,
        limit_per_class=args.limit_per_class,
        max_mb=args.max_mb,
        max_per_backbone=args.max_per_backbone,
        select=args.select,
        report_dir=args.work / "report",
        merge=not args.separate_files,
        weights_dtype=args.weights_dtype,
        max_gmac=args.max_gmac,
        candidates=args.candidates,
        names=args.names,
        first_root=args.data[0].name,
        cache=args.cache,
    )
    print(f"wrote {args.models_dir}/manifest.json ({manifest.model_version})")
    return 0


def add_export(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="export the top models to ONNX + manifest.json")
    common(p)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--changelog", default="", help="one line for the manifest's changelog: what this ensemble changes")
    p.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="models dir of the ensemble this one follows (e.g. models): its changelog entries are carried over",
    )
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
        choices=("ensemble", "worst_group", "top", "check"),
        default="ensemble",
        help="ensemble: the combination whose majority vote has the best validation macro-F1 (default); "
        "worst_group: the best worst class × MRI sequence group validation accuracy, then macro-F1; "
        "top: the individually best models; check (with --names, the runs to choose among): the vote with "
        "validation macro-F1 ≥ 0.95 and the best worst cell of the tie-broken check",
    )
    p.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="export exactly these runs (leaderboard names), in order; with --select check, the runs chosen among",
    )
    p.add_argument(
        "--separate-files",
        action="store_true",
        help="keep one ONNX file per model instead of merging them into ensemble.onnx (shared layers run once)",
    )
    p.set_defaults(func=run_export)


def run_merge(args: argparse.Namespace) -> int:
    """Merge an exported ensemble's separate ONNX files into one (outputs checked unchanged)."""
    from trainer.evaluation.shipped import validation_indices
    from trainer.export.bundle import write_models_readme
    from trainer.export.merge import merge_models_dir

    manifest, p = shipped(args)
    merge_models_dir(args.models_dir, p.x[validation_indices(manifest, p)[:32]])
    write_models_readme(args.models_dir)
    return 0


def add_merge(sub: Subparsers) -> None:
    p = ensemble_parser(sub, "merge", help="merge an exported ensemble's separate ONNX files into ensemble.onnx")
    p.set_defaults(func=run_merge)


def run_calibrate(args: argparse.Namespace) -> int:
    """Re-fit temperatures and uncertainty thresholds of an exported ensemble (its ONNX files unchanged)."""
    from trainer.export.bundle import finalize

    finalize(args.models_dir, shipped(args)[1])
    return 0


def add_calibrate(sub: Subparsers) -> None:
    p = ensemble_parser(sub, "calibrate", help="re-fit temperatures and uncertainty thresholds of an exported ensemble")
    p.set_defaults(func=run_calibrate)


def run_trust(args: argparse.Namespace) -> int:
    """Fit the prediction sets and the shift check of an exported ensemble on its validation images; measure."""
    from trainer.export.bundle import write_models_readme
    from trainer.export.trust import apply_trust, measure_check

    if args.check_only:
        from service.inference.manifest import load_manifest

        manifest = measure_check(args.models_dir, prepare(args, load_manifest(args.models_dir).preprocessing))
    else:
        manifest = apply_trust(args.models_dir, shipped(args)[1], args.level, args.flag_share)
    write_models_readme(args.models_dir, manifest)
    e = manifest.ensemble
    assert e.conformal is not None
    print(f"prediction sets: {e.conformal.method}, level {e.conformal.level}, thresholds {e.conformal.thresholds}")
    for key, t in e.trust.items():
        print(
            f"{key}: n {t['n']}, coverage {t.get('coverage')}, mean set size {t.get('mean_set_size')}, "
            f"flagged {t['flagged_share']}, unflagged accuracy {t.get('unflagged_accuracy')}"
        )
    return 0


def add_trust(sub: Subparsers) -> None:
    p = ensemble_parser(
        sub,
        "trust",
        help="fit prediction sets (split conformal) and the shift check of an exported ensemble on validation",
    )
    p.add_argument(
        "--level",
        type=float,
        default=None,
        help="stated coverage of the prediction sets (default: the lowest of 0.9/0.95/0.98/0.99 that the sets, "
        "cross-fitted on validation, meet within one point)",
    )
    p.add_argument("--flag-share", type=float, default=0.05, help="share of validation images the shift check flags")
    p.add_argument(
        "--check-only",
        action="store_true",
        help="refit nothing: measure the rules as they are on the tie-broken check of the data given (for an "
        "ensemble trained on other data roots than these)",
    )
    p.set_defaults(func=run_trust)


PARSERS = [add_export, add_merge, add_calibrate, add_trust]
