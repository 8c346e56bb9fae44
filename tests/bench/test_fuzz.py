"""The upload fuzzers: reproducible cases of every format and framing, and 2,000 of them through the service in CI
without a 5xx, an exception or a slow answer (`make fuzz` runs more against the bundled models); and the
coverage-guided one of the decoders (`make covfuzz`), 3,000 inputs in CI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.fuzz import Generator, mangle_multipart, multipart, mutate, run, seeds
from service.config import Settings
from service.image.preprocessing import sniff_format
from service.main import create_app
from tests.utils import ROOT, make_cam_ensemble


def test_seeds_are_every_format_the_service_reads_and_cases_are_reproducible() -> None:
    s = seeds()
    kinds = {sniff_format(data) or ("dicom" if data[128:132] == b"DICM" else None) for data, _ in s.values()}
    assert kinds == {"jpeg", "png", "dicom"}
    first = [c.body for c, _ in zip(Generator(7), range(50), strict=False)]
    again = [c.body for c, _ in zip(Generator(7), range(50), strict=False)]
    other = [c.body for c, _ in zip(Generator(8), range(50), strict=False)]
    assert first == again and first != other
    routes = {c.route for c, _ in zip(Generator(7), range(300), strict=False)}
    assert routes == {"/v1/predict", "/v1/predict/batch", "/v1/explain", "/v2/models/mri-classifier/infer"}


def test_mutations_change_the_bytes_and_mangled_framing_breaks_the_multipart() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    data = seeds()["jpeg"][0]
    changed = [mutate(data, rng)[0] != data for _ in range(50)]
    assert sum(changed) >= 48  # a mutation can, rarely, restore a byte it flipped
    body = multipart([("file", "a.jpg", data, "image/jpeg")], "b0")
    assert body.startswith(b"--b0\r\n") and body.endswith(b"--b0--\r\n")
    assert all(mangle_multipart(body, rng, "b0")[0] != body for _ in range(20))


def test_two_thousand_fuzzed_uploads_get_no_5xx() -> None:
    models = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
    make_cam_ensemble(models)  # with class maps, so /v1/explain answers too
    result = run(create_app(Settings(models_dir=models)), cases=2000, seed=20261207)  # type: ignore[call-arg]
    assert not result.failures, [(c.route, c.recipe, why) for c, why in result.failures[:5]]
    assert result.cases == 2000 and sum(result.statuses.values()) == 2000
    assert result.statuses[200] > 100 and result.statuses[422] > 100 and result.statuses[415] > 0


def test_every_seed_of_the_coverage_guided_corpus_decodes_both_ways(tmp_path: Path) -> None:
    """The corpus is where coverage starts: a seed the harness refuses would leave its format's decoder unexplored."""
    from bench.covfuzz import one_input, write_corpus

    write_corpus(tmp_path)
    assert {p.name: one_input(p.read_bytes()) for p in tmp_path.iterdir()} == {
        f"{name}-{how}": 1 for name in seeds() for how in ("raw", "multipart")
    }
    for data in (b"", b"\x00", b"\x01", b"\x00GIF89a", b"\x01\xff\xd8\xff" + bytes(300)):
        assert one_input(data) == 0  # refused quietly
    multi_frame = seeds()["dicom-frames"][0]
    assert one_input(b"\x00" + multi_frame) == 0 and one_input(b"\x02" + multi_frame) == 1  # a frame is needed


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is Linux-only (dev extra)")
def test_coverage_guided_fuzzing_of_the_decoders_finds_no_crash(tmp_path: Path) -> None:
    """CI's short `make covfuzz`: 3,000 inputs grown from the seeds by coverage; any exception but a refusal fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.covfuzz", "--runs", "3000", "--artifacts", str(tmp_path / "crashes")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and not list((tmp_path / "crashes").iterdir()), proc.stderr[-3000:]
    assert "Done 3000 runs" in proc.stderr
