"""The OpenAPI schema with live examples: the 200 example is an answer of the ensemble being served (its classes,
model names, version and prediction-set level), and each error example is the message this server sends for that
status with its current settings. Rebuilt on every request of /openapi.json, so a reload shows the new models."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import DISCLAIMER
from service.api.deps import WRONG_KEY, not_ready_message
from service.api.middleware import late_body_message, late_work_message, too_large_message
from service.config import Settings
from service.image.preprocessing import EMPTY_MESSAGE, UNSUPPORTED_MESSAGE, undecodable_message
from service.image.upload import MISSING_FIELD
from service.inference.runtime import Ensemble

# the example answer: two of three models vote for the first class, the second is also plausible
EXAMPLE_MEAN = (0.62, 0.31, 0.04, 0.03)


def error_examples(settings: Settings) -> dict[int, dict[str, str]]:
    """Per status, examples of the `detail` this server sends (name → message)."""
    t = settings.request_timeout_s
    return {
        401: {"no key": WRONG_KEY},
        408: {"slow upload": late_body_message(t)},
        413: {"too large": too_large_message(settings.max_upload_bytes)},
        415: {"not an image": UNSUPPORTED_MESSAGE},
        422: {
            "empty": EMPTY_MESSAGE,
            "no field": MISSING_FIELD,
            "damaged": undecodable_message("jpeg"),
        },
        503: {"loading": not_ready_message("loading models from models")},
        504: {"too slow": late_work_message(t)},
    }


def example_answer(ensemble: Ensemble) -> dict[str, Any]:
    """What /v1/predict returns, for the ensemble being served."""
    m = ensemble.manifest
    classes = m.classes
    mean = [*EXAMPLE_MEAN[: len(classes)], *[0.0] * max(0, len(classes) - len(EXAMPLE_MEAN))]
    if len(classes) < len(EXAMPLE_MEAN):
        mean = [p / sum(mean) for p in mean]
    probs = {c: round(p, 4) for c, p in zip(classes, mean, strict=True)}
    n = len(m.models)
    votes = dict.fromkeys(classes, 0)
    votes[classes[0]] = n - 1 if n > 1 else n
    if n > 1:
        votes[classes[1]] = 1
    conformal = m.ensemble.conformal
    several = conformal is not None
    return {
        "label": classes[0],
        "prediction_set": classes[:2] if several else None,
        "prediction_set_level": None if conformal is None else conformal.level,
        "probabilities": probs,
        "votes": votes,
        "agreement": round(votes[classes[0]] / n, 4),
        "uncertain": several,
        "uncertainty_reasons": ["several_classes_possible"] if several else [],
        "warnings": [],
        "shift_score": None if m.ensemble.shift is None else 1.05,
        "models": [
            {"name": e.name, "label": classes[0] if i < n - 1 else classes[1], "probabilities": probs}
            for i, e in enumerate(m.models)
        ],
        "model_version": m.model_version,
        "crop_fallback": False,
        "input_png_base64": None,
        "elapsed_ms": 12.5,
        "disclaimer": DISCLAIMER,
    }


def live_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's schema (built once) with the examples of the ensemble and settings it serves now."""
    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
    schema = copy.deepcopy(app.openapi_schema)
    state = app.state.mri
    ensemble: Ensemble | None = state.ensemble
    errors = error_examples(state.settings)
    answer = None if ensemble is None else example_answer(ensemble)
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            for status, response in op.get("responses", {}).items():
                content = response.get("content", {}).get("application/json")
                if content is None:
                    continue
                code = int(status) if status.isdigit() else 0
                if code in errors and not path.startswith("/v2"):
                    content["examples"] = {k: {"summary": k, "value": {"detail": v}} for k, v in errors[code].items()}
                elif code == 200 and answer is not None and path in ("/v1/predict", "/v1/predict/batch"):
                    content["example"] = (
                        answer
                        if path == "/v1/predict"
                        else {
                            "results": [{"index": 0, "filename": "scan.jpg", "status": 200, "result": answer}],
                            "n_ok": 1,
                            "n_failed": 0,
                            "model_version": answer["model_version"],
                            "elapsed_ms": 14.2,
                            "disclaimer": DISCLAIMER,
                        }
                    )
    return schema
