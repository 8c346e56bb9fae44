"""The trainer's work dir: which preprocessing its models are trained with, and the prepared dataset under it.

No TensorFlow here: `trainer train` refuses a contradicting preprocessing version before TensorFlow loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.data.dataset import DataRoots, Prepared

PREPROCESSING_FILE = "preprocessing.json"


def cache_dir(work: Path, cache: Path | None) -> Path:
    """The cache of prepared data and backbone features: `cache`, or <work>/cache."""
    return Path(cache) if cache is not None else Path(work) / "cache"


def _has_runs(work: Path) -> bool:
    runs = work / "runs"
    return runs.is_dir() and any(runs.iterdir())


def work_preprocessing(work: Path) -> dict[str, Any]:
    """The preprocessing block a work dir's models are trained with: <work>/preprocessing.json (written by its
    first `train`); version 1 for a work dir with runs from before preprocessing was versioned; else the
    current version."""
    from service.image.preprocessing import PREPROCESSING_PARAMS, PREPROCESSING_V1

    recorded = work / PREPROCESSING_FILE
    if recorded.exists():
        return dict(json.loads(recorded.read_text()))
    return dict(PREPROCESSING_V1 if _has_runs(work) else PREPROCESSING_PARAMS)


def chosen_preprocessing(work: Path, version: int | None) -> dict[str, Any]:
    """The preprocessing `train` uses: the work dir's (work_preprocessing), or version `version` for a fresh work
    dir (no preprocessing.json, no runs). ValueError for an unknown version or for a work dir that already
    trains with another one (its runs would mix crops)."""
    from service.image.preprocessing import PREPROCESSING_VERSIONS

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


def record_preprocessing(work: Path, preprocessing: dict[str, Any]) -> None:
    """From a work dir's first `train` on, its models are trained with this preprocessing."""
    recorded = work / PREPROCESSING_FILE
    if not recorded.exists():
        work.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(preprocessing, indent=1) + "\n")


def prepare_work(
    data: DataRoots,
    work: Path,
    cache: Path | None,
    limit_per_class: int | None,
    preprocessing: dict[str, Any] | None = None,
    brightness: bool = False,
) -> Prepared:
    """The prepared dataset under `preprocessing` (default: the work dir's), with <work>/data_report.json
    written and printed. With `brightness` (prepare and report, the commands that show dataset facts), the
    report also gets brightness_by_class, which decodes every image once per dataset."""
    from trainer.data.dataset import brightness_by_class, format_report, prepare, report

    if preprocessing is None:
        preprocessing = work_preprocessing(work)
    p = prepare(data, cache_dir(work, cache), limit_per_class, preprocessing)
    r = report(p)
    if brightness and limit_per_class is None:
        r["brightness"] = brightness_by_class(data, p, cache_dir(work, cache))
    work.mkdir(parents=True, exist_ok=True)
    (work / "data_report.json").write_text(json.dumps(r, indent=1))
    print(format_report(r))
    return p
