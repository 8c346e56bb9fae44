"""Bounded admission: at most `limit` images waiting for or in the models at once; past it, a fast 503.

Without a bound every upload waits in line behind all the others, so under a burst every client waits seconds and
a retrying mobile app only lengthens the line. With one, the requests over the limit are refused at once with
`503` and `Retry-After` (before their body is parsed), the admitted ones keep a bounded wait, and the refusals are
counted per route (`mri_refused_requests`). A request counts one unit when it arrives; a batch (`/v1/predict/batch`,
a /v2 infer of several images) takes one more unit per further image once its files are known.
"""

from __future__ import annotations

from typing import Any

from service.api.middleware import drain, error_body, send_json

# The routes that run the models: (path test, metrics label).
MODEL_ROUTES: tuple[tuple[str, str], ...] = (
    ("/v1/predict/batch", "/v1/predict/batch"),
    ("/v1/predict", "/v1/predict"),
    ("/v1/explain", "/v1/explain"),
)
V2_INFER = "/v2/models/{name}/infer"


def overload_message(limit: int) -> str:
    return f"The service is busy: {limit} images are already waiting for the models. Retry after the delay given."


def model_route(path: str) -> str | None:
    """The metrics label of a model-running route for this path, or None for every other path."""
    for exact, label in MODEL_ROUTES:
        if path == exact:
            return label
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return V2_INFER
    return None


class Overloaded(Exception):
    """No room for a request's further images; answered 503 with Retry-After in the route's error shape."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(overload_message(limit))
        self.retry_after_s = retry_after_s


class Admission:
    """Counts the images admitted and not yet answered (all on the event loop: no lock needed)."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"the admission limit must be ≥ 1, got {limit}")
        self.limit, self.retry_after_s = limit, retry_after_s
        self.waiting = 0

    def try_acquire(self, n: int = 1) -> bool:
        if self.waiting + n > self.limit:
            return False
        self.waiting += n
        return True

    def release(self, n: int) -> None:
        self.waiting = max(0, self.waiting - n)

    def acquire_more(self, scope: Any, n: int) -> None:
        """Admit `n` further images of an admitted request (recorded in its scope, released with it); Overloaded if
        there is no room."""
        if n <= 0:
            return
        if not self.try_acquire(n):
            raise Overloaded(self.limit, self.retry_after_s)
        state = scope.setdefault("state", {})
        state["admitted"] = state.get("admitted", 0) + n


class AdmissionMiddleware:
    """Admits a model-running POST if there is room, else answers 503 with Retry-After at once: the body is read
    and dropped (bounded) but never parsed, decoded or queued."""

    def __init__(self, app: Any, admission: Admission, refused: Any, drain_bytes: int, drain_seconds: float) -> None:
        self.app, self.admission, self.refused = app, admission, refused
        self.drain_bytes, self.drain_seconds = drain_bytes, drain_seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = model_route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        if not self.admission.try_acquire(1):
            self.refused.labels(route).inc()
            scope.setdefault("state", {})["endpoint"] = route
            await self._refuse(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["admitted"] = 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.release(state.get("admitted", 1))

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if headers.get(b"expect", b"").lower() != b"100-continue":  # a client that waits for 100 has sent nothing
            await drain(receive, self.drain_bytes, self.drain_seconds)
        retry = [(b"retry-after", str(self.admission.retry_after_s).encode())]
        await send_json(send, 503, error_body(scope["path"], overload_message(self.admission.limit)), retry)
