"""The model repository: one ensemble, or one directory per model_version (service/api/repository.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.api import repository


def _copy(src: Path, dst: Path, version: str) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model_version"] = version
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_flat_and_versioned_repositories(tiny_models: Path, tmp_path: Path) -> None:
    assert repository.resolve(tiny_models) == tiny_models  # models/ as it ships
    assert repository.resolve(tmp_path / "empty") == tmp_path / "empty"  # loading it names the missing manifest
    repo = tmp_path / "repo"
    old = _copy(tiny_models, repo / "20260101-000000-a", "20260101-000000-a")
    renamed = _copy(tiny_models, repo / "candidate", "20260102-000000-b")
    broken = repo / "20260103-000000-c"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert repository.resolve(repo) == broken  # the newest, even if it cannot load (start-up says why)
    assert repository.resolve(repo, "20260101-000000-a") == old
    assert repository.resolve(repo, "20260102-000000-b") == renamed  # found by its manifest, not its name
    with pytest.raises(repository.RepositoryError, match="no version 'x'"):
        repository.resolve(repo, "x")
    states = {e["version"]: (e["state"], "reason" in e) for e in repository.index(repo, None)}
    assert states == {
        "20260101-000000-a": ("UNLOADED", False),
        "20260102-000000-b": ("UNLOADED", False),
        "20260103-000000-c": ("UNAVAILABLE", True),
    }
