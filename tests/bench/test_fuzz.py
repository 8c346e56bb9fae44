"""The upload fuzzer: reproducible cases of every format and framing, and 2,000 of them through the service in CI
without a 5xx, an exception or a slow answer (`make fuzz` runs more against the bundled models)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.fuzz import Generator, mangle_multipart, multipart, mutate, run, seeds
from service.config import Settings
from service.image.preprocessing import sniff_format
from service.main import create_app
from tests.utils import make_cam_ensemble


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
