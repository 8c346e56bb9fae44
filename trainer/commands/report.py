"""Commands that write the docs from artefacts: report, leaderboard, pooled."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.commands.common import DEFAULT_WORK, Refused, Subparsers, common, ensemble_parser, prepare


def run_report(args: argparse.Namespace) -> int:
    from service.inference.manifest import load_manifest
    from trainer.reporting.report import write_report

    manifest = load_manifest(args.models_dir)
    if args.limit_per_class is None:
        args.limit_per_class = manifest.limit_per_class
    p = prepare(args, manifest.preprocessing, brightness=True)
    print(f"wrote {write_report(args.work, args.models_dir, args.docs, p, args.data)}")
    return 0


def add_report(sub: Subparsers) -> None:
    p = ensemble_parser(sub, "report", help="write docs/evaluation.md from the run's artefacts and models/")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.set_defaults(func=run_report)


def run_leaderboard(args: argparse.Namespace) -> int:
    from trainer.reporting.leaderboard import update

    board = update(args.work, args.docs)
    print(
        f"{args.docs / 'leaderboard.json'}: {len(board)} models; leaderboard of {args.docs / 'evaluation.md'} redrawn"
    )
    return 0


def add_leaderboard(sub: Subparsers) -> None:
    p = sub.add_parser(
        "leaderboard", help="merge <work>/report/leaderboard.json into docs/leaderboard.json; redraw that section"
    )
    p.add_argument("--work", type=Path, default=Path(DEFAULT_WORK), help="work dir: cache/, runs/, report/")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.set_defaults(func=run_leaderboard)


def run_pooled(args: argparse.Namespace) -> int:
    """The pooled protocol's headline row and section of <docs>/evaluation.md, from a pooled work dir alone."""
    from trainer.reporting.pooled import pooled_summary
    from trainer.reporting.report import update_from_pooled_work

    try:
        summary = pooled_summary(args.work)
    except ValueError as e:  # an export of another protocol
        raise Refused(str(e)) from e
    if summary is not None and args.limit_per_class is None:
        args.limit_per_class = summary["manifest"].limit_per_class
    prepared = prepare(args, summary["manifest"].preprocessing if summary else None)
    try:
        lines = update_from_pooled_work(args.work, args.models_dir, args.docs, prepared)
    except ValueError as e:  # not exported yet
        raise Refused(str(e)) from e
    print("\n".join(lines))
    return 0


def add_pooled(sub: Subparsers) -> None:
    p = sub.add_parser(
        "pooled",
        help="put a pooled-protocol work dir's export (<work>/models) into the headline and pooled section of "
        "<docs>/evaluation.md, without the official run's artefacts",
    )
    common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="the shipped ensemble (labels the row)")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.set_defaults(func=run_pooled)


PARSERS = [add_report, add_leaderboard, add_pooled]
