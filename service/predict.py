"""`python -m service.predict scans/ --csv out.csv`: classify files or folders offline, with the service's own
runtime (same preprocessing, models, prediction sets and flags), no server needed.

One CSV row per file: the label, the prediction set, `uncertain` with its reasons, the warnings, the mean
probability of each class and the shift score; a file that cannot be read gets its error in the `error` column
instead of stopping the run. Exit status: 0 when every file was classified, 1 when some were refused, 2 when
nothing could be run (no files, models that do not load). Research tool, not for clinical use.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from service import DISCLAIMER
from service.api import repository
from service.config import Settings
from service.image.preprocessing import CropResult, ImageDecodeError, preprocess_bytes
from service.inference.manifest import ManifestError
from service.inference.runtime import Ensemble, ModelLoadError

SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ".dicom"}


def find_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, and every image file (by suffix) under the folders named, sorted within each folder."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        else:
            out.append(p)  # named explicitly: tried whatever its suffix, a missing one reported in its row
    return out


class Progress:
    """A one-line progress bar on a terminal (a line per tenth elsewhere, so logs stay short)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream, self.start = total, stream, time.perf_counter()
        self.tty = stream.isatty()
        self.shown = -1

    def update(self, done: int, failed: int) -> None:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        share = done / self.total if self.total else 1.0
        bar = "#" * int(30 * share)
        line = f"[{bar:<30}] {done}/{self.total} files, {failed} refused, {rate:.1f}/s, eta {eta:.0f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == self.total else ""))
        elif int(10 * share) > self.shown or done == self.total:
            self.shown = int(10 * share)
            self.stream.write(line + "\n")
        self.stream.flush()


def columns(ensemble: Ensemble) -> list[str]:
    return [
        "file",
        "label",
        "prediction_set",
        "prediction_set_level",
        "uncertain",
        "uncertainty_reasons",
        "warnings",
        *(f"p_{c}" for c in ensemble.classes),
        "agreement",
        "shift_score",
        "crop_fallback",
        "error",
    ]


def _read(path: Path, settings: Settings, ensemble: Ensemble, frame: int | None) -> CropResult | str:
    try:
        data = path.read_bytes()
        return preprocess_bytes(data, settings.max_image_pixels, frame, ensemble.manifest.preprocessing)
    except ImageDecodeError as e:
        return str(e)
    except OSError as e:
        return f"cannot read the file: {e.strerror or e}"


def classify(
    files: list[Path], ensemble: Ensemble, settings: Settings, batch_size: int = 16, frame: int | None = None
) -> Iterator[dict[str, Any]]:
    """One row per file, in order; files are read and run `batch_size` at a time."""
    level = None if ensemble.manifest.ensemble.conformal is None else ensemble.manifest.ensemble.conformal.level
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        crops = [_read(f, settings, ensemble, frame) for f in chunk]
        good = [c for c in crops if isinstance(c, CropResult)]
        preds = iter(ensemble.predict_batch(np.stack([c.image for c in good]))) if good else iter(())
        for path, crop in zip(chunk, crops, strict=True):
            row: dict[str, Any] = {"file": str(path)}
            if isinstance(crop, str):
                row["error"] = crop
                yield row
                continue
            pred = next(preds)
            verdict = ensemble.assess(crop.image, crop.fallback, pred)
            row.update(
                label=ensemble.classes[pred.label],
                prediction_set="|".join(verdict.prediction_set or []),
                prediction_set_level="" if level is None else level,
                uncertain=verdict.uncertain,
                uncertainty_reasons="|".join(verdict.reasons),
                warnings="|".join(verdict.warnings),
                agreement=round(float(pred.votes[pred.label]) / ensemble.n_models, 4),
                shift_score="" if pred.shift_score is None else round(pred.shift_score, 4),
                crop_fallback=crop.fallback,
                error="",
            )
            row.update({f"p_{c}": round(float(p), 6) for c, p in zip(ensemble.classes, pred.mean, strict=True)})
            yield row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="image files (JPEG, PNG, DICOM) or folders of them")
    p.add_argument("--csv", type=Path, default=None, help="write the rows here (default: standard output)")
    p.add_argument("--models-dir", type=Path, default=None, help="default: MRI_MODELS_DIR or the bundled models/")
    p.add_argument("--batch-size", type=int, default=16, help="images run through the models at once")
    p.add_argument("--frame", type=int, default=None, help="multi-frame DICOM: the 0-based frame to use")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings() if args.models_dir is None else Settings(models_dir=args.models_dir)
    # a missing path named like an image file gets its own row; one named like a folder stops the run (a mistyped
    # folder is not "1 file refused")
    folders = [p for p in args.paths if not p.exists() and p.suffix.lower() not in SUFFIXES]
    if folders:
        print(f"no such file or folder: {', '.join(str(p) for p in folders)}", file=sys.stderr)
        return 2
    files = find_files(args.paths)
    if not files:
        print("no image files found (.jpg, .jpeg, .png, .dcm)", file=sys.stderr)
        return 2
    try:
        ensemble = Ensemble.load(repository.resolve(settings.models_dir), settings.threads, settings.verify_sha256)
    except (ModelLoadError, ManifestError) as e:
        print(f"cannot load the models: {e}", file=sys.stderr)
        return 2
    print(f"{DISCLAIMER} Ensemble {ensemble.manifest.model_version}, {len(files)} files.", file=sys.stderr)
    out = sys.stdout if args.csv is None else args.csv.open("w", newline="")
    failed = 0
    try:
        writer = csv.DictWriter(out, fieldnames=columns(ensemble), extrasaction="raise")
        writer.writeheader()
        progress = Progress(len(files))
        for done, row in enumerate(classify(files, ensemble, settings, args.batch_size, args.frame), start=1):
            failed += bool(row.get("error"))
            writer.writerow(row)
            progress.update(done, failed)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.csv is not None:
        print(f"wrote {args.csv}: {len(files) - failed} classified, {failed} refused", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
