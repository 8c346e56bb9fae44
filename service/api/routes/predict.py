"""POST /v1/predict: one image in, the ensemble's vote and probabilities out; POST /v1/predict/batch: several."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import cv2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from service import DISCLAIMER
from service.api.deps import get_state, ready_ensemble, require_api_key
from service.api.schemas import BatchResponse, ErrorResponse, PredictResponse
from service.image.preprocessing import CropResult, ImageDecodeError, preprocess_bytes
from service.image.upload import FIELD, UploadError, extract_image, extract_images
from service.inference.runtime import Ensemble, Prediction

router = APIRouter(prefix="/v1", tags=["prediction"], dependencies=[Depends(require_api_key)])

UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A JPEG, PNG or DICOM (.dcm) brain-MRI slice: multipart field `file`, or the raw "
        "image as the body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM image"}
                    },
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "API key required and missing or wrong."},
    408: {"model": ErrorResponse, "description": "The body did not arrive within MRI_REQUEST_TIMEOUT_S."},
    413: {"model": ErrorResponse, "description": "Body larger than MRI_MAX_UPLOAD_BYTES."},
    415: {
        "model": ErrorResponse,
        "description": "Not a JPEG, PNG or DICOM by its content, a compressed DICOM transfer syntax, or an "
        "unsupported Content-Type.",
    },
    422: {
        "model": ErrorResponse,
        "description": "Missing field, empty, truncated, undecodable, too many pixels, or a multi-frame DICOM "
        "without a valid `frame`.",
    },
    503: {
        "model": ErrorResponse,
        "description": "Models not loaded yet, or busy: MRI_MAX_WAITING images already wait for the models. A busy "
        "answer carries Retry-After (seconds): wait that long, then retry, backing off on repeats.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying (busy only).",
                "schema": {"type": "integer"},
            }
        },
    },
    504: {"model": ErrorResponse, "description": "The answer was not ready within MRI_REQUEST_TIMEOUT_S."},
}


def format_prediction(
    ensemble: Ensemble, crop: CropResult, pred: Prediction, include_input: bool, start: float
) -> dict[str, Any]:
    classes = ensemble.classes
    n_models = ensemble.n_models
    verdict = ensemble.assess(crop.image, crop.fallback, pred)
    conformal = ensemble.manifest.ensemble.conformal
    result: dict[str, Any] = {
        "label": classes[pred.label],
        "prediction_set": verdict.prediction_set,
        "prediction_set_level": None if conformal is None else conformal.level,
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, pred.mean, strict=True)},
        "votes": {c: int(v) for c, v in zip(classes, pred.votes, strict=True)},
        "agreement": round(float(pred.votes[pred.label]) / n_models, 4),
        "uncertain": verdict.uncertain,
        "uncertainty_reasons": verdict.reasons,
        "warnings": verdict.warnings,
        "shift_score": None if pred.shift_score is None else round(pred.shift_score, 4),
        "models": [
            {
                "name": entry.name,
                "label": classes[int(probs.argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
            }
            for entry, probs in zip(ensemble.manifest.models, pred.per_model, strict=True)
        ],
        "model_version": ensemble.manifest.model_version,
        "crop_fallback": crop.fallback,
        "input_png_base64": None,
        "disclaimer": DISCLAIMER,
    }
    if include_input:
        ok, png = cv2.imencode(".png", cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))
        if ok:
            result["input_png_base64"] = base64.b64encode(png.tobytes()).decode()
    result["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 2)
    return result


FRAME_QUERY = Query(None, ge=0, description="Multi-frame DICOM only: the 0-based frame (slice) to use.", examples=[0])


async def read_crop(request: Request, frame: int | None, ensemble: Ensemble) -> CropResult:
    """The upload (multipart or raw body) decoded and cropped with the preprocessing the ensemble's manifest
    declares, in the thread pool (parallel across requests); bad uploads become 4xx HTTPExceptions."""
    body = await request.body()
    max_pixels = get_state(request).settings.max_image_pixels
    params = ensemble.manifest.preprocessing
    try:
        data = extract_image(request.headers.get("content-type"), body)
        return await run_in_threadpool(preprocess_bytes, data, max_pixels, frame, params)
    except (UploadError, ImageDecodeError) as e:
        raise HTTPException(e.status, str(e)) from e


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=UPLOAD_DOC,
    summary="Classify one brain-MRI slice",
    description="Crops the brain, resizes to 150×150 RGB, runs the three models and returns their majority "
    "vote, mean probabilities and each model's output. Research tool, not for clinical use.",
)
async def predict(
    request: Request,
    include_input: bool = Query(False, description="Also return the 150×150 crop the models saw (PNG, base64)."),
    frame: int | None = FRAME_QUERY,
    ensemble: Ensemble = Depends(ready_ensemble),
) -> dict[str, Any]:
    state = get_state(request)
    start = time.perf_counter()
    crop = await read_crop(request, frame, ensemble)
    # decode + crop ran in the thread pool; the models run batched with whatever other requests wait (batching.py)
    (pred,) = await predict_images(request, [crop.image], ensemble)
    result = format_prediction(ensemble, crop, pred, include_input, start)
    state.metrics.predictions.labels(result["label"]).inc()
    state.metrics.inference.observe(result["elapsed_ms"] / 1000)
    return result


BATCH_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Several JPEG, PNG or DICOM slices (e.g. a study's), each as a multipart field `file`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}


async def predict_images(request: Request, images: list[Any], ensemble: Ensemble) -> list[Prediction]:
    """Predictions of `ensemble` for its input-size crops, submitted together so that its micro-batcher runs
    them as one batch (after a reload, still the ensemble the request started with)."""
    state = get_state(request)
    batcher = state.batcher_for(ensemble)
    if batcher is None:
        raise HTTPException(503, "Models not ready: the inference thread is not running.")
    state.admission.acquire_more(request.scope, len(images) - 1)  # the request itself was admitted as one
    futures = [asyncio.wrap_future(f) for f in batcher.submit_many(images)]
    return list(await asyncio.gather(*futures))


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses={
        **ERRORS,
        413: {
            "model": ErrorResponse,
            "description": "Body over MRI_MAX_UPLOAD_BYTES or more files than MRI_MAX_FILES.",
        },
    },
    openapi_extra=BATCH_DOC,
    summary="Classify several brain-MRI slices",
    description="One result per `file` part, in the order sent; a bad file gets its own status and error and the "
    "others are still predicted (422 with every file's reason when none can be used). The models run them as one "
    "batch. Research tool, not for clinical use.",
)
async def predict_batch(
    request: Request,
    include_input: bool = Query(False, description="Also return each 150×150 crop the models saw (PNG, base64)."),
    ensemble: Ensemble = Depends(ready_ensemble),
) -> dict[str, Any]:
    state = get_state(request)
    start = time.perf_counter()
    try:
        files = extract_images(request.headers.get("content-type"), await request.body())
    except UploadError as e:
        raise HTTPException(e.status, str(e)) from e
    if len(files) > state.settings.max_files:
        raise HTTPException(413, f"{len(files)} files: the limit is {state.settings.max_files} per request.")
    max_pixels, params = state.settings.max_image_pixels, ensemble.manifest.preprocessing

    async def crop(data: bytes) -> CropResult | ImageDecodeError:
        try:
            return await run_in_threadpool(preprocess_bytes, data, max_pixels, None, params)
        except ImageDecodeError as e:
            return e

    crops = await asyncio.gather(*(crop(data) for _, data in files))
    good = [c for c in crops if isinstance(c, CropResult)]
    preds = iter(await predict_images(request, [c.image for c in good], ensemble))
    results: list[dict[str, Any]] = []
    for index, ((name, _), c) in enumerate(zip(files, crops, strict=True)):
        if isinstance(c, ImageDecodeError):
            results.append({"index": index, "filename": name, "status": c.status, "error": str(c)})
            continue
        result = format_prediction(ensemble, c, next(preds), include_input, start)
        state.metrics.predictions.labels(result["label"]).inc()
        results.append({"index": index, "filename": name, "status": 200, "result": result})
    n_ok = len(good)
    if n_ok == 0:  # nothing could be used: a client error as a whole, with each file's reason
        raise HTTPException(422, [{k: r[k] for k in ("index", "filename", "status", "error")} for r in results])
    state.metrics.inference.observe(time.perf_counter() - start)
    return {
        "results": results,
        "n_ok": n_ok,
        "n_failed": len(files) - n_ok,
        "model_version": ensemble.manifest.model_version,
        "elapsed_ms": round((time.perf_counter() - start) * 1000, 2),
        "disclaimer": DISCLAIMER,
    }
