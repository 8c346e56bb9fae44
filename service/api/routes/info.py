"""Health, model information, metrics and the upload page.

Probes, metrics and the model JSON are `async def`: they answer on the event loop, never behind uploads' decoding
in the thread pool, so that a busy server still says promptly whether it is ready. The page and the card, which
read files, stay in the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import DISCLAIMER
from service.api.deps import get_state, ready_ensemble, require_api_key
from service.api.model_card import FAVICON_SVG
from service.api.model_card import render as render_card
from service.api.schemas import ErrorResponse, Health, ModelsInfo
from service.inference.runtime import Ensemble

router = APIRouter()
PAGE = Path(__file__).resolve().parents[2] / "static" / "index.html"


@router.get("/health/live", response_model=Health, tags=["health"], summary="The process is up")
async def live() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    response_model=Health,
    tags=["health"],
    summary="All models loaded and warmed up (503 while starting, and from SIGTERM on)",
    responses={503: {"model": Health, "description": "Not ready yet, or shutting down."}},
)
async def ready(request: Request) -> Any:
    state = get_state(request)
    if not state.probe_ready:
        return JSONResponse({"status": "not ready", "detail": state.probe_reason, "disclaimer": DISCLAIMER}, 503)
    return {"status": "ready"}


@router.get(
    "/v1/models",
    tags=["models"],
    summary="The ensemble: classes, input, models, metrics and where they were measured",
    dependencies=[Depends(require_api_key)],
    response_model=ModelsInfo,
    responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def models(ensemble: Ensemble = Depends(ready_ensemble)) -> dict[str, Any]:
    # response_model drops what is not public (the file paths)
    return {**ensemble.manifest.model_dump(), "disclaimer": DISCLAIMER}


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(get_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@router.get(
    "/model-card",
    tags=["models"],
    summary="The model card: the served manifest as a readable page",
    response_class=HTMLResponse,
    responses={503: {"model": ErrorResponse, "description": "Models not loaded yet."}},
)
def model_card(ensemble: Ensemble = Depends(ready_ensemble)) -> HTMLResponse:
    return HTMLResponse(render_card(ensemble.manifest))


@router.get("/favicon.svg", include_in_schema=False)
@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
