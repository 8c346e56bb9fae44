"""`trainer train --distribute mirrored`: MirroredStrategy, run on CPU split into two logical devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.utils import MRI_FIXTURES, ROOT, run_trainer

pytestmark = pytest.mark.slow


def test_mirrored_training_runs_on_two_logical_devices(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "[defaults]\nepochs = 2\nbatch_size = 8\nval_fraction = 0.25\n"
        "[[cnn]]\nconv_layers = 1\nfilters = 8\ndense_layers = 0\n"
    )
    work = tmp_path / "work"
    common = ["--data", str(MRI_FIXTURES), "--work", str(work), "--grid", str(grid), "--verbose", "0"]
    out = run_trainer("train", *common, "--distribute", "mirrored", cwd=ROOT, MRI_LOGICAL_CPUS="2")
    assert "MirroredStrategy: 2 replicas (/device:CPU:0, /device:CPU:1)" in out
    (run,) = (work / "runs").iterdir()
    result = json.loads((run / "result.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert result["epochs_run"] == 2 and len(history["val_loss"]) == 2 and (run / "model.keras").exists()
    with pytest.raises(AssertionError, match="invalid choice"):
        run_trainer("train", *common, "--distribute", "tpu", cwd=ROOT)
