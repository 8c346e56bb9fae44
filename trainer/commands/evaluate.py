"""Commands that measure: runs (evaluate) and exported ensembles (tta, compare, robustness, nonmri, generalisation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.commands.common import Refused, Subparsers, common, docs_option, ensemble_parser, prepare, shipped


def run_evaluate(args: argparse.Namespace) -> int:
    if args.models_dir is not None:
        from trainer.evaluation.shipped import recheck

        manifest, p = shipped(args)
        return recheck(args.models_dir, manifest, p)
    from trainer.evaluation.evaluate import evaluate_all

    rows = evaluate_all(args.work / "runs", prepare(args), args.work / "report")
    print(f"leaderboard: {args.work / 'report' / 'leaderboard.md'} ({len(rows)} models)")
    return 0


def add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="score all runs; write the leaderboard and plots")
    common(p)
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="instead: recompute an exported ensemble's metrics from its ONNX files and compare with its manifest",
    )
    p.set_defaults(func=run_evaluate)


def run_tta(args: argparse.Namespace) -> int:
    from trainer.evaluation.tta import measure_tta

    r = measure_tta(args.models_dir, shipped(args)[1], args.work / "report")
    print(f"horizontal-flip TTA {'pays' if r['adopted'] else 'does not pay'} on validation (macro-F1)")
    return 0


def add_tta(sub: Subparsers) -> None:
    p = ensemble_parser(sub, "tta", help="measure horizontal-flip test-time augmentation of an exported ensemble")
    p.set_defaults(func=run_tta)


def run_compare(args: argparse.Namespace) -> int:
    from trainer.data.workdir import cache_dir
    from trainer.evaluation.compare import compare_shipped, write_comparison

    _, p = shipped(args)
    cache = cache_dir(args.work, args.cache)
    r = compare_shipped(args.models_dir, args.candidate, p, args.data, cache, args.limit_per_class)
    print(f"wrote {write_comparison(r, args.work / 'report')}")
    return 0


def add_compare(sub: Subparsers) -> None:
    p = sub.add_parser("compare", help="paired comparison (McNemar) of two exported ensembles on validation and test")
    common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="the reference ensemble")
    p.add_argument("--candidate", type=Path, required=True, help="the exported ensemble compared with it")
    p.set_defaults(func=run_compare)


def run_nonmri(args: argparse.Namespace) -> int:
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


def add_nonmri(sub: Subparsers) -> None:
    p = ensemble_parser(
        sub,
        "nonmri",
        help="measure the not-an-MRI warnings (Testing false flags, non-MRI catches) of an exported ensemble",
    )
    docs_option(p)
    p.set_defaults(func=run_nonmri)


def run_robustness(args: argparse.Namespace) -> int:
    from trainer.evaluation.robustness import measure_shipped, shift_table
    from trainer.evaluation.shipped import validation_indices
    from trainer.reporting.report import load_robustness, update_robustness_docs

    manifest, p = shipped(args)
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


def add_robustness(sub: Subparsers) -> None:
    p = ensemble_parser(
        sub,
        "robustness",
        help="accuracy of an exported ensemble under brightness/contrast/blur/noise/rotation/... shifts",
    )
    docs_option(p)
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="robustness.json of another ensemble (an earlier one, or a candidate): kept as "
        "<work>/report/robustness-compare.json and shown as a comparison column of the docs section",
    )
    p.set_defaults(func=run_robustness)


def run_generalisation(args: argparse.Namespace) -> int:
    """Accuracy per class × sequence group and across sources of an exported ensemble; into its manifest."""
    import json

    from service.inference.manifest import load_manifest
    from service.inference.runtime import Ensemble
    from trainer.evaluation import generalisation as gen
    from trainer.export.bundle import write_generalisation
    from trainer.models.sequence import prepared_groups

    manifest = load_manifest(args.models_dir)
    p = prepare(args, manifest.preprocessing)
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
    figures["runs"] = gen.run_groups(args.work / "report", p, groups)
    check = gen.tie_broken(ensemble, p)
    if check is not None:  # images where sequence does not give the class, for the ensemble and every candidate
        figures["tie_broken"] = check
        figures["run_checks"] = gen.run_checks(args.work / "runs", p)
    if args.baseline is not None:  # the replaced ensemble, on the Testing images neither trained on
        baseline = Ensemble.load(args.baseline)
        figures["fresh_test"] = gen.fresh_test([ensemble, baseline], p)
        print(f"fresh Testing images: {figures['fresh_test']}")
        baseline_check = gen.tie_broken(baseline, p)
        if baseline_check is not None:
            figures["tie_broken_baseline"] = {"model_version": baseline.manifest.model_version, **baseline_check}
    report = args.work / "report"
    print(f"wrote {gen.write(report, figures)}")
    before = None
    if args.compare:  # the replaced ensemble's figures (one file per data it was measured on), kept beside
        before = {}
        for path in args.compare:
            before.update(json.loads(path.read_text()))
        (report / "generalisation-compare.json").write_text(json.dumps(before, indent=1) + "\n")
    for key, fig in figures.get("sequence_groups", {}).items():
        print(f"{key}: worst class × sequence group {fig['worst']}")
    for row in figures["cross_source"]:
        print(f"cross-source {row['source']}: {row['accuracy']:.1%} of {row['n']} ({row['model']})")
    for row in figures["runs"]:
        print(f"run {row['name']}: val accuracy {row['val_accuracy']:.1%}, worst {row['worst']}")
    if "tie_broken" in figures:
        from trainer.data.tiebroken import headline

        print(f"tie-broken check, {manifest.model_version}: {headline(figures['tie_broken'])}")
        if "tie_broken_baseline" in figures:
            print(
                f"tie-broken check, {figures['tie_broken_baseline']['model_version']}: "
                f"{headline(figures['tie_broken_baseline'])}"
            )
        for row in figures["run_checks"]:
            print(f"tie-broken check, run {row['name']}: {headline(row)}")
    if args.write_manifest:
        manifest = write_generalisation(args.models_dir, figures)
        print(f"updated {args.models_dir / 'manifest.json'}")
    if args.docs is not None:
        from trainer.reporting.report import update_generalisation_docs

        print(f"updated {update_generalisation_docs(figures, manifest, args.docs, before)}")
    return 0


def add_generalisation(sub: Subparsers) -> None:
    p = ensemble_parser(
        sub,
        "generalisation",
        help="an exported ensemble's accuracy per class × MRI sequence group and on sources it never saw "
        "(leave-one-source-out runs of <work>/runs, else the ensemble on other sources)",
    )
    p.add_argument("--weights", type=Path, default=Path("out/weights/efficientnet_lite0_imagenet_notop.weights.h5"))
    p.add_argument("--write-manifest", action="store_true", help="also put the figures into the manifest")
    p.add_argument("--docs", type=Path, default=None, help="also replace those sections of <docs>/evaluation.md")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another exported ensemble (e.g. the one this replaces): both scored on the Testing images neither "
        "trained on, nor on a copy of them, with the paired McNemar test",
    )
    p.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=None,
        help="generalisation.json files of the ensemble this one replaces (e.g. its splits and the other sources, "
        "measured separately), merged: kept as <work>/report/generalisation-compare.json, shown beside",
    )
    p.set_defaults(func=run_generalisation)


PARSERS = [add_evaluate, add_tta, add_compare, add_nonmri, add_robustness, add_generalisation]
