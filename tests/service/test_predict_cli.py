"""`python -m service.predict`: offline classification of files and folders with the service's runtime."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.predict import main
from tests.utils import CLASSES, MRI_FIXTURES, ROOT


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_gives_one_row_per_file_as_the_api_answers(tiny_models: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    (scans / "more").mkdir(parents=True)
    shutil.copy(MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg", scans / "a.jpg")
    shutil.copy(MRI_FIXTURES / "Testing" / "pituitary_tumor" / "image(1).jpg", scans / "more" / "b with space.JPG")
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (scans / "notes.txt").write_text("not an image, not picked up from a folder")
    out = tmp_path / "out.csv"
    code = main([str(scans), str(tmp_path / "missing.jpg"), "--csv", str(out), "--models-dir", str(tiny_models)])
    assert code == 1  # some files were refused
    rows = _rows(out)
    assert [Path(r["file"]).name for r in rows] == ["a.jpg", "broken.png", "b with space.JPG", "missing.jpg"]
    assert list(rows[0]) == [
        "file",
        "label",
        "prediction_set",
        "prediction_set_level",
        "uncertain",
        "uncertainty_reasons",
        "warnings",
        *(f"p_{c}" for c in CLASSES),
        "agreement",
        "shift_score",
        "crop_fallback",
        "error",
    ]
    assert "PNG" in rows[1]["error"] and rows[1]["label"] == ""
    assert "cannot read the file" in rows[3]["error"]
    with TestClient(create_app(Settings(models_dir=tiny_models))) as c:
        for row, path in ((rows[0], scans / "a.jpg"), (rows[2], scans / "more" / "b with space.JPG")):
            api = c.post("/v1/predict", files={"file": ("x.jpg", path.read_bytes(), "image/jpeg")}).json()
            assert row["error"] == "" and row["label"] == api["label"]
            assert row["prediction_set"].split("|") == api["prediction_set"]
            assert row["uncertain"] == str(api["uncertain"])
            assert row["uncertainty_reasons"] == "|".join(api["uncertainty_reasons"])
            for cls in CLASSES:
                assert abs(float(row[f"p_{cls}"]) - api["probabilities"][cls]) < 1e-5


def test_exit_status_and_messages(tiny_models: Path, tmp_path: Path) -> None:
    image = MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg"
    assert main([str(image), "--csv", str(tmp_path / "ok.csv"), "--models-dir", str(tiny_models)]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--models-dir", str(tiny_models)]) == 2
    r = subprocess.run(
        [sys.executable, "-m", "service.predict", str(image), "--models-dir", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "cannot load the models" in r.stderr and "manifest not found" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "service.predict", str(image), "--models-dir", str(tiny_models)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.startswith("file,label,") and len(r.stdout.splitlines()) == 2
    assert "not for clinical use" in r.stderr and "1/1 files" in r.stderr


def test_a_folder_that_does_not_exist_is_named_and_nothing_runs(
    tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg"
    code = main(
        [str(image), str(tmp_path / "scnas"), "--csv", str(tmp_path / "o.csv"), "--models-dir", str(tiny_models)]
    )
    assert code == 2 and f"no such file or folder: {tmp_path / 'scnas'}" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
