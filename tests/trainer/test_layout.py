"""The trainer's stage folders import in one direction only: a stage may use the stages before it, never one
after it (data → models → training → evaluation → export → reporting; cli.py and progress.py stand aside)."""

from __future__ import annotations

from tests.utils import ROOT, imported_stages

STAGES = ["data", "models", "training", "evaluation", "export", "reporting"]


def test_stages_import_only_earlier_stages() -> None:
    backwards = []
    for stage in STAGES:
        for path in sorted((ROOT / "trainer" / stage).rglob("*.py")):
            for other in imported_stages(path, "trainer", STAGES):
                if STAGES.index(other) > STAGES.index(stage):
                    backwards.append(f"{path.relative_to(ROOT)} imports trainer.{other}")
    assert not backwards, "\n".join(backwards)
