"""The model repository and zero-downtime reload.

`MRI_MODELS_DIR` holds one ensemble (`manifest.json` at its top, as `models/` ships) or one directory per
`model_version`, each with its manifest and ONNX files; the newest version (model versions start with their
export time) is served at start-up. A reload loads and verifies the new ensemble beside the serving one (sha256,
shapes, a warm-up run), then swaps both the ensemble and its inference thread in one step; a broken ensemble is
refused and the old one keeps serving. Requests already running finish on the ensemble they started with.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.api.deps import AppState
from service.inference.batching import MicroBatcher
from service.inference.manifest import MANIFEST_NAME, ManifestError, load_manifest
from service.inference.runtime import Ensemble

log = logging.getLogger("service.api.repository")


class RepositoryError(LookupError):
    """No such version in the repository."""


def version_dirs(models_dir: Path) -> list[Path]:
    """The repository's ensembles: models_dir itself when it holds a manifest, else its version directories."""
    if (models_dir / MANIFEST_NAME).exists():
        return [models_dir]
    if not models_dir.is_dir():
        return []
    return sorted(d for d in models_dir.iterdir() if (d / MANIFEST_NAME).exists())


def _version_of(directory: Path) -> str:
    """The model_version a directory holds (its name when the manifest cannot be read)."""
    try:
        return load_manifest(directory).model_version
    except ManifestError:
        return directory.name


def resolve(models_dir: Path, version: str | None = None) -> Path:
    """The directory of `version` (default: the newest); models_dir itself when it holds no ensemble at all, so
    that loading it reports the missing manifest by its path."""
    dirs = version_dirs(models_dir)
    if version is None:
        return max(dirs, key=_version_of) if dirs else models_dir
    for d in dirs:
        if d.name == version:
            return d
    for d in dirs:  # a directory named otherwise: its manifest says which version it holds
        try:
            if load_manifest(d).model_version == version:
                return d
        except ManifestError:
            continue
    raise RepositoryError(f"no version '{version}' in {models_dir}")


def index(models_dir: Path, serving: Ensemble | None) -> list[dict[str, Any]]:
    """One entry per ensemble in the repository, READY for the one being served."""
    entries = []
    for d in version_dirs(models_dir):
        try:
            version = load_manifest(d).model_version
        except ManifestError as e:  # listed, with the reason it cannot load
            entries.append({"version": d.name, "state": "UNAVAILABLE", "reason": str(e)})
            continue
        ready = serving is not None and version == serving.manifest.model_version
        entries.append({"version": version, "state": "READY" if ready else "UNLOADED"})
    return entries


def load(state: AppState, directory: Path) -> tuple[Ensemble, MicroBatcher]:
    """Load, verify and warm up the ensemble in `directory`, with its own inference thread (blocking)."""
    settings = state.settings
    ensemble = Ensemble.load(directory, settings.threads, settings.verify_sha256)
    ensemble.warmup()
    return ensemble, MicroBatcher(ensemble, settings.max_batch)


def serve(state: AppState, ensemble: Ensemble, batcher: MicroBatcher) -> None:
    """Make this ensemble the one new requests get (one step: no request sees one without the other)."""
    state.batchers[id(ensemble)] = batcher
    state.ensemble, state.batcher = ensemble, batcher
    state.ready = True


async def reload(state: AppState, version: str | None = None, grace_s: float = 30.0) -> tuple[str, str | None]:
    """Swap in `version` (default: the newest) beside the serving ensemble; (new, previous) model versions.
    Raises what loading raises (RepositoryError, ManifestError, ModelLoadError) with the old one still serving.
    The old inference thread stops after `grace_s`, when requests that started on it have finished."""
    async with state.reload_lock:
        directory = resolve(state.settings.models_dir, version)
        ensemble, batcher = await run_in_threadpool(load, state, directory)
        old_ensemble, old_batcher = state.ensemble, state.batcher
        serve(state, ensemble, batcher)
        new = ensemble.manifest.model_version
        previous = old_ensemble.manifest.model_version if old_ensemble is not None else None
        log.info("reloaded: serving %s from %s (was %s)", new, directory, previous)
    if old_ensemble is not None and old_batcher is not None and old_batcher is not batcher:

        async def retire() -> None:
            await asyncio.sleep(grace_s)
            state.batchers.pop(id(old_ensemble), None)
            await run_in_threadpool(old_batcher.close)

        state.tasks.add(task := asyncio.get_running_loop().create_task(retire()))
        task.add_done_callback(state.tasks.discard)
    return new, previous
