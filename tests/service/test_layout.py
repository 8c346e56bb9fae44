"""The service's folders follow an upload's way and import in one direction only: image (upload, decode, crop,
checks) → inference (manifest, ensemble, batching, trust) → api (HTTP and operations); main.py, predict.py and
config.py stand aside and may use any."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.utils import ROOT

STAGES = ["image", "inference", "api"]


def imported_stages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "service" and len(parts) > 1 and parts[1] in STAGES:
                found.add(parts[1])
    return found


def test_stages_import_only_earlier_stages() -> None:
    backwards = []
    for i, stage in enumerate(STAGES):
        for path in sorted((ROOT / "service" / stage).rglob("*.py")):
            later = imported_stages(path) & set(STAGES[i + 1 :])
            if later:
                backwards.append(f"{path.relative_to(ROOT)} imports {sorted(later)}")
    assert not backwards, backwards


def test_no_module_is_left_beside_the_stages_but_the_entry_points_and_settings() -> None:
    top = sorted(p.name for p in (ROOT / "service").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "main.py", "predict.py"]
