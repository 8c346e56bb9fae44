"""Prometheus metrics (own registry per app) and the ASGI middleware that records them."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

KNOWN_PATHS = {"/", "/v1/predict", "/v1/models", "/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mri_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mri_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.predictions = Counter(
            "mri_predictions", "Ensemble predictions by voted label", ["label"], registry=self.registry
        )
        self.refused = Counter(
            "mri_refused_requests",
            "Model requests refused with 503 because MRI_MAX_WAITING images were already admitted, by route",
            ["endpoint"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "mri_inference_seconds",
            "Preprocessing + ensemble inference time per image",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
        )


access_log = logging.getLogger("service.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def endpoint_of(scope: Any) -> str:
    """The metrics label of a handled request: the path template of the route that served it (FastAPI sets
    scope["route"] once routing matched), so /v2/models/{model_name}/infer is one label however it is called and
    unmatched paths cannot grow the label set; "other" when no route matched."""
    refused = (scope.get("state") or {}).get("endpoint")
    if refused:  # refused before routing (admission): the route it asked for
        return str(refused)
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    path = scope["path"]
    return path if path in KNOWN_PATHS else "other"


def _request_id(scope: Any) -> str:
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")[:64]
            if candidate.replace("-", "").isalnum():
                return candidate
    return uuid.uuid4().hex


class MetricsMiddleware:
    """Counts and times every request, tags it with an X-Request-ID and writes one access-log line."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = [500]
        start = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            endpoint = endpoint_of(scope)
            self.metrics.latency.labels(endpoint).observe(elapsed)
            self.metrics.requests.labels(endpoint, scope["method"], str(status[0])).inc()
            access_log.info(
                "%s %s %d",
                scope["method"],
                path,
                status[0],
                extra={"request_id": request_id, "status": status[0], "ms": round(elapsed * 1000, 2)},
            )
