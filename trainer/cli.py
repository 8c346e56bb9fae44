"""`python -m trainer <command>`: prepare, train, evaluate, export, report and the measurements of an exported
ensemble. Each command's parser and code live in trainer/commands/, by stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.commands import data, evaluate, export, report, train
from trainer.commands.common import DEFAULT_DATA, Refused

STAGES = (data, train, evaluate, export, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        for add in stage.PARSERS:
            add(sub)
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
