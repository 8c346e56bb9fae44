"""The FastAPI application: `uvicorn service.main:app` or `python -m service`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service import DISCLAIMER, __version__
from service.api import repository
from service.api.admission import Admission, AdmissionMiddleware, Overloaded, model_route
from service.api.deps import AppState
from service.api.middleware import BodyLimitMiddleware, TimeoutMiddleware, error_body
from service.api.observability import Metrics, MetricsMiddleware
from service.api.openapi import live_openapi
from service.api.routes import explain, info, predict, v2
from service.config import Settings

log = logging.getLogger("service")

DESCRIPTION = f"""
Classifies a brain-MRI slice as glioma, meningioma, no tumour or pituitary tumour with a majority vote of
three ONNX models (class names come from the bundled manifest). Upload a JPEG, PNG or DICOM file to `POST /v1/predict`.

**{DISCLAIMER}** It has not been validated for diagnosis; see `GET /v1/models` for measured accuracy.
"""


def create_app(settings: Settings | None = None, url: str | None = None) -> FastAPI:
    """The app; `url`: where it is served, announced once the models are ready."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: AppState = app.state.mri
        try:
            directory = repository.resolve(settings.models_dir)
            state.not_ready_reason = f"loading models from {directory}"
            ensemble, batcher = repository.load(state, directory)
        except Exception as e:
            log.error("cannot start: %s", e)
            raise
        repository.serve(state, ensemble, batcher)
        log.info(
            "ready: %d models, version %s, classes %s",
            ensemble.n_models,
            ensemble.manifest.model_version,
            ensemble.classes,
        )
        if url:
            log.info("open %s (upload page) · %sdocs (API) · %smodel-card", url, url, url)
        yield
        state.ready = False
        state.not_ready_reason = "shutting down"
        for task in list(state.tasks):
            task.cancel()
        for b in {id(b): b for b in [*state.batchers.values(), state.batcher] if b is not None}.values():
            b.close()

    app = FastAPI(
        title="Brain-MRI tumour classifier",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served below from bundled assets, so Swagger UI works offline too
        redoc_url=None,
    )
    admission = Admission(settings.max_waiting, settings.retry_after_s)
    app.state.mri = AppState(settings=settings, metrics=metrics, admission=admission)
    app.openapi = lambda: live_openapi(app)  # type: ignore[method-assign]
    app.include_router(predict.router)
    app.include_router(explain.router)
    app.include_router(info.router)
    app.include_router(v2.router)
    app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=f"{app.title} — API docs",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        metrics.refused.labels(model_route(request.url.path) or "other").inc()
        headers = {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse(error_body(request.url.path, str(exc)), status_code=503, headers=headers)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "Internal server error."}, status_code=500)

    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        drain_bytes=settings.upload_drain_bytes,
        drain_seconds=settings.upload_drain_s,
    )
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout_s)
    # outside the body limit and the deadline: a refused upload is never parsed, nor timed
    app.add_middleware(
        AdmissionMiddleware,
        admission=admission,
        refused=metrics.refused,
        drain_bytes=settings.max_upload_bytes,
        drain_seconds=settings.upload_drain_s,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.main:app` builds the app on first access, so importing this module has no side effects.
    if name == "app":
        return create_app()
    raise AttributeError(name)
