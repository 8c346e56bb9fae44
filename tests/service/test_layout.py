"""The service's folders follow an upload's way and import in one direction only: image (upload, decode, crop,
checks) → inference (manifest, ensemble, batching, trust) → api (HTTP and operations); main.py, predict.py and
config.py stand aside and may use any."""

from __future__ import annotations

from tests.utils import ROOT, imported_stages

STAGES = ["image", "inference", "api"]


def test_stages_import_only_earlier_stages() -> None:
    backwards = []
    for i, stage in enumerate(STAGES):
        for path in sorted((ROOT / "service" / stage).rglob("*.py")):
            later = imported_stages(path, "service", STAGES) & set(STAGES[i + 1 :])
            if later:
                backwards.append(f"{path.relative_to(ROOT)} imports {sorted(later)}")
    assert not backwards, backwards


def test_no_module_is_left_beside_the_stages_but_the_entry_points_and_settings() -> None:
    top = sorted(p.name for p in (ROOT / "service").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "main.py", "predict.py"]
