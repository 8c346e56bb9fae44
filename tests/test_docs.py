"""The documents people read: every relative link resolves, and they state the same meaning of `uncertain`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.utils import ROOT

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if path and not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


@pytest.mark.parametrize("doc", [ROOT / "README.md", ROOT / "docs" / "api.md"], ids=lambda p: p.name)
def test_uncertain_has_one_documented_meaning(doc: Path) -> None:
    text = doc.read_text()
    for reason in ("several_classes_possible", "unlike_training_images", "probably_not_brain_mri", "prediction_set"):
        assert reason in text, f"{doc.name} does not name {reason}"
    assert "disagreement sets `uncertain`" not in text


def test_readme_and_evaluation_describe_the_bundled_ensemble() -> None:
    """A new export into models/ must come with the README's and docs/evaluation.md's figures of it."""
    import json

    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    version = manifest["model_version"]
    readme = (ROOT / "README.md").read_text()
    bundled = readme.split("### The bundled ensemble", 1)[1].split("\n## ", 1)[0]
    assert f"`{version}`" in bundled, "README's bundled-ensemble section names another model_version"
    assert f'"model_version": "{version}"' in readme, "README's example answer comes from another ensemble"
    assert f"Ensemble `{version}`" in (ROOT / "docs" / "evaluation.md").read_text()
    for m in manifest["models"]:
        assert f"`{m['name']}`" in bundled, f"README's table lacks {m['name']}"
