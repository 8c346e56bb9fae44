"""`trainer train`: every entry of a grid file."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.commands.common import Refused, Subparsers, common, prepare


def run_train(args: argparse.Namespace) -> int:
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
    p = prepare(args, preprocessing)
    record_preprocessing(args.work, p.preprocessing)
    print(f"training {len(entries)} model(s) from {args.grid}")
    runs = args.work / "runs"
    cache = cache_dir(args.work, args.cache)
    train_grid(entries, p, runs, args.verbose, cache, strategy, grid=grid_label(args.grid))
    return 0


def add_train(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train every entry of a grid file")
    common(p)
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
    p.set_defaults(func=run_train)


PARSERS = [add_train]
