"""Open Inference Protocol (KServe v2 REST, as Triton serves it) beside /v1: server and model metadata, health,
inference on encoded images (`image`, BYTES) or ready crops (`pixels`, FP32), and the repository extension
(index, and an authenticated load that swaps in a new ensemble without downtime). Research tool, not for
clinical use."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service import DISCLAIMER, __version__
from service.api import repository
from service.api.deps import AppState, get_state, key_matches
from service.api.oip import HEADER_LENGTH, ProtocolError, Tensor, encode_response, parse_request
from service.image.preprocessing import CropResult, ImageDecodeError, preprocess_bytes
from service.inference.manifest import ManifestError
from service.inference.runtime import Ensemble, ModelLoadError

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])


class OipError(BaseModel):
    error: str = Field(description="What was wrong (the protocol's error object).", examples=["unknown model 'x'"])


WHY = {
    400: "Malformed request, input or image.",
    401: "X-API-Key (X-Admin-Key for load) missing or wrong.",
    403: "Loading is disabled (no MRI_ADMIN_KEY).",
    404: "Unknown model or version.",
    413: "Body over MRI_MAX_UPLOAD_BYTES, or more images than MRI_MAX_FILES.",
    503: "Models not loaded yet.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OipError, "description": WHY[code]} for code in codes}


INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An inference request: JSON, or a JSON header of `Inference-Header-Content-Length` bytes "
        "followed by binary tensor data. One input: `image` (BYTES [N], encoded JPEG/PNG/DICOM files, base64 in "
        "JSON) or `pixels` (FP32 [N,150,150,3], RGB crops).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                        "parameters": {"type": "object"},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
INFER_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or a JSON header plus binary data (`Inference-Header-Content-Length`).",
        "content": {"application/json": {}, "application/octet-stream": {}},
    }
}

SERVER_NAME = "mri-classifier"
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def _error(e: ProtocolError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status)


def _check_key(request: Request, setting: str, header: str) -> None:
    state = get_state(request)
    expected = getattr(state.settings, setting)
    if expected is None:
        if setting == "admin_key":
            raise ProtocolError("model loading is disabled: the server sets no MRI_ADMIN_KEY", 403)
        return
    if not key_matches(request.headers.get(header), expected):
        raise ProtocolError(f"missing or wrong {header} header", 401)


def _model(request: Request, name: str, version: str | None = None) -> Ensemble:
    """The served ensemble, if `name` (and `version`) are its; ProtocolError otherwise."""
    state = get_state(request)
    model_name = state.settings.model_name
    if name != model_name:
        raise ProtocolError(f"unknown model '{name}'; this server serves '{model_name}'", 404)
    if not state.ready or state.ensemble is None:
        raise ProtocolError(f"model '{name}' is not ready: {state.not_ready_reason}", 503)
    if version is not None and version != state.ensemble.manifest.model_version:
        have = state.ensemble.manifest.model_version
        raise ProtocolError(f"model '{name}' has no version '{version}' loaded (loaded: {have})", 404)
    return state.ensemble


def metadata(state: AppState, ensemble: Ensemble) -> dict[str, Any]:
    m = ensemble.manifest
    size = [int(d) for d in m.input.shape[1:] if d is not None]
    n_classes, n_models = len(m.classes), len(m.models)
    return {
        "name": state.settings.model_name,
        "versions": [m.model_version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, *size]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]},
            {"name": "model_probabilities", "datatype": "FP32", "shape": [-1, n_models, n_classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "votes", "datatype": "INT32", "shape": [-1, n_classes]},
            {"name": "uncertain", "datatype": "BOOL", "shape": [-1]},
            {"name": "uncertainty_reasons", "datatype": "BYTES", "shape": [-1]},
            {"name": "prediction_set", "datatype": "BYTES", "shape": [-1]},
            {"name": "warnings", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "classes": ",".join(m.classes),
            "prediction_set_level": "" if m.ensemble.conformal is None else f"{m.ensemble.conformal.level:g}",
            "disclaimer": DISCLAIMER,
        },
    }


@router.get("", summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready: the ensemble is loaded and warmed up", responses=errors(503))
async def ready(request: Request) -> Response:
    state = get_state(request)
    return JSONResponse({"ready": state.probe_ready}, status_code=200 if state.probe_ready else 503)


@router.get("/models/{name}", summary="Model metadata", responses=errors(401, 404, 503))
@router.get(
    "/models/{name}/versions/{version}", summary="Model metadata of one version", responses=errors(401, 404, 503)
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    try:
        _check_key(request, "api_key", "x-api-key")
        return JSONResponse(metadata(get_state(request), _model(request, name, version)))
    except ProtocolError as e:
        return _error(e)


@router.get("/models/{name}/ready", summary="Model ready", responses=errors(404, 503))
@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", responses=errors(404, 503))
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    try:
        _model(request, name, version)
        return JSONResponse({"name": name, "ready": True})
    except ProtocolError as e:
        return _error(e)


async def _images(request: Request, ensemble: Ensemble, tensor: Tensor) -> tuple[np.ndarray, list[bool]]:
    """The `image` BYTES tensor decoded and cropped exactly like /v1/predict: uint8 (N, H, W, 3) and, per image,
    whether the crop fell back to the whole image."""
    state = get_state(request)
    if tensor.datatype != "BYTES" or tensor.data.ndim != 1:
        raise ProtocolError("input 'image' must be BYTES with shape [N]")
    params = ensemble.manifest.preprocessing

    async def crop(i: int, data: bytes) -> CropResult:
        try:
            return await run_in_threadpool(preprocess_bytes, data, state.settings.max_image_pixels, None, params)
        except ImageDecodeError as e:
            raise ProtocolError(f"input 'image' element {i}: {e}", 400) from None

    crops = await asyncio.gather(*(crop(i, bytes(b)) for i, b in enumerate(tensor.data)))
    return np.stack([c.image for c in crops]), [c.fallback for c in crops]


def _pixels(ensemble: Ensemble, tensor: Tensor) -> np.ndarray:
    size = tuple(int(d) for d in ensemble.manifest.input.shape[1:] if d is not None)
    if tensor.datatype != "FP32" or tensor.data.shape[1:] != size:
        raise ProtocolError(f"input 'pixels' must be FP32 with shape [N, {', '.join(map(str, size))}]")
    if not np.isfinite(tensor.data).all() or tensor.data.min() < 0 or tensor.data.max() > 255:
        raise ProtocolError("input 'pixels' must be RGB values in 0-255")
    return tensor.data.astype(np.float32)


INFER = {"responses": {**INFER_OK, **errors(400, 401, 404, 413, 503)}, "openapi_extra": INFER_DOC}


@router.post("/models/{name}/infer", summary="Inference", **INFER)  # type: ignore[arg-type]
@router.post("/models/{name}/versions/{version}/infer", summary="Inference on one version", **INFER)  # type: ignore[arg-type]
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    from service.api.routes.predict import predict_images

    state = get_state(request)
    try:
        _check_key(request, "api_key", "x-api-key")
        ensemble = _model(request, name, version)
        header, inputs = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
        unknown = set(inputs) - {"image", "pixels"}
        if unknown or len(inputs) != 1:
            raise ProtocolError("send exactly one input: 'image' (BYTES, encoded files) or 'pixels' (FP32 crops)")
        (tensor,) = inputs.values()
        n = len(tensor.data)
        if n > state.settings.max_files:
            raise ProtocolError(f"{n} images: the limit is {state.settings.max_files} per request", 413)
        if n == 0:
            raise ProtocolError("the input holds no image")
        if tensor.name == "image":
            batch, fallbacks = await _images(request, ensemble, tensor)
        else:
            batch, fallbacks = _pixels(ensemble, tensor), [False] * n
        preds = await predict_images(request, list(batch), ensemble)
        verdicts = [
            # the crop's own checks need the uint8 crop; `pixels` sent as floats are checked as given
            ensemble.assess(crop.astype(np.uint8), fell_back, p)
            for crop, fell_back, p in zip(batch, fallbacks, preds, strict=True)
        ]
        classes = ensemble.classes
        outputs = [
            Tensor("probabilities", "FP32", np.stack([p.mean for p in preds]).astype(np.float32)),
            Tensor("model_probabilities", "FP32", np.stack([p.per_model for p in preds]).astype(np.float32)),
            Tensor("label", "BYTES", np.array([classes[p.label].encode() for p in preds], dtype=object)),
            Tensor("votes", "INT32", np.stack([p.votes for p in preds]).astype(np.int32)),
            Tensor("uncertain", "BOOL", np.array([v.uncertain for v in verdicts])),
            Tensor(
                "uncertainty_reasons", "BYTES", np.array([",".join(v.reasons).encode() for v in verdicts], dtype=object)
            ),
            Tensor(
                "prediction_set",
                "BYTES",
                np.array([",".join(v.prediction_set or []).encode() for v in verdicts], dtype=object),
            ),
            Tensor("warnings", "BYTES", np.array([",".join(v.warnings).encode() for v in verdicts], dtype=object)),
        ]
        version = ensemble.manifest.model_version
        body, headers = encode_response(header, name, version, outputs, {"disclaimer": DISCLAIMER})
    except ProtocolError as e:
        return _error(e)
    for p in preds:
        state.metrics.predictions.labels(classes[p.label]).inc()
    return Response(body, headers=headers)


@router.post(
    "/repository/index", summary="Repository index (Triton's model repository extension)", responses=errors(401)
)
def repository_index(request: Request) -> Response:
    state = get_state(request)
    try:
        _check_key(request, "api_key", "x-api-key")
    except ProtocolError as e:
        return _error(e)
    entries = repository.index(state.settings.models_dir, state.ensemble if state.ready else None)
    return JSONResponse([{"name": state.settings.model_name, **e} for e in entries])


@router.post(
    "/repository/models/{name}/load",
    summary="Load (or reload) the ensemble without downtime",
    responses=errors(400, 401, 403, 404),
)
async def repository_load(request: Request, name: str) -> Response:
    """Loads and verifies `parameters.version` (default: the newest in the repository) beside the serving
    ensemble and switches to it; a broken one is refused (400) and the old one keeps serving. Needs header
    X-Admin-Key matching MRI_ADMIN_KEY (403 when the server sets none)."""
    state = get_state(request)
    try:
        _check_key(request, "admin_key", "x-admin-key")
        if name != state.settings.model_name:
            raise ProtocolError(f"unknown model '{name}'; this server serves '{state.settings.model_name}'", 404)
        body = await request.body()
        try:
            params = (json.loads(body) if body else {}).get("parameters") or {}
        except (ValueError, AttributeError):
            raise ProtocolError('the body must be JSON: {"parameters": {"version": "<model_version>"}}') from None
        version = params.get("version")
        try:
            new, previous = await repository.reload(state, version, grace_s=state.settings.request_timeout_s or 30.0)
        except repository.RepositoryError as e:
            raise ProtocolError(str(e), 404) from None
        except (ManifestError, ModelLoadError, ValueError, OSError) as e:
            raise ProtocolError(f"refused, still serving the previous ensemble: {e}", 400) from None
    except ProtocolError as e:
        return _error(e)
    return JSONResponse({"name": name, "version": new, "previous": previous})
