"""API fuzzing: schemathesis generates requests from the service's own OpenAPI schema.

Every operation must answer without a 5xx and with responses that match the schema. The one check left
out is "schema-valid data is accepted": the schema can say "binary file" but not "a decodable JPEG or PNG
of a brain", so random bytes are rightly refused with 415/422.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402

from service.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402
from tests.utils import make_cam_ensemble  # noqa: E402

MODELS = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
make_cam_ensemble(MODELS)  # with class maps, so /v1/explain answers too
APP = create_app(Settings(models_dir=MODELS, max_upload_bytes=1024 * 1024))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[None]:
    with TestClient(APP):  # runs the lifespan: models loaded and warmed up
        yield
    shutil.rmtree(MODELS, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_responses_match_the_schema(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
