"""The Makefile's training target: with default arguments it never writes the bundled models/."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.utils import ROOT


def _export_line(*args: str) -> str:
    out = subprocess.run(["make", "-n", "train", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if "trainer export" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_train_exports_into_the_work_dir_unless_models_is_named() -> None:
    assert "--models-dir out/models " in _export_line()
    assert "--models-dir /tmp/w/models " in _export_line("WORK=/tmp/w")
    assert "--models-dir models " in _export_line("MODELS=models")


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_train_smoke_reads_two_data_roots_and_train_takes_a_list() -> None:
    def lines(*args: str) -> list[str]:
        out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if "-m trainer" in line]

    smoke = lines("train-smoke")
    assert len(smoke) == 3
    for line in smoke:
        assert "--data ../shared/data/brain-tumor-mri --data ../shared/data/brain-tumor-mri-more " in line
    train = lines("train", "DATA=a b", "VGG16_HED=Makefile")
    assert all("--data a --data b " in line for line in train if "leaderboard" not in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_soak_and_fuzz_run_their_tools_with_the_documented_defaults() -> None:
    def line(*args: str) -> str:
        out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return next(x for x in out.splitlines() if "-m bench." in x)

    assert "-m bench.soak --minutes 30 " in line("soak") and "--minutes 5 " in line("soak", "SOAK_MINUTES=5")
    assert "-m bench.fuzz --cases 50000 --seed 1 --models-dir models" in line("fuzz")
