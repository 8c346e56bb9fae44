"""What every command shares: the data/work/cache arguments, loading the prepared data or an exported
ensemble with its data, and the refusal that ends a command with its message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = Any

DEFAULT_DATA = os.environ.get("MRI_DATA", "../shared/data/brain-tumor-mri")
DEFAULT_WORK = os.environ.get("MRI_WORK", "out")


def common(p: argparse.ArgumentParser) -> None:
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


def ensemble_parser(sub: Subparsers, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command on an exported ensemble: the common arguments and --models-dir (default: the bundled models/)."""
    p = sub.add_parser(name, **kwargs)
    common(p)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    return p


def docs_option(p: argparse.ArgumentParser) -> None:
    """--docs: also replace the command's section of <docs>/evaluation.md."""
    p.add_argument("--docs", type=Path, default=None, help="also replace that section of <docs>/evaluation.md")


class Refused(Exception):
    """A command refuses its arguments; main prints the reason and exits with 2."""


def prepare(args: argparse.Namespace, preprocessing: dict | None = None, brightness: bool = False):  # type: ignore[no-untyped-def]
    from trainer.data.workdir import prepare_work

    return prepare_work(args.data, args.work, args.cache, args.limit_per_class, preprocessing, brightness)


def shipped(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from trainer.evaluation.shipped import load_shipped

    return load_shipped(args.models_dir, args.data, args.work, args.cache, args.limit_per_class)
