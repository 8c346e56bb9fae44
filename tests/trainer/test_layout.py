"""The trainer's stage folders import in one direction only: a stage may use the stages before it, never one
after it (data → models → training → evaluation → export → reporting; cli.py and progress.py stand aside)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.utils import ROOT

STAGES = ["data", "models", "training", "evaluation", "export", "reporting"]


def imported_stages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "trainer" and len(parts) > 1 and parts[1] in STAGES:
                found.add(parts[1])
    return found


def test_stages_import_only_earlier_stages() -> None:
    backwards = []
    for stage in STAGES:
        for path in sorted((ROOT / "trainer" / stage).rglob("*.py")):
            for other in imported_stages(path):
                if STAGES.index(other) > STAGES.index(stage):
                    backwards.append(f"{path.relative_to(ROOT)} imports trainer.{other}")
    assert not backwards, "\n".join(backwards)
