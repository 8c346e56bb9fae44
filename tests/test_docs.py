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
